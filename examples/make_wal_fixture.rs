//! Writes a real WAL segment produced by pgbench, for benches that need realistic WAL:
//! `cargo run --example make_wal_fixture -- klio-crypto/benches/fixtures/pgbench-1mib.wal`
//! (1 MiB segments, pgbench scale 1 and a few seconds of TPC-B-like load; the segment taken is
//! a complete one from the middle of the run).

use klio_testkit::{PgOptions, PgServer};

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: make_wal_fixture OUTPUT");
    let pg = PgServer::start(PgOptions {
        wal_segsize_mb: 1,
        ..PgOptions::default()
    });
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let start = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.pgbench(&["-T", "5", "-c", "2"]);
    pg.switch_wal();
    // The segment after the one pgbench started in: entirely pgbench traffic.
    let seg = u64::from_str_radix(&start[16..], 16).expect("segment number") + 1;
    let name = format!("{}{:08X}", &start[..16], seg);
    let bytes = std::fs::read(pg.data_dir().join("pg_wal").join(&name)).expect("read segment");
    assert_eq!(bytes.len(), 1 << 20);
    std::fs::write(&out, &bytes).expect("write fixture");
    println!("wrote {name} ({} bytes) to {out}", bytes.len());
}
