//! `klio`: the command-line entry point. It parses arguments and calls the libraries; all
//! logic lives in the `klio-*` crates.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::logging::init(args.verbose, args.quiet);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("klio: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
