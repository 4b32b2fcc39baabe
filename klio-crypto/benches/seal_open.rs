//! Seal and open throughput for lz4 and zstd(3) with AES-256-GCM (default 32 KiB chunks, and
//! lz4 with 1 MiB chunks to show why the default is small), plus AES-256-GCM alone as a
//! baseline, on two inputs: a real 1 MiB WAL segment written by pgbench (the checked-in
//! `fixtures/pgbench-1mib.wal`, made with `cargo run --example make_wal_fixture`), and one
//! synthetic 16 MiB segment with 30% random payload bytes.
//!
//! `cargo bench -p klio-crypto --bench seal_open -- --measurement-time 3 --warm-up-time 1`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use klio_crypto::{Compression, Kek, Keyring, SealOptions, SystemRandom, open, seal};
use klio_wal::SegmentSize;
use klio_wal::synth::{SynthConfig, SyntheticWal};

fn wal_segment() -> Vec<u8> {
    let mut cfg = SynthConfig::new(SegmentSize::new(16 << 20).expect("16 MiB is a valid size"));
    cfg.segments = 1;
    cfg.random_fraction = 0.3;
    SyntheticWal::new(cfg)
        .expect("valid synthetic WAL configuration")
        .next_segment()
        .expect("one segment")
        .data
}

fn bench(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let keyring = Keyring::new(Kek::from_bytes(&[0x42; 32]).expect("32-byte key"));
    let inputs = [
        (
            "pgbench",
            include_bytes!("fixtures/pgbench-1mib.wal").to_vec(),
        ),
        ("synthetic", wal_segment()),
    ];
    for (input, wal) in &inputs {
        bench_input(c, &keyring, &rng, input, wal);
    }
}

fn bench_input(c: &mut Criterion, keyring: &Keyring, rng: &SystemRandom, input: &str, wal: &[u8]) {
    let default_chunk = SealOptions::default().chunk_size;
    let cases = [
        ("lz4+aes256gcm", Compression::Lz4, default_chunk),
        ("lz4+aes256gcm-1mib-chunks", Compression::Lz4, 1 << 20),
        (
            "zstd3+aes256gcm",
            Compression::Zstd { level: 3 },
            default_chunk,
        ),
        ("none+aes256gcm", Compression::None, default_chunk),
    ];
    for (name, compression, chunk_size) in cases {
        let opts = SealOptions {
            compression,
            chunk_size,
        };
        let object = seal(keyring, &opts, wal, rng).expect("seal");
        assert_eq!(open(keyring, &object).expect("open"), wal);
        let name = format!("{input}/{name}");
        eprintln!(
            "{name}: {} -> {} bytes, compression ratio {:.2}",
            wal.len(),
            object.len(),
            wal.len() as f64 / object.len() as f64
        );
        let mut g = c.benchmark_group(&name);
        g.throughput(Throughput::Bytes(wal.len() as u64));
        g.sample_size(10);
        g.bench_function("seal", |b| {
            b.iter(|| seal(keyring, &opts, black_box(wal), rng).expect("seal"))
        });
        g.bench_function("open", |b| {
            b.iter(|| open(keyring, black_box(&object)).expect("open"))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
