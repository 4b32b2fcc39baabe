//! `klio`: the command-line entry point. It parses arguments and calls the libraries; all
//! logic lives in the `klio-*` crates.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use klio_wal::ErrorChain;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::logging::init(args.verbose, args.quiet, args.log_format);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // A log collector gets the final error as a JSON line too; the chain shows each
            // cause once, since a message never repeats its source.
            cli::logging::error(&ErrorChain(e.as_ref()).to_string());
            ExitCode::FAILURE
        }
    }
}
