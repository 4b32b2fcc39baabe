//! Criterion benches for the hot paths of WAL receiving: decoding XLogData, splitting a byte
//! range at segment boundaries, writing into a segment directory, and generating synthetic WAL.
//!
//! `cargo bench --bench wal_codecs`

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use klio_proto::replication::ReplicationMessage;
use klio_wal::segment_dir::SegmentDir;
use klio_wal::synth::{SynthConfig, SyntheticWal};
use klio_wal::{Lsn, SegmentSize, TimelineId};

fn xlogdata_payload(len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(25 + len);
    b.put_u8(b'w');
    b.put_u64(0x1_0000_0000);
    b.put_u64(0x1_0000_0000 + len as u64);
    b.put_i64(0);
    b.put_bytes(0xAB, len);
    b.freeze()
}

fn decode_xlogdata(c: &mut Criterion) {
    let mut g = c.benchmark_group("xlogdata_decode");
    for len in [8 * 1024, 128 * 1024] {
        let payload = xlogdata_payload(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &payload, |b, p| {
            b.iter(|| ReplicationMessage::decode(p.clone()).expect("valid XLogData"))
        });
    }
    g.finish();
}

fn split_segments(c: &mut Criterion) {
    let size = SegmentSize::new(1 << 20).expect("1 MiB");
    c.bench_function("segment_split_64MiB_range", |b| {
        b.iter(|| size.split(Lsn(12345), 64 << 20).count())
    });
}

fn segment_dir_write(c: &mut Criterion) {
    let size = SegmentSize::new(1 << 20).expect("1 MiB");
    let chunk = vec![0x5Au8; 128 * 1024];
    let mut g = c.benchmark_group("segment_dir");
    g.throughput(Throughput::Bytes(8 << 20));
    g.sample_size(10);
    g.bench_function("write_8MiB_in_128KiB_unsynced", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("tempdir"),
            |tmp| {
                let mut dir = SegmentDir::open(tmp.path(), size).expect("open");
                let tli = TimelineId::FIRST;
                let mut pos = Lsn(1 << 20);
                for _ in 0..64 {
                    dir.write(tli, pos, &chunk).expect("write");
                    pos = Lsn(pos.0 + chunk.len() as u64);
                }
                tmp
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn synthetic_wal(c: &mut Criterion) {
    let mut g = c.benchmark_group("synthetic_wal");
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("generate_1MiB_segment", |b| {
        b.iter(|| {
            let mut cfg = SynthConfig::new(SegmentSize::new(1 << 20).expect("1 MiB"));
            cfg.segments = 1;
            SyntheticWal::new(cfg)
                .expect("config")
                .next_segment()
                .expect("a segment")
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    decode_xlogdata,
    split_segments,
    segment_dir_write,
    synthetic_wal
);
criterion_main!(benches);
