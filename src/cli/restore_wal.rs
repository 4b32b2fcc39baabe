//! `klio restore-wal %f %p --directory DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use klio_client::restore_wal::{Restored, restore_from_directory};
use klio_wal::ErrorChain;

/// Copy WAL file %f from a receive-wal directory to %p, for PostgreSQL's restore_command.
///
/// When the segment exists only as .partial (the last one streamed), the .partial is served:
/// recovery then reaches the last received byte. Exit status 1 means "not in the archive" (the
/// normal end of recovery); any other failure exits with 255 so that PostgreSQL stops recovery
/// instead of ending it early.
///
/// Example: restore_command = 'klio restore-wal %f %p -D /var/lib/klio/wal'
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// WAL file name requested by PostgreSQL (%f).
    file: String,
    /// Destination path (%p).
    path: PathBuf,
    /// The directory written by receive-wal.
    #[arg(short = 'D', long, value_name = "DIR")]
    directory: PathBuf,
}

/// Exit status above 125: PostgreSQL aborts recovery rather than treating the file as absent.
const EXIT_ABORT_RECOVERY: u8 = 255;

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    match restore_from_directory(&a.directory, &a.file, &a.path) {
        Ok(Restored::Partial(p)) => {
            tracing::info!("served {} for {}", p.display(), a.file);
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) if e.is_not_found() => {
            tracing::debug!("{}", ErrorChain(&e));
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            super::logging::error(&ErrorChain(&e).to_string());
            Ok(ExitCode::from(EXIT_ABORT_RECOVERY))
        }
    }
}
