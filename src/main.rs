//! `klio`: the command-line entry point. It parses arguments and calls the libraries; all
//! logic lives in the `klio-*` crates.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let cli::Personality::PgReceivewal = cli::Personality::of(argv.first()) {
        return cli::run_as_pg_receivewal(argv);
    }
    let args = cli::Cli::parse_from(argv);
    cli::logging::init(args.verbose, args.quiet, args.log_format);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            cli::report(&e);
            ExitCode::FAILURE
        }
    }
}
