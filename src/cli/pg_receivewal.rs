//! klio run under the name `pg_receivewal` (a link to the binary): `klio receive-wal`, speaking
//! as pg_receivewal 15 does, so that scripts and tests written against it cannot tell.
//!
//! - `--help`/`-?` and `--version`/`-V` as the first argument print pg_receivewal's kind of
//!   help and version on standard output.
//! - A command line it would refuse is refused as it refuses it: getopt's words for unknown
//!   options and missing values, prefixed with the name it was run as, then the hint line,
//!   exit 1.
//! - Log lines are `pg_receivewal: <message>`, with `warning: `/`error: ` for those levels;
//!   `-v` adds what pg_receivewal prints when verbose.
//! - It names itself `pg_receivewal` to the server (`application_name`), unless the connection
//!   settings name it.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Args as _, FromArgMatches as _};

use super::receive_wal;

const PROGRAM: &str = "pg_receivewal";

/// Runs `argv` (with `argv[0]` the name klio was run as) as pg_receivewal would.
pub(crate) fn run_as_pg_receivewal(argv: Vec<OsString>) -> ExitCode {
    let argv0 = argv
        .first()
        .map_or_else(|| PROGRAM.to_owned(), |a| a.to_string_lossy().into_owned());
    // Like every PostgreSQL tool, only the first argument can ask for help or the version.
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("--help" | "-?") => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Some("--version" | "-V") => {
            println!("{}", version());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let command = receive_wal::Args::augment_args(
        clap::Command::new(PROGRAM)
            .disable_version_flag(true)
            .infer_long_args(true)
            .args_override_self(true)
            .arg(
                Arg::new("verbose")
                    .short('v')
                    .long("verbose")
                    .action(ArgAction::Count),
            ),
    );
    let parsed = command.try_get_matches_from(&argv).and_then(|m| {
        Ok((
            m.get_count("verbose"),
            receive_wal::Args::from_arg_matches(&m)?,
        ))
    });
    let (verbose, args) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if e.kind() == ErrorKind::DisplayHelp => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let last = argv
                .get(1..)
                .and_then(|a| a.last())
                .and_then(|a| a.to_str());
            eprintln!("{}", refusal(&argv0, last, &e));
            eprintln!("{PROGRAM}: hint: {}", help_hint());
            return ExitCode::FAILURE;
        }
    };
    super::logging::init_as_pg_tool(PROGRAM, verbose);
    match receive_wal::run_as(args, PROGRAM) {
        Ok(code) => code,
        Err(e) => {
            super::report(&e);
            ExitCode::FAILURE
        }
    }
}

fn help_hint() -> String {
    format!("Try \"{PROGRAM} --help\" for more information.")
}

/// The line getopt (or, for other mistakes, pg_receivewal) prints for a refused command line.
fn refusal(argv0: &str, last: Option<&str>, e: &clap::Error) -> String {
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => Some(arg.as_str()),
        _ => None,
    };
    let value_missing = matches!(
        e.get(ContextKind::InvalidValue),
        Some(ContextValue::String(v)) if v.is_empty()
    );
    match (e.kind(), arg) {
        (ErrorKind::UnknownArgument, Some(arg)) if arg.starts_with("--") => {
            format!("{argv0}: unrecognized option '{arg}'")
        }
        (ErrorKind::UnknownArgument, Some(arg)) => {
            format!(
                "{argv0}: invalid option -- '{}'",
                arg.trim_start_matches('-')
            )
        }
        (ErrorKind::InvalidValue, Some(arg)) if value_missing => {
            // A value can only be missing after the last argument; getopt names the option
            // as it was written there.
            match last.filter(|l| l.len() == 2 && !l.starts_with("--")) {
                Some(short) => format!("{argv0}: option requires an argument -- '{}'", &short[1..]),
                None => {
                    let long = arg.split_whitespace().next().unwrap_or(arg);
                    format!("{argv0}: option '{long}' requires an argument")
                }
            }
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            format!(
                "{PROGRAM}: error: {}",
                first.strip_prefix("error: ").unwrap_or(first)
            )
        }
    }
}

fn version() -> String {
    format!(
        "{PROGRAM} (PostgreSQL) 15 (Klio {})",
        env!("CARGO_PKG_VERSION")
    )
}

/// `--help`, laid out as PostgreSQL's tools lay theirs out.
fn help() -> String {
    format!(
        "{PROGRAM} streams PostgreSQL's write-ahead log into a directory (Klio {version}).

Usage:
  {PROGRAM} [OPTION]...

Options:
  -D, --directory=DIR    write the received WAL files into DIR (it must exist)
  -E, --endpos=LSN       exit once WAL past LSN has been received
      --if-not-exists    with --create-slot, succeed if the slot already exists
  -n, --no-loop          exit when the connection is lost instead of reconnecting
      --no-sync          never fsync: faster, but a machine crash can lose WAL
  -s, --status-interval=SECS
                         seconds between status packets to the server (default: 10)
  -S, --slot=SLOTNAME    stream from this replication slot
      --synchronous      fsync and report WAL at once, as a synchronous standby
  -v, --verbose          say more about what is happening
  -V, --version          print the version, then exit
  -Z, --compress=METHOD[:DETAIL]
                         compress segments with gzip or lz4, optionally at a level
  -?, --help             print this help, then exit

Connection options:
  -d, --dbname=CONNSTR   connection string or URI
  -h, --host=HOSTNAME    database server host or socket directory
  -p, --port=PORT        database server port
  -U, --username=NAME    connect as this role
  -w, --no-password      never prompt for a password
  -W, --password         prompt for a password before connecting

Optional actions:
      --create-slot      create the slot named by --slot, then exit
      --drop-slot        drop the slot named by --slot, then exit

This is klio receive-wal; run `klio receive-wal --help` for its other options.
",
        version = env!("CARGO_PKG_VERSION")
    )
}
