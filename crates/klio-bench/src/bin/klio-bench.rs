//! `klio-bench`: comparison runs on this machine. Measures; asserts nothing.
//!
//! ```text
//! cargo build --release --bin klio
//! cargo run --release -p klio-bench -- sync-commit --klio target/release/klio
//! ```

use std::path::PathBuf;

use klio_bench::sync_commit::{SyncCommitOptions, run};

fn usage() -> ! {
    eprintln!(
        "usage: klio-bench sync-commit --klio PATH [--rounds N] [--seconds S] [--clients C] [--scale K]"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("sync-commit") {
        usage();
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
