//! A guided demo on local defaults: a throw-away PostgreSQL 15 streams its WAL with
//! `klio send-wal` to a `klio server` (QUIC, mutual TLS, certificates from `klio certs`) as its
//! synchronous standby, crashes, has its archive checked with `klio verify`, and is recovered
//! from a base backup plus `klio get-wal` alone (set up by `klio prepare-recovery`), down to
//! the last committed row.
//!
//! Run it with `scripts/demo` (which builds `klio` first), or
//! `cargo run --example demo -- target/debug/klio`.

use std::path::PathBuf;

use klio_testkit::{SEND_WAL_SLOT, Stack};

fn step(text: &str) {
    println!("\n==> {text}");
}

fn main() {
    let klio: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/debug/klio"));
    assert!(
        klio.is_file(),
        "{} not found: build it first (cargo build) or pass its path",
        klio.display()
    );

    step(
        "Starting a temporary PostgreSQL 15 (synchronous_standby_names = 'klio'), a private CA and certificates from `klio certs`, and `klio server`",
    );
    let mut stack = Stack::builder("demo", &klio)
        .cluster("demo")
        .sync_standby()
        .without_send_wal()
        .start();
    let Stack {
        pg,
        server,
        client: sender,
        certs,
        work,
        exe,
        ..
    } = &mut stack;
    println!(
        "    PostgreSQL: data directory {}, port {}",
        pg.data_dir().display(),
        pg.port()
    );
    println!(
        "    klio server: listening on {} (data in {})",
        server.address(),
        server.data_dir().display()
    );
    step("Streaming WAL with `klio send-wal` (cluster \"demo\") to the server");
    sender.start();
    pg.wait_for_sync_standby(SEND_WAL_SLOT);

    step("Taking a base backup (pg_basebackup --wal-method=none: WAL comes from Klio)");
    let backup = work.path().join("base-backup");
    pg.base_backup_without_wal(&backup);

    step(
        "Running pgbench for 5 seconds; every commit waits until the Klio server has fsynced its WAL",
    );
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.pgbench(&["-T", "5", "-c", "2"]);
    pg.psql("CREATE TABLE demo_marker (note text, at timestamptz DEFAULT now())");
    pg.psql("INSERT INTO demo_marker (note) VALUES ('the last committed row')");
    println!(
        "    pg_stat_replication: {}",
        pg.psql(
            "SELECT format('application_name=%s state=%s sync_state=%s write_lsn=%s flush_lsn=%s', \
             application_name, state, sync_state, write_lsn, flush_lsn) \
             FROM pg_stat_replication WHERE application_name = 'klio'"
        )
    );
    let accounts = pg.psql("SELECT sum(abalance) FROM pgbench_accounts");
    step("The server's view: klio status (Prometheus metrics are on the same listener)");
    let status = klio_testkit::run_ok(std::process::Command::new(&*exe).args([
        "status",
        "--address",
        &server.metrics_address(),
    ]));
    print!("    {}", status.stdout.trim_end().replace('\n', "\n    "));
    println!();

    step("Crashing PostgreSQL with kill -9");
    pg.kill9();
    sender.stop();
    step("Checking the server's archive: klio verify (continuous, every record's checksum)");
    let verify = klio_testkit::run(
        std::process::Command::new(&*exe)
            .args(["verify", "--cluster", "demo", "--data-dir"])
            .arg(server.data_dir()),
    );
    print!("{}", verify.stdout.replace("\n  ", "\n      "));
    assert!(verify.success(), "klio verify: {}", verify.stderr);

    step(
        "Replacing its data directory with the base backup; klio prepare-recovery sets restore_command = 'klio get-wal %f %p ...'",
    );
    pg.replace_data_with_backup(&backup);
    klio_testkit::run_ok(
        klio_testkit::as_postgres(&*exe)
            .arg("prepare-recovery")
            .arg("-D")
            .arg(pg.data_dir())
            .args(server.client_args(certs, "demo")),
    );
    pg.start_and_finish_recovery();

    step("Checking the recovered cluster");
    let marker = pg.psql("SELECT note FROM demo_marker");
    let accounts_after = pg.psql("SELECT sum(abalance) FROM pgbench_accounts");
    println!("    demo_marker: {marker:?}");
    println!("    sum(abalance) before crash {accounts}, after recovery {accounts_after}");
    assert_eq!(marker, "the last committed row");
    assert_eq!(accounts, accounts_after);
    println!(
        "\nDemo passed: nothing committed was lost. Everything was temporary and is removed now."
    );
}
