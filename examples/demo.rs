//! A guided demo on local defaults: a throw-away PostgreSQL 15 streams its WAL with
//! `klio send-wal` to a `klio server` (QUIC, mutual TLS, certificates from `klio certs`) as its
//! synchronous standby, is backed up with `klio backup run` (deduplicated blocks, the catalog)
//! while pgbench writes, shows what its retention policy would remove (`klio retention run
//! --dry-run`), crashes, loses its data directory, has its archive checked with
//! `klio verify`, and is rebuilt by `klio restore` and recovered through `klio get-wal` alone,
//! down to the last committed row. No pg_basebackup anywhere.
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
        .server_config("retention:\n  keep_backups: 2\n  recovery_window: 7d\n")
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

    pg.pgbench(&["-i", "-s", "2", "-q"]);
    step(
        "Taking a base backup with `klio backup run` while pgbench writes; every commit waits until the Klio server has fsynced its WAL",
    );
    let mut bench = klio_testkit::pgbench_in_background(
        pg,
        &["-T", "5", "-c", "2"],
        &work.path().join("pgbench.log"),
    );
    let mut client_args = server.client_args(certs, "demo");
    client_args.extend(["--cluster".into(), "demo".into()]);
    let backup = klio_testkit::run_ok(
        klio_testkit::as_postgres(&*exe)
            .args(["backup", "run", "--label", "demo", "-d"])
            .arg(pg.socket_connstr())
            .args(&client_args),
    );
    println!("    {}", backup.stdout.trim_end());
    assert_eq!(
        bench.wait(std::time::Duration::from_secs(120)),
        Some(0),
        "pgbench"
    );
    let listing = klio_testkit::run_ok(
        std::process::Command::new(&*exe)
            .args(["backup", "list"])
            .args(&client_args),
    );
    step("The backup catalog: klio backup list");
    print!("    {}", listing.stdout.trim_end().replace('\n', "\n    "));
    println!();
    step(
        "What retention (keep_backups: 2, recovery_window: 7d in the server's config) would remove: klio retention run --dry-run",
    );
    let retention = klio_testkit::run_ok(
        std::process::Command::new(&*exe)
            .args(["retention", "run", "--dry-run"])
            .args(&client_args),
    );
    print!(
        "    {}",
        retention.stdout.trim_end().replace('\n', "\n    ")
    );
    println!();
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
        "Deleting its data directory; klio restore --backup latest rebuilds it and sets restore_command = 'klio get-wal %f %p ...'",
    );
    let pgdata = pg.data_dir();
    std::fs::remove_dir_all(&pgdata).expect("delete PGDATA");
    let restored = klio_testkit::run_ok(
        klio_testkit::as_postgres(&*exe)
            .args(["restore", "--backup", "latest", "-D"])
            .arg(&pgdata)
            .args(&client_args),
    );
    print!("    {}", restored.stdout.trim_end().replace('\n', "\n    "));
    println!();
    // Nothing would acknowledge commits after recovery: no synchronous standby.
    let mut auto_conf = std::fs::read_to_string(pgdata.join("postgresql.auto.conf"))
        .expect("read postgresql.auto.conf");
    auto_conf.push_str("synchronous_standby_names = ''\n");
    std::fs::write(pgdata.join("postgresql.auto.conf"), auto_conf)
        .expect("write postgresql.auto.conf");
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
