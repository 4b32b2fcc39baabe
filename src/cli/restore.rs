//! `klio restore`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use klio_client::recovery_config::RecoveryTarget;
use klio_client::restore::{
    BackupRef, DEFAULT_JOBS, MAX_JOBS, RestoreProgress, RestoreSettings, TablespaceMapping, restore,
};

use super::progress::Progress;
use super::recovery_args::{RecoveryTargetArgs, get_wal_restore_command};

/// Restore a base backup from the Klio server into an empty data directory.
///
/// Chooses the backup: --backup ID, or --backup latest for the newest one (with --target-lsn
/// or --target-time: the newest that ends before the target; a backup that ends after the
/// target is refused, naming the one to use). Fetches its blocks on --jobs parallel streams,
/// checks each against its keyed hash, rebuilds every file byte-exactly with its mode and
/// modification time, and writes backup_label, tablespace_map and backup_manifest. Then
/// prepares recovery as klio prepare-recovery does (restore_command = klio get-wal with these
/// server options, the target, recovery.signal): start PostgreSQL and it recovers through the
/// Klio server.
///
/// PGDATA and every tablespace location must be missing or empty; --force deletes everything
/// in them first (never while a PostgreSQL runs on PGDATA: a live postmaster.pid refuses it,
/// one left by a crash does not). Tablespaces are restored where they were, unless --tablespace-mapping moves
/// them. Until the restore finishes, PGDATA holds klio-restore-in-progress and no
/// backup_label or global/pg_control, so an interrupted restore never looks complete (and
/// PostgreSQL will not start on it): restore again with --force.
///
/// --delta restores over an existing, stopped data directory instead (and its tablespace
/// locations): each file is compared block by block with the backup (every local block
/// hashed with the cluster's key, nothing trusted to size or modification time), only the
/// blocks that differ are fetched and written, and everything the backup does not have is
/// removed (WAL in pg_wal included), so the directory ends with exactly the backup's content.
/// An interrupted --delta is finished by running it again.
///
/// Examples:
///   klio restore --backup latest -D /var/lib/postgresql/15/main --server klio:7470 \
///       --tls-ca ca.pem --tls-cert client.pem --tls-key client.key --cluster pg-main
///   klio restore --backup latest -D /srv/pg --target-time '2026-12-01 12:30:00+00' \
///       --target-action promote ...
///   klio restore --backup 20261201T120000Z-3f9a -D /srv/pg \
///       --tablespace-mapping /srv/ts1=/restore/ts1 --force ...
///   klio restore --backup latest -D /var/lib/postgresql/15/main --delta ...
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The backup to restore: its id (klio backup list shows them), or latest.
    #[arg(long, value_name = "ID|latest")]
    backup: BackupRef,
    /// The data directory to restore into (missing or empty, unless --force).
    #[arg(short = 'D', long, value_name = "DIR", env = "PGDATA")]
    pgdata: PathBuf,
    /// Restore the tablespace that was at OLD into NEW (absolute paths; repeatable).
    #[arg(long = "tablespace-mapping", value_name = "OLD=NEW")]
    tablespace_mappings: Vec<TablespaceMapping>,
    /// Blocks are fetched on this many parallel streams (1 to 12).
    #[arg(short, long, value_name = "N", default_value_t = DEFAULT_JOBS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
              .range(1..=MAX_JOBS as u64))]
    jobs: usize,
    /// Delete everything in a non-empty PGDATA or tablespace location before restoring (an
    /// unfinished earlier restore included).
    #[arg(long, conflicts_with = "delta")]
    force: bool,
    /// Restore over the existing (stopped) PGDATA, rewriting only the blocks that differ from
    /// the backup and removing what the backup does not have.
    #[arg(long)]
    delta: bool,
    /// get-wal (during recovery): segments to prefetch (0: none).
    #[arg(long, value_name = "N", default_value_t = 8)]
    get_wal_prefetch: u64,
    /// get-wal (during recovery): segments fetched at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    get_wal_jobs: usize,
    #[command(flatten)]
    recovery: RecoveryTargetArgs,
    #[command(flatten)]
    client: super::client_args::ClientArgs,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    // Checked now, so that recovery does not start with a restore_command that cannot work.
    let mut client = a.client.resolve()?;
    let restore_command = get_wal_restore_command(&mut client, a.get_wal_prefetch, a.get_wal_jobs)?;
    let recovery = a.recovery.config(restore_command)?;
    let pgdata = std::path::absolute(&a.pgdata)
        .with_context(|| format!("resolving {}", a.pgdata.display()))?;
    let settings = RestoreSettings {
        client,
        backup: a.backup,
        pgdata,
        tablespace_mappings: a.tablespace_mappings,
        jobs: a.jobs,
        force: a.force,
        delta: a.delta,
        recovery,
    };
    // The total is known once the backup is chosen: the bar starts with the first bytes.
    let bar: Arc<Mutex<Option<Progress>>> = Arc::new(Mutex::new(None));
    let on_progress = {
        let bar = Arc::clone(&bar);
        Arc::new(move |p: RestoreProgress| {
            if let Ok(mut bar) = bar.lock() {
                bar.get_or_insert_with(|| Progress::new("restore", p.total, "bytes"))
                    .set(p.written);
            }
        })
    };
    let result = super::pg_args::runtime()?.block_on(restore(&settings, on_progress));
    if let Ok(mut bar) = bar.lock()
        && let Some(bar) = bar.as_mut()
    {
        bar.finish();
    }
    let report = result?;
    let b = &report.backup;
    println!(
        "restored backup {} (ends at {} on timeline {}, {}) into {}: {} files, {} in {:.1} s",
        b.id,
        b.end.lsn,
        b.end.timeline,
        b.ended_at,
        report.pgdata.display(),
        report.files,
        super::progress::bytes(report.bytes),
        report.elapsed.as_secs_f64()
    );
    if settings.delta {
        println!(
            "delta: {} already as in the backup and kept, {} fetched, {} entries the backup \
             does not have removed",
            super::progress::bytes(report.reused_bytes),
            super::progress::bytes(report.bytes),
            report.removed
        );
    }
    for ts in &report.tablespaces {
        println!(
            "tablespace {} restored into {}",
            ts.oid,
            ts.location.display()
        );
    }
    if settings.recovery.standby {
        println!(
            "start PostgreSQL: it will run as a standby, following the archive through klio \
             get-wal"
        );
    } else {
        println!(
            "start PostgreSQL: it will recover through klio get-wal to {}",
            describe(&settings.recovery.target)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where recovery will stop, for the closing line.
fn describe(target: &RecoveryTarget) -> String {
    match target {
        RecoveryTarget::Latest => "the end of the archive (the last WAL streamed)".to_owned(),
        RecoveryTarget::Time(t) => format!("time {t}"),
        RecoveryTarget::Lsn(l) => format!("LSN {l}"),
        RecoveryTarget::Xid(x) => format!("transaction {x}"),
        RecoveryTarget::Name(n) => format!("restore point {n:?}"),
        RecoveryTarget::Immediate => "the backup's end, where the data is consistent".to_owned(),
        other => format!("{other:?}"),
    }
}
