//! The block size study behind `klio backup`'s 64 KiB blocks: two base backups of one pgbench
//! database, before and after `pgbench -N`, cut into fixed blocks of several sizes; for each
//! size, what a full backup stores (lz4 per block), what the second backup adds (new blocks,
//! lz4), how large its list of references is next to its logical size, and how many dedup
//! round trips (4096 hashes each) it needs.
//!
//! The backups are `pg_basebackup -Ft -X none` archives, read with Klio's own tar reader.

use std::collections::HashSet;
use std::path::Path;

use bytes::BytesMut;
use klio_proto::tar::{EntryKind, TarEvent, TarReader};
use klio_testkit::{PgOptions, PgServer, TestDir, as_postgres, pg_bin, run_ok};
use sha2::{Digest, Sha256};

/// What to run.
#[derive(Clone, Debug)]
pub struct BlockSizeOptions {
    /// pgbench scale (100 ≈ 1.5 GiB).
    pub scale: u32,
    /// Seconds of `pgbench -N` between the two backups.
    pub seconds: u32,
    /// Block sizes to try, bytes (multiples of 8 KiB).
    pub sizes: Vec<usize>,
}

/// The figures of one block size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BlockSizeRow {
    /// Block size, bytes.
    pub block_size: usize,
    /// Stored bytes of the first (full) backup: its distinct blocks, lz4.
    pub full_stored: u64,
    /// Stored bytes the second backup adds: its blocks the first lacks, lz4.
    pub incremental_stored: u64,
    /// Blocks in the second backup.
    pub blocks: u64,
    /// Its new blocks.
    pub new_blocks: u64,
    /// 32-byte references over logical size, percent.
    pub reference_overhead_pct: f64,
    /// `HaveBlocks` round trips of 4096 hashes.
    pub round_trips: u64,
}

/// The study's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BlockSizeReport {
    /// Logical size of the second backup (sum of file sizes).
    pub logical_bytes: u64,
    /// One row per block size.
    pub rows: Vec<BlockSizeRow>,
}

impl BlockSizeReport {
    /// A markdown table.
    pub fn markdown(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        let mut s = format!(
            "Logical size: {:.0} MiB\n\n| block | full stored MiB | incremental stored MiB | blocks | new blocks | references / logical | round trips |\n|---|---|---|---|---|---|---|\n",
            mib(self.logical_bytes)
        );
        for r in &self.rows {
            s += &format!(
                "| {} KiB | {:.1} | {:.1} | {} | {} | {:.3} % | {} |\n",
                r.block_size / 1024,
                mib(r.full_stored),
                mib(r.incremental_stored),
                r.blocks,
                r.new_blocks,
                r.reference_overhead_pct,
                r.round_trips
            );
        }
        s
    }
}

/// Calls `f` with the contents of every regular file of a tar archive, whole.
fn for_each_file(tar: &Path, mut f: impl FnMut(&[u8])) {
    let bytes = std::fs::read(tar).expect("read a pg_basebackup archive");
    let mut reader = TarReader::new();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut file = Vec::new();
    let mut in_file = false;
    while let Some(event) = reader.decode(&mut buf).expect("a valid archive") {
        match event {
            TarEvent::Entry(entry) => {
                in_file = matches!(entry.kind, EntryKind::File { .. });
                file.clear();
            }
            TarEvent::Data(data) => file.extend_from_slice(&data),
            TarEvent::EntryEnd => {
                if in_file {
                    f(&file);
                }
            }
            TarEvent::End => break,
        }
    }
}

/// Distinct blocks of an archive cut at `size`: hash → lz4 size.
fn blocks_of(tar: &Path, size: usize) -> (Vec<([u8; 32], u64)>, u64) {
    let mut out = Vec::new();
    let mut logical = 0u64;
    for_each_file(tar, |file| {
        logical += file.len() as u64;
        for block in file.chunks(size) {
            let hash: [u8; 32] = Sha256::digest(block).into();
            let stored = lz4_flex::block::compress(block).len().min(block.len()) as u64;
            out.push((hash, stored));
        }
    });
    (out, logical)
}

/// Runs the study.
pub fn run(opts: &BlockSizeOptions) -> BlockSizeReport {
    let pg = PgServer::start(PgOptions {
        conf: vec![
            "max_wal_size = 8GB".to_owned(),
            "shared_buffers = 256MB".to_owned(),
        ],
        ..PgOptions::default()
    });
    let work = TestDir::new("bench-block-size");
    let backup = |name: &str| {
        let dir = work.path().join(name);
        run_ok(
            as_postgres(pg_bin("pg_basebackup"))
                .arg("-D")
                .arg(&dir)
                .args(["-Ft", "-X", "none", "-c", "fast"])
                .args(["-h", &pg.socket_dir(), "-p", &pg.port().to_string()])
                .args(["-U", "postgres"]),
        );
        dir.join("base.tar")
    };
    run_ok(
        std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(work.path()),
    );
    eprintln!("pgbench -i -s {}", opts.scale);
    pg.pgbench(&["-i", "-q", "-s", &opts.scale.to_string()]);
    let first = backup("first");
    eprintln!("pgbench -N -T {}", opts.seconds);
    pg.pgbench(&["-N", "-c", "4", "-j", "2", "-T", &opts.seconds.to_string()]);
    let second = backup("second");

    let mut rows = Vec::new();
    let mut logical_bytes = 0;
    for &size in &opts.sizes {
        let (a, _) = blocks_of(&first, size);
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        let mut full_stored = 0;
        for (h, s) in &a {
            if seen.insert(*h) {
                full_stored += s;
            }
        }
        let (b, logical) = blocks_of(&second, size);
        logical_bytes = logical;
        let mut incremental_stored = 0;
        let mut new_blocks = 0;
        for (h, s) in &b {
            if seen.insert(*h) {
                incremental_stored += s;
                new_blocks += 1;
            }
        }
        let row = BlockSizeRow {
            block_size: size,
            full_stored,
            incremental_stored,
            blocks: b.len() as u64,
            new_blocks,
            reference_overhead_pct: (b.len() * 32) as f64 * 100.0 / logical.max(1) as f64,
            round_trips: (b.len() as u64).div_ceil(4096),
        };
        eprintln!("{row:?}");
        rows.push(row);
    }
    BlockSizeReport {
        logical_bytes,
        rows,
    }
}
