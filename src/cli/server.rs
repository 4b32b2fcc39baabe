//! `klio server start`.

use std::path::PathBuf;
use std::process::ExitCode;

use klio_server::{Server, ServerConfig, ServerOverrides};

/// Run the Klio server.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Start the Tier 1 server: QUIC with mutual TLS, WAL ingest with durable acknowledgements.
    ///
    /// Settings come from the YAML file given with --config, overridden by KLIO_* environment
    /// variables, overridden by flags. Example file:
    ///
    ///   listen: 0.0.0.0:7470
    ///   data_dir: /var/lib/klio
    ///   tls: {ca: /etc/klio/ca.pem, cert: /etc/klio/server.pem, key: /etc/klio/server.key}
    ///   encryption:                  # optional: WAL encrypted at rest
    ///     key: /etc/klio/2026.key    # `klio keys generate -o FILE`
    ///     old_keys: [/etc/klio/2025.key]
    ///     compression: lz4           # lz4 (default), zstd (zstd_level: 1-22) or none
    ///   metrics:
    ///     listen: 127.0.0.1:7471     # /metrics, /healthz, /status (`klio status`); or off
    ///   ingest_memory: 64MiB         # WAL received and not yet stored, all clusters together
    ///   retention:                   # optional: without a policy nothing is removed
    ///     keep_backups: 7            # the newest 7 complete backups
    ///     recovery_window: 14d       # and every backup a recovery within 14 days needs
    ///     min_backups: 1             # a floor (pinned backups always stay)
    ///     interval: 1h               # how often it runs (or off); also after each backup
    ///     block_grace: 1h            # blocks go only from packs older than this
    ///     disk_warning: 90%          # warn (logs, metrics, status) above this much used
    ///     clusters:                  # per-cluster policies, over the ones above
    ///       pg-main: {keep_backups: 2}
    ///   mode: read-write             # or read-only: no Tier 1, restores served from tier2
    ///   tier2:                       # optional: relay everything to S3-compatible storage
    ///     endpoint: https://s3.example.net   # omit for AWS's endpoint of the region
    ///     region: us-east-1
    ///     bucket: klio-archive       # must exist
    ///     prefix: prod               # keys under prod/ (default: the bucket's root)
    ///     ca_file: /etc/klio/s3-ca.pem       # trust these roots instead of the system's
    ///     access_key_id: AKIA...     # with secret_access_key; or profile: NAME; or neither
    ///     secret_access_key: ...     #   for the AWS_* variables, AWS_PROFILE, web identity
    ///     partial_interval: 10s      # the segment in progress goes up at most this often
    ///     upload_concurrency: 4      # uploads at once; Tier 1 retention keeps what is not up
    ///     object_lock: {mode: compliance, retain: 30d}   # optional S3 Object Lock
    ///     cache_size: 4GiB           # local cache of what reads fetch from Tier 2
    ///     retention: {keep_backups: 30, recovery_window: 90d}   # Tier 2's own policy
    ///
    /// `klio server start-wal`, the name Klio's documentation uses, is the same command.
    #[command(verbatim_doc_comment, alias = "start-wal")]
    Start(StartArgs),
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    /// YAML configuration file.
    #[arg(short, long, value_name = "FILE", env = "KLIO_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address to listen on [default: 0.0.0.0:7470].
    #[arg(long, value_name = "IP:PORT", env = "KLIO_LISTEN")]
    listen: Option<String>,
    /// Tier 1 data directory [default: /var/lib/klio].
    #[arg(long, value_name = "DIR", env = "KLIO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// CA certificate that signs client certificates.
    #[arg(long, value_name = "FILE", env = "KLIO_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Server certificate.
    #[arg(long, value_name = "FILE", env = "KLIO_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Server private key.
    #[arg(long, value_name = "FILE", env = "KLIO_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Encrypt WAL at rest with this key file (`klio keys generate`; a passphrase key file
    /// reads its passphrase from the environment variable it names). Starting with a new key
    /// rotates: each cluster's files are re-wrapped under it when its client next connects.
    #[arg(long, value_name = "FILE", env = "KLIO_ENCRYPTION_KEY")]
    encryption_key: Option<PathBuf>,
    /// A retired key still needed to read older files (repeatable).
    #[arg(long = "encryption-old-key", value_name = "FILE")]
    encryption_old_keys: Vec<PathBuf>,
    /// TCP address of the HTTP listener for Prometheus (/metrics), health probes (/healthz)
    /// and `klio status` (/status), or `off` [default: 127.0.0.1:7471].
    #[arg(long, value_name = "IP:PORT|off", env = "KLIO_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Memory for WAL received and not yet stored, across all clusters: each session gets
    /// 256 KiB and a fair share of this; a session without room stops reading, and QUIC
    /// holds its client back [default: 64MiB].
    #[arg(long, value_name = "SIZE", env = "KLIO_INGEST_MEMORY")]
    ingest_memory: Option<String>,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Command::Start(s) = a.command;
    let config = ServerConfig::resolve(
        s.config.as_deref(),
        ServerOverrides {
            listen: s.listen,
            data_dir: s.data_dir,
            tls_ca: s.tls_ca,
            tls_cert: s.tls_cert,
            tls_key: s.tls_key,
            encryption_key: s.encryption_key,
            encryption_old_keys: s.encryption_old_keys,
            metrics_listen: s.metrics_listen,
            ingest_memory: s.ingest_memory,
        },
    )?;
    super::pg_args::server_runtime()?.block_on(async move {
        let server = Server::bind(&config).await?;
        let reloader = server.certificate_reloader();
        super::signals::reload_on_hangup(move || match reloader.reload() {
            Ok(expiries) => {
                for e in expiries {
                    tracing::info!(
                        "SIGHUP: loaded the {} certificate {}, valid until {}; new connections use it, established ones keep theirs",
                        e.certificate,
                        e.path.display(),
                        e.valid_until()
                    );
                }
            }
            Err(e) => tracing::error!(
                "SIGHUP: could not reload the certificates, still serving with the previous ones: {}",
                klio_wal::ErrorChain(&e)
            ),
        });
        server.run(super::signals::wait_for_stop_signal()).await;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;

    use super::Command;
    use crate::cli::{Cli, Command as Top};

    fn data_dir_of(argv: &[&str]) -> Option<PathBuf> {
        match Cli::try_parse_from(argv).expect("parses").command {
            Top::Server(super::Args {
                command: Command::Start(s),
            }) => s.data_dir,
            other => panic!("not server start: {other:?}"),
        }
    }

    #[test]
    fn start_wal_is_the_seeds_name_for_server_start() {
        let dir = Some(PathBuf::from("/srv/klio"));
        assert_eq!(
            data_dir_of(&["klio", "server", "start-wal", "--data-dir", "/srv/klio"]),
            dir
        );
        assert_eq!(
            data_dir_of(&["klio", "server", "start", "--data-dir", "/srv/klio"]),
            dir
        );
    }
}
