//! `klio backup run|list|show|verify|delete|pin|unpin`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use klio_client::backup::{
    BackupOptions, BackupOutcome, BackupRef, CaptureMode, CaptureProgress, VerifyProgress, catalog,
    default_jobs, parse_wal_timeout,
};
use klio_proto::base_backup::{Checkpoint, MaxRate};
use klio_proto::klio::{BackupInfo, BlockCompression, CaptureMethod, ListedBackup};

use super::progress::bytes;

/// Base backups of this cluster, deduplicated by block, and their catalog on the Klio server.
///
/// `klio backup run` takes a backup with BASE_BACKUP over a replication connection (from the
/// PostgreSQL host or anywhere that reaches it); only blocks the server does not hold yet
/// cross the network, compressed. A backup is listed only once its blocks, manifest and the
/// WAL from its start to its end are durable on the server, so `klio send-wal` must be
/// running for the cluster. Every backup is complete on its own: any one can be deleted.
///
/// Examples:
///   klio backup run -h /var/run/postgresql -U postgres --label nightly
///   klio backup list
///   klio backup show latest --output json
///   klio backup verify latest
///   klio backup delete 20261201T120000Z-3f9a
///   klio backup pin 20261201T120000Z-3f9a      # never removed by retention
///
/// The Klio server settings (--server, --tls-ca, --tls-cert, --tls-key, --cluster) come from
/// flags, else KLIO_* environment variables, else --config, as for send-wal.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Run(RunArgs),
    List(ListArgs),
    Show(ShowArgs),
    Verify(VerifyArgs),
    Delete(DeleteArgs),
    /// Pin a backup: no retention policy removes it (and `klio backup delete` refuses it) until
    /// it is unpinned.
    ///
    /// Example:
    ///   klio backup pin 20261201T120000Z-3f9a
    #[command(verbatim_doc_comment)]
    Pin(PinArgs),
    /// Unpin a backup: retention policies apply to it again.
    ///
    /// Example:
    ///   klio backup unpin 20261201T120000Z-3f9a
    #[command(verbatim_doc_comment)]
    Unpin(PinArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// For a person.
    Text,
    /// The catalog entry (schema 1), for scripts.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CompressArg {
    /// zstd level 1.
    Zstd,
    /// LZ4.
    Lz4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// Local when the data directory is this host's cluster and the server a primary, else
    /// stream.
    Auto,
    /// Read the data directory on this host.
    Local,
    /// BASE_BACKUP over a replication connection.
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CheckpointArg {
    /// Checkpoint at once (the backup starts sooner, with an I/O burst).
    Fast,
    /// Spread the checkpoint as checkpoint_completion_target says.
    Spread,
}

/// Take a base backup of PostgreSQL into the Klio server's catalog.
///
/// Two ways to read the files (--mode), one result: the same blocks, catalog entry and a
/// backup_manifest that pg_verifybackup accepts after a restore.
///   local   on the PostgreSQL host: pg_backup_start on a SQL session, the data directory and
///           tablespaces read by --jobs parallel readers, pg_backup_stop.
///   stream  from anywhere: BASE_BACKUP over a replication connection (TARGET 'client',
///           MANIFEST 'yes', TABLESPACE_MAP, WAIT false), one stream read by PostgreSQL.
///   auto    local when the data directory PostgreSQL reports is readable here and holds
///           this server's system identifier and the server is a primary, else stream; the
///           choice is logged and recorded in the catalog (the default).
/// Every file is cut into 64 KiB blocks and only blocks the server does not hold are sent,
/// compressed. The server then waits up to --wal-timeout for send-wal to deliver the WAL up
/// to the backup's end before it lists the backup as complete. Exits with 0 only when the
/// backup is complete; a failed or interrupted backup is not listed, and running it again
/// (or with --resume) sends only the blocks the server does not hold yet.
///
/// On a terminal, standard error shows progress (bytes read of PostgreSQL's estimate, new
/// bytes sent, rate, time left); at the end standard output gets a summary line, or the
/// catalog entry with --output json.
///
/// Examples:
///   klio backup run -h /var/run/postgresql -U postgres --server klio.example:7470 \
///       --tls-ca ca.pem --tls-cert client-pg-main.pem --tls-key client-pg-main.key
///   klio backup run -d 'host=db1 user=replicator' --label nightly --checkpoint spread \
///       --wal-timeout 5m --output json
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true, verbatim_doc_comment)]
struct RunArgs {
    /// Print help (-h is --host, as in pg_basebackup).
    #[arg(short = '?', long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    #[command(flatten)]
    pg: super::pg_args::PgArgs,
    /// The backup's label (in backup_label and the catalog) [default: klio <UTC time>].
    #[arg(short = 'l', long, value_name = "LABEL")]
    label: Option<String>,
    /// How PostgreSQL does the checkpoint the backup starts from.
    #[arg(short = 'c', long, value_enum, value_name = "fast|spread", default_value_t = CheckpointArg::Fast)]
    checkpoint: CheckpointArg,
    /// How long the server waits for send-wal to deliver the backup's WAL (e.g. 60s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_wal_timeout)]
    wal_timeout: Duration,
    /// Limit how fast the data directory is read, in kB/s, or with a suffix k or M (32k to
    /// 1024M), as pg_basebackup's --max-rate: all local readers together, or PostgreSQL's
    /// MAX_RATE when streaming. Spares a busy primary's disks; the network carries less.
    #[arg(short = 'r', long, value_name = "RATE", value_parser = parse_max_rate)]
    max_rate: Option<MaxRate>,
    /// How the files are read: auto, local (the data directory, on the PostgreSQL host) or
    /// stream (BASE_BACKUP).
    #[arg(long, value_enum, value_name = "auto|local|stream", default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// Parallel readers of a local backup, and threads compressing new blocks [default: the
    /// number of cores].
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// How blocks new to the server are compressed: zstd (level 1: about half LZ4's bytes on
    /// PostgreSQL pages) or lz4 (about twice as fast, for when compression is what limits a
    /// local backup).
    #[arg(long, value_enum, value_name = "zstd|lz4", default_value_t = CompressArg::Zstd)]
    compress: CompressArg,
    /// Resume an interrupted backup. Every run resumes: blocks already durable on the server
    /// (from a backup that was killed, lost its network or whose server restarted) are not
    /// sent again; the summary tells how many were reused. The flag is accepted so that
    /// scripts can say so.
    #[arg(long)]
    resume: bool,
    /// text: a summary line; json: the catalog entry.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// No progress display, even on a terminal.
    #[arg(long)]
    no_progress: bool,
    /// Pin the backup once it is complete: no retention policy removes it until `klio backup
    /// unpin`.
    #[arg(long)]
    pin: bool,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

/// List the complete backups of this cluster, oldest first (by end position, then time).
///
/// Text: a table of id, end LSN, timeline, completion time, logical size, bytes the backup
/// added to the store, whether it is pinned, and label. JSON: an array of catalog entries (schema 1).
///
/// Example:
///   klio backup list --output json | jq -r '.[-1].id'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct ListArgs {
    /// text for a terminal, json for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

/// Show one backup's catalog entry.
///
/// Examples:
///   klio backup show latest
///   klio backup show 20261201T120000Z-3f9a --output json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct ShowArgs {
    /// The backup id, or latest (the one ending last).
    #[arg(value_name = "ID|latest")]
    backup: BackupRef,
    /// text for a terminal, json for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

/// Check that a backup can be restored: the server reads every block through its integrity
/// checks and checks that the backup's WAL range is in the archive.
///
/// Exits with 1 and names the damaged file if a block cannot be read, or the missing WAL.
///
/// Example:
///   klio backup verify latest
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct VerifyArgs {
    /// The backup id, or latest (the one ending last).
    #[arg(value_name = "ID|latest")]
    backup: BackupRef,
    /// text for a terminal, json for scripts (the catalog entry once verified).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

/// Remove a backup from the catalog.
///
/// Only the catalog entry goes; blocks no other backup needs are reclaimed by retention. The
/// backup must be named by its id (latest is not accepted here).
///
/// Example:
///   klio backup delete 20261201T120000Z-3f9a
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct DeleteArgs {
    /// The backup id (see `klio backup list`).
    #[arg(value_name = "ID")]
    id: String,
    /// text for a terminal, json for scripts (the entry removed).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

/// The backup `pin` and `unpin` name.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct PinArgs {
    /// The backup id, or latest (the one ending last).
    #[arg(value_name = "ID|latest")]
    backup: BackupRef,
    /// text for a terminal, json for scripts (the entry afterwards).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.command {
        Command::Run(a) => run_backup(a),
        Command::List(a) => list(a),
        Command::Show(a) => show(a),
        Command::Verify(a) => verify(a),
        Command::Delete(a) => delete(a),
        Command::Pin(a) => set_pinned(a.backup, true, a.output, a.client),
        Command::Unpin(a) => set_pinned(a.backup, false, a.output, a.client),
    }
}

fn run_backup(a: RunArgs) -> anyhow::Result<ExitCode> {
    // Before PostgreSQL is reached: wrong paths or certificates fail at once.
    let client = a.client.resolve()?;
    client.cluster()?;
    let pg = a.pg.resolve()?;
    let opts = BackupOptions {
        label: a.label,
        checkpoint: match a.checkpoint {
            CheckpointArg::Fast => Checkpoint::Fast,
            CheckpointArg::Spread => Checkpoint::Spread,
        },
        wal_timeout: a.wal_timeout,
        max_rate: a.max_rate,
        mode: match a.mode {
            ModeArg::Auto => CaptureMode::Auto,
            ModeArg::Local => CaptureMode::Local,
            ModeArg::Stream => CaptureMode::Stream,
        },
        jobs: a.jobs.map_or_else(default_jobs, usize::from),
        compression: match a.compress {
            CompressArg::Zstd => BlockCompression::Zstd,
            CompressArg::Lz4 => BlockCompression::Lz4,
        },
        ..BackupOptions::new(pg, client)
    };
    if a.resume {
        tracing::info!(
            "resuming: blocks the server already holds are not sent again (every run does so)"
        );
    }
    let mut line = ProgressLine::new(!a.no_progress);
    let outcome = super::pg_args::runtime()?.block_on(klio_client::backup::run(
        &opts,
        &mut |p: &CaptureProgress| line.capture(p),
    ));
    line.finish();
    let BackupOutcome { mut info, stats } = outcome?;
    if a.pin {
        info = super::pg_args::runtime()?
            .block_on(catalog::set_pinned(&opts.client, &info.id, true))
            .map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "backup {} is complete but could not be pinned: pin it with `klio backup \
                     pin {}`",
                    info.id, info.id
                ))
            })?;
    }
    match a.output {
        Output::Text => println!(
            "backup {} complete ({} capture): {} in {} files; {} of it new to the server, sent \
             compressed as {}, {} already held; WAL {}..{} on timeline {}",
            info.id,
            info.capture,
            bytes(info.logical_bytes),
            info.files,
            bytes(stats.new_bytes),
            bytes(stats.bytes_sent),
            bytes(info.logical_bytes.saturating_sub(stats.new_bytes)),
            info.start.lsn,
            info.end.lsn,
            info.end.timeline,
        ),
        Output::Json => print_entry(&info),
    }
    Ok(ExitCode::SUCCESS)
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let client = a.client.resolve()?;
    let backups = super::pg_args::runtime()?.block_on(catalog::list_with_tiers(&client))?;
    match a.output {
        Output::Text => print!("{}", table(&backups)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&backups)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn show(a: ShowArgs) -> anyhow::Result<ExitCode> {
    let client = a.client.resolve()?;
    let info = super::pg_args::runtime()?.block_on(catalog::get_entry(&client, &a.backup))?;
    match a.output {
        Output::Text => print!("{}", details(&info)),
        Output::Json => print_entry(&info),
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let client = a.client.resolve()?;
    let mut line = ProgressLine::new(true);
    let verified = super::pg_args::runtime()?.block_on(catalog::verify(
        &client,
        &a.backup,
        &mut |p: VerifyProgress| line.verify(p),
    ));
    line.finish();
    let info = verified?;
    match a.output {
        Output::Text => println!(
            "backup {} verified: {} in {} files readable, WAL {}..{} on timeline {} archived",
            info.id,
            bytes(info.logical_bytes),
            info.files,
            info.start.lsn,
            info.end.lsn,
            info.end.timeline,
        ),
        Output::Json => print_entry(&info),
    }
    Ok(ExitCode::SUCCESS)
}

fn delete(a: DeleteArgs) -> anyhow::Result<ExitCode> {
    if a.id == "latest" {
        anyhow::bail!(
            "`klio backup delete` needs the backup's id, not latest: find it with `klio backup list`"
        );
    }
    let client = a.client.resolve()?;
    let info = super::pg_args::runtime()?.block_on(catalog::delete(&client, &a.id))?;
    match a.output {
        Output::Text => println!(
            "backup {} deleted from the catalog (its blocks stay until retention reclaims them)",
            info.id
        ),
        Output::Json => print_entry(&info),
    }
    Ok(ExitCode::SUCCESS)
}

fn set_pinned(
    backup: BackupRef,
    pinned: bool,
    output: Output,
    client: super::client_args::ClientArgs,
) -> anyhow::Result<ExitCode> {
    let client = client.resolve()?;
    let info = super::pg_args::runtime()?.block_on(async {
        let id = match &backup {
            BackupRef::Id(id) => id.clone(),
            BackupRef::Latest => catalog::get_entry(&client, &backup).await?.id,
        };
        catalog::set_pinned(&client, &id, pinned).await
    })?;
    match output {
        Output::Text if pinned => println!(
            "backup {} pinned: no retention policy removes it until `klio backup unpin {}`",
            info.id, info.id
        ),
        Output::Text => println!(
            "backup {} unpinned: retention policies apply to it again",
            info.id
        ),
        Output::Json => print_entry(&info),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_entry(info: &BackupInfo) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&info.to_json());
    let _ = writeln!(out);
}

/// The `list` table, one backup per line, with a header.
fn table(backups: &[ListedBackup]) -> String {
    let header = [
        "ID",
        "END LSN",
        "TIMELINE",
        "COMPLETED AT",
        "SIZE",
        "NEW STORED",
        "PINNED",
        "TIERS",
        "LABEL",
    ];
    let rows: Vec<[String; 9]> = backups
        .iter()
        .map(|listed| {
            let b = &listed.info;
            [
                b.id.clone(),
                b.end.lsn.to_string(),
                b.end.timeline.to_string(),
                b.completed_at.clone(),
                bytes(b.logical_bytes),
                bytes(b.new_stored_bytes),
                if b.pinned { "yes" } else { "" }.to_owned(),
                // An older server does not tell.
                listed.tiers.map(|t| t.to_string()).unwrap_or_default(),
                b.label.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// The `show` text: one field per line.
fn details(b: &BackupInfo) -> String {
    let tablespaces = if b.tablespaces.is_empty() {
        "none".to_owned()
    } else {
        b.tablespaces
            .iter()
            .map(|t| format!("{} at {}", t.oid, t.location))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fields = [
        ("id", b.id.clone()),
        ("cluster", b.cluster.clone()),
        ("label", b.label.clone()),
        ("status", "complete".to_owned()),
        (
            "capture",
            match b.capture {
                CaptureMethod::Stream => "stream (BASE_BACKUP)",
                CaptureMethod::Local => "local (read from the data directory)",
            }
            .to_owned(),
        ),
        (
            "pinned",
            if b.pinned {
                "yes (no retention policy removes it)"
            } else {
                "no"
            }
            .to_owned(),
        ),
        (
            "start",
            format!("{} on timeline {}", b.start.lsn, b.start.timeline),
        ),
        (
            "end",
            format!("{} on timeline {}", b.end.lsn, b.end.timeline),
        ),
        ("started at", b.started_at.clone()),
        ("ended at", b.ended_at.clone()),
        ("completed at", b.completed_at.clone()),
        ("PostgreSQL", b.postgres_version.to_string()),
        ("system identifier", b.system_identifier.clone()),
        ("files", b.files.to_string()),
        (
            "blocks",
            format!("{} of {}", b.blocks, bytes(b.block_size.into())),
        ),
        ("size", bytes(b.logical_bytes)),
        ("stored (referenced)", bytes(b.referenced_stored_bytes)),
        ("stored (new)", bytes(b.new_stored_bytes)),
        ("tablespaces", tablespaces),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(k, v)| format!("{:<width$}  {v}\n", format!("{k}:")))
        .collect()
}

/// A one-line progress display on standard error, drawn only when it is a terminal (and not
/// turned off), at most ten times a second.
struct ProgressLine {
    enabled: bool,
    drawn: Option<Instant>,
    text: String,
}

impl ProgressLine {
    fn new(wanted: bool) -> Self {
        Self {
            enabled: wanted && std::io::stderr().is_terminal(),
            drawn: None,
            text: String::new(),
        }
    }

    fn capture(&mut self, p: &CaptureProgress) {
        if !self.due() {
            return;
        }
        let pct = if p.total == 0 {
            100.0
        } else {
            (p.done as f64 * 100.0 / p.total as f64).min(100.0)
        };
        let eta = p
            .eta()
            .map_or_else(String::new, |t| format!(", {} s left", t.as_secs()));
        self.text = format!(
            "backup: {} of {} ({pct:.0}%), {} new sent, {}/s{eta}",
            bytes(p.done),
            bytes(p.total),
            bytes(p.sent),
            bytes(p.rate() as u64),
        );
        self.draw();
    }

    fn verify(&mut self, p: VerifyProgress) {
        if !self.due() {
            return;
        }
        let pct = if p.total == 0 {
            100.0
        } else {
            p.done as f64 * 100.0 / p.total as f64
        };
        self.text = format!(
            "verify: {} of {} ({pct:.0}%)",
            bytes(p.done),
            bytes(p.total)
        );
        self.draw();
    }

    fn due(&self) -> bool {
        self.enabled
            && self
                .drawn
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
    }

    fn draw(&mut self) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}\x1b[K", self.text);
        let _ = err.flush();
        self.drawn = Some(Instant::now());
    }

    /// Ends the line, if anything was drawn.
    fn finish(&mut self) {
        if self.enabled && self.drawn.is_some() {
            eprintln!();
        }
    }
}

/// A rate in kB/s: digits, optionally followed by k (kB/s) or M (MB/s).
fn parse_max_rate(text: &str) -> Result<MaxRate, String> {
    let (digits, factor) = match text.strip_suffix(['M', 'm']) {
        Some(d) => (d, 1024),
        None => (text.strip_suffix(['k', 'K']).unwrap_or(text), 1),
    };
    let value: u32 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a rate like 20M or 512k"))?;
    MaxRate::kb_per_second(value.saturating_mul(factor)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_shown_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(23 << 20), "23.0 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn max_rate_takes_kilobytes_or_megabytes_within_postgresqls_range() {
        assert_eq!(parse_max_rate("512").unwrap().get(), 512);
        assert_eq!(parse_max_rate("512k").unwrap().get(), 512);
        assert_eq!(parse_max_rate("16M").unwrap().get(), 16 * 1024);
        assert!(parse_max_rate("8").is_err());
        assert!(parse_max_rate("2000M").is_err());
        assert!(parse_max_rate("fast").is_err());
    }
}
