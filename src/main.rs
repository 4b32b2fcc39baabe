//! `klio`: the command-line entry point. It parses arguments and calls the libraries; all
//! logic lives in the `klio-*` crates.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::logging::init(args.verbose, args.quiet, args.log_format);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // A log collector gets the final error as a JSON line too.
            cli::logging::error(&error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, skipping a cause whose text its parent already
/// shows (many library errors include their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
