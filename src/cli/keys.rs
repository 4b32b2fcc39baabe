//! `klio keys`.

use std::path::PathBuf;
use std::process::ExitCode;

use klio_server::keys::{generate_key_file, load_key_file};

/// Key files for encrypting archives at rest.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write a new random 256-bit key (64 hex digits) to FILE with mode 0600; never overwrites.
    ///
    /// Keep a copy somewhere safe: without the key, data encrypted with it cannot be read.
    Generate {
        /// The key file to create.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Print the id of a key file (archived objects name the key they need by this id).
    Id {
        /// The key file.
        file: PathBuf,
    },
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.command {
        Command::Generate { output } => {
            let id = generate_key_file(&output)?;
            println!("created {} (key id {id})", output.display());
        }
        Command::Id { file } => println!("{}", load_key_file(&file)?.id()),
    }
    Ok(ExitCode::SUCCESS)
}
