//! `klio receive-wal`: pg_receivewal 15's options, with its meanings and its refusals, in its
//! order (options first, then the combinations, then the directory, then the server).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use klio_client::receive::{ReceiveOptions, StopReason, create_slot, drop_slot, receive_wal};
use klio_wal::Lsn;
use klio_wal::segment_dir::{Compression, Fsync};

/// Stream WAL from a PostgreSQL server into a directory, byte for byte as pg_receivewal.
///
/// Segments are written as <name>.partial, pre-padded with zeros, and renamed when complete.
/// Streaming resumes from the newest file in the directory, else from the slot's restart
/// position, else from the server's current position. Connection settings follow libpq:
/// -d takes a connection string or URI, and PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE and
/// friends are honoured.
///
/// Installed as (or linked to) the name pg_receivewal, klio behaves as this command and
/// speaks as pg_receivewal: its messages, its --help and --version.
#[derive(Debug, clap::Args)]
// As with getopt, an option given twice takes its last value (scripts append options).
#[command(disable_help_flag = true, args_override_self = true)]
pub(crate) struct Args {
    /// Print help (-h is --host, as in pg_receivewal).
    #[arg(short = '?', long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Receive WAL files into this directory (it must exist).
    #[arg(short = 'D', long, value_name = "DIR")]
    directory: Option<PathBuf>,
    /// Stop once WAL past this position (X/X) has been received, and exit 0; the segment
    /// holding it stays .partial.
    #[arg(short = 'E', long, value_name = "LSN")]
    endpos: Option<String>,
    /// With --create-slot: succeed if the slot already exists.
    #[arg(long)]
    if_not_exists: bool,
    /// Exit on the first connection loss instead of reconnecting.
    #[arg(short = 'n', long)]
    no_loop: bool,
    /// Never fsync. WAL is reported flushed once written, so a crash of the machine (not only
    /// of klio) can lose WAL the server was told is safe. For tests and throw-away copies.
    #[arg(long)]
    no_sync: bool,
    /// Seconds between status updates sent to the server (default 10; 0 disables periodic
    /// updates).
    #[arg(short = 's', long, value_name = "SECS", allow_negative_numbers = true)]
    status_interval: Option<String>,
    /// Replication slot to use (physical).
    #[arg(short = 'S', long, value_name = "SLOTNAME")]
    slot: Option<String>,
    /// Compress segments as pg_receivewal does: gzip or lz4, with an optional level
    /// (gzip:9, lz4:1, or the older bare gzip level, 0 for none). Files are named
    /// <segment>.gz or .lz4 (.partial while streaming) and restore-wal serves them.
    #[arg(short = 'Z', long, value_name = "METHOD[:DETAIL]")]
    compress: Option<String>,
    /// fsync WAL as soon as it is received and report it flushed, so the receiver can be a
    /// synchronous standby (synchronous_standby_names = 'klio').
    #[arg(long)]
    synchronous: bool,
    #[command(flatten)]
    pg: super::pg_args::PgArgs,
    /// Create the replication slot named by --slot, then exit. Like pg_receivewal's, the slot
    /// holds no WAL back until a receiver first streams from it.
    #[arg(long)]
    create_slot: bool,
    /// Drop the replication slot named by --slot, then exit.
    #[arg(long)]
    drop_slot: bool,
    /// Seconds to wait before reconnecting after a connection loss.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    reconnect_delay: u64,
    /// pg_receivewal takes no arguments besides its options; any given are refused.
    #[arg(hide = true)]
    extra: Vec<OsString>,
}

/// A command line pg_receivewal would refuse, with its words for it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UsageError {
    #[error("invalid value {0:?} for option -s/--status-interval")]
    StatusInterval(String),
    #[error("-s/--status-interval must be in range 0..{MAX_STATUS_INTERVAL}")]
    StatusIntervalRange,
    #[error("could not parse end position {0:?}")]
    EndPosition(String),
    #[error("too many command-line arguments (first is {0:?})")]
    TooManyArguments(String),
    #[error("cannot use --create-slot together with --drop-slot")]
    CreateAndDrop,
    #[error("--{0} needs a slot to be specified using --slot")]
    SlotNeeded(&'static str),
    #[error("cannot use --synchronous together with --no-sync")]
    SynchronousWithoutSync,
    #[error("no target directory specified")]
    NoDirectory,
    #[error(transparent)]
    Compress(#[from] super::compress_option::CompressOptionError),
    #[error("could not open directory {0:?}")]
    Directory(PathBuf, #[source] std::io::Error),
}

impl UsageError {
    /// Whether pg_receivewal follows this refusal with its "Try --help" hint.
    pub(crate) fn wants_help_hint(&self) -> bool {
        !matches!(
            self,
            Self::StatusInterval(_)
                | Self::StatusIntervalRange
                | Self::EndPosition(_)
                | Self::Compress(_)
                | Self::Directory(..)
        )
    }
}

/// The hint after a refused command line: where the options are explained.
pub(crate) fn help_hint() -> String {
    let command = match super::logging::program() {
        "klio" => "klio receive-wal",
        other => other,
    };
    format!("Try \"{command} --help\" for more information.")
}

/// pg_receivewal's bound on `-s`: seconds that fit in an int of milliseconds.
const MAX_STATUS_INTERVAL: u64 = i32::MAX as u64 / 1000;

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    run_as(a, "klio")
}

/// Runs the command, naming itself `application_name` to the server unless the connection
/// settings name it (pg_receivewal's name when klio runs as pg_receivewal).
pub(crate) fn run_as(a: Args, application_name: &str) -> anyhow::Result<ExitCode> {
    let (checked, warning) = check(&a)?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let conn = a.pg.resolve_as(application_name)?;
    let runtime = super::pg_args::runtime()?;
    runtime.block_on(async move {
        match checked {
            Checked::CreateSlot(slot) => {
                tracing::info!("creating replication slot {slot:?}");
                if !create_slot(&conn, &slot, a.if_not_exists).await? {
                    tracing::debug!("replication slot {slot:?} already exists");
                }
            }
            Checked::DropSlot(slot) => {
                tracing::info!("dropping replication slot {slot:?}");
                drop_slot(&conn, &slot).await?;
            }
            Checked::Receive {
                directory,
                endpos,
                status_interval,
                compression,
            } => {
                let opts = ReceiveOptions {
                    conn,
                    directory,
                    slot: a.slot,
                    synchronous: a.synchronous,
                    no_loop: a.no_loop,
                    status_interval,
                    reconnect_delay: Duration::from_secs(a.reconnect_delay.max(1)),
                    endpos,
                    fsync: if a.no_sync {
                        Fsync::Never
                    } else {
                        Fsync::Always
                    },
                    compression,
                };
                let shutdown = super::signals::shutdown_on_stop_signal();
                // Both ends are a success: a stop signal, or the end position reached.
                let _: StopReason = receive_wal(&opts, shutdown).await?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The command line's values, checked as pg_receivewal checks them.
enum Checked {
    CreateSlot(String),
    DropSlot(String),
    Receive {
        directory: PathBuf,
        endpos: Option<Lsn>,
        status_interval: Duration,
        compression: Compression,
    },
}

/// Checks the command line in pg_receivewal's order: the values of -s and -E, then the
/// arguments and combinations, then -Z, then the directory. Returns what to do, and a warning
/// to log when a setting cannot be had exactly.
fn check(a: &Args) -> Result<(Checked, Option<String>), UsageError> {
    let status_interval = match &a.status_interval {
        None => 10,
        Some(text) => parse_status_interval(text)?,
    };
    let endpos = match &a.endpos {
        None => None,
        Some(text) => parse_endpos(text)?,
    };
    if let Some(first) = a.extra.first() {
        return Err(UsageError::TooManyArguments(
            first.to_string_lossy().into_owned(),
        ));
    }
    if a.create_slot && a.drop_slot {
        return Err(UsageError::CreateAndDrop);
    }
    if a.slot.is_none() && a.drop_slot {
        return Err(UsageError::SlotNeeded("drop-slot"));
    }
    if a.slot.is_none() && a.create_slot {
        return Err(UsageError::SlotNeeded("create-slot"));
    }
    if a.synchronous && a.no_sync {
        return Err(UsageError::SynchronousWithoutSync);
    }
    let slot_action = a.create_slot || a.drop_slot;
    if a.directory.is_none() && !slot_action {
        return Err(UsageError::NoDirectory);
    }
    let (compression, warning) = match &a.compress {
        None => (Compression::None, None),
        Some(text) => super::compress_option::parse(text)?,
    };
    let checked = match (&a.slot, &a.directory) {
        (Some(slot), _) if a.drop_slot => Checked::DropSlot(slot.clone()),
        (Some(slot), _) if a.create_slot => Checked::CreateSlot(slot.clone()),
        (_, Some(directory)) => {
            std::fs::read_dir(directory)
                .map_err(|e| UsageError::Directory(directory.clone(), e))?;
            Checked::Receive {
                directory: directory.clone(),
                endpos,
                status_interval: Duration::from_secs(status_interval),
                compression,
            }
        }
        (_, None) => return Err(UsageError::NoDirectory),
    };
    Ok((checked, warning))
}

/// `-s`: whole seconds, surrounding spaces allowed, as pg_receivewal's option parser.
fn parse_status_interval(text: &str) -> Result<u64, UsageError> {
    let trimmed = text.trim();
    let value: i64 = if trimmed.is_empty() {
        0
    } else {
        trimmed
            .parse()
            .map_err(|_| UsageError::StatusInterval(text.to_owned()))?
    };
    u64::try_from(value)
        .ok()
        .filter(|v| *v <= MAX_STATUS_INTERVAL)
        .ok_or(UsageError::StatusIntervalRange)
}

/// `-E`: `X/X` in hexadecimal; `0/0` means no end position, as in pg_receivewal.
fn parse_endpos(text: &str) -> Result<Option<Lsn>, UsageError> {
    let lsn: Lsn = text
        .trim()
        .parse()
        .map_err(|_| UsageError::EndPosition(text.to_owned()))?;
    Ok((lsn.0 != 0).then_some(lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_intervals_are_read_as_pg_receivewal_reads_them() {
        assert_eq!(parse_status_interval("10").unwrap(), 10);
        assert_eq!(parse_status_interval(" 7 ").unwrap(), 7);
        assert_eq!(parse_status_interval("").unwrap(), 0);
        assert_eq!(parse_status_interval("2147483").unwrap(), 2_147_483);
        assert!(matches!(
            parse_status_interval("2147484"),
            Err(UsageError::StatusIntervalRange)
        ));
        assert!(matches!(
            parse_status_interval("-1"),
            Err(UsageError::StatusIntervalRange)
        ));
        let e = parse_status_interval("abc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value \"abc\" for option -s/--status-interval"
        );
    }

    #[test]
    fn end_positions_are_lsns_and_zero_means_none() {
        assert_eq!(parse_endpos("0/3000060").unwrap(), Some(Lsn(0x0300_0060)));
        assert_eq!(parse_endpos("1/0").unwrap(), Some(Lsn(1 << 32)));
        assert_eq!(parse_endpos("0/0").unwrap(), None);
        let e = parse_endpos("bad").unwrap_err();
        assert_eq!(e.to_string(), "could not parse end position \"bad\"");
    }
}
