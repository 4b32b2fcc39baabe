//! `klio-bench`: comparison runs on this machine. Measures; asserts nothing.
//!
//! ```text
//! cargo build --release --bin klio
//! cargo run --release -p klio-bench -- sync-commit --klio target/release/klio
//! cargo run --release -p klio-bench -- recovery --klio target/release/klio --wal-mib 2048
//! ```

use std::path::PathBuf;

use klio_bench::recovery::RecoveryOptions;
use klio_bench::sync_commit::{SyncCommitOptions, run};

fn usage() -> ! {
    eprintln!(
        "usage: klio-bench sync-commit --klio PATH [--rounds N] [--seconds S] [--clients C] [--scale K]\n\
         \x20      klio-bench recovery --klio PATH [--rounds N] [--wal-mib M]"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("sync-commit") => {}
        Some("recovery") => return recovery(args),
        _ => usage(),
    }
    let mut klio: Option<PathBuf> = None;
    let mut opts = SyncCommitOptions {
        rounds: 3,
        seconds: 20,
        clients: 8,
        scale: 10,
    };
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        let num = || value.parse::<u32>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--klio" => klio = Some(PathBuf::from(&value)),
            "--rounds" => opts.rounds = num(),
            "--seconds" => opts.seconds = num(),
            "--clients" => opts.clients = num(),
            "--scale" => opts.scale = num(),
            _ => usage(),
        }
    }
    let klio = klio.unwrap_or_else(|| usage());
    let report = run(&klio, &opts);
    println!("{}", report.markdown());
}

fn recovery(mut args: impl Iterator<Item = String>) {
    let mut klio: Option<PathBuf> = None;
    let mut opts = RecoveryOptions {
        rounds: 2,
        wal_mib: 2048,
    };
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--klio" => klio = Some(PathBuf::from(&value)),
            "--rounds" => opts.rounds = value.parse().unwrap_or_else(|_| usage()),
            "--wal-mib" => opts.wal_mib = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let klio = klio.unwrap_or_else(|| usage());
    let report = klio_bench::recovery::run(&klio, &opts);
    println!("{}", report.markdown());
}
