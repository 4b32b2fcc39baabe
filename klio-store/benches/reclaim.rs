//! How long retention's block reclaim takes over a large store, phase by phase: `mark` (read
//! every retained file list, look each hash up), `survey_packs` (one `stat` and header read
//! per pack), `measure` (a dry run) and `condemn` (the only phase under the index's write
//! lock, which a running backup waits for).
//!
//! The store: 2,000 packs of 512 blocks (about a million slots, what 64 GiB of distinct 64 KiB
//! blocks make), half of them referenced by one retained backup. Packs are sparse files with a
//! real header and index, so the setup writes little.
//!
//! `cargo bench -p klio-store --bench reclaim -- --warm-up-time 1 --measurement-time 5`

use std::hint::black_box;
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use klio_proto::klio::{
    BackupInfo, BackupStatus, BlockHash, CATALOG_SCHEMA, CatalogPosition, FileEntry, FileKind,
};
use klio_store::backup::{
    BackupId, BackupStore, IndexEntry, PackId, SlotSet, condemn, encode_idx, measure, survey_packs,
};
use klio_wal::Lsn;

const PACKS: u32 = 2000;
const PER_PACK: u32 = 512;

/// Writes the store; returns it (its directory lives as long as the guard).
fn store() -> (tempfile::TempDir, BackupStore, BackupId) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = BackupStore::new(dir.path(), None);
    store.prepare_for_backup().expect("a fresh store");
    let packs = store.packs_dir();
    let mut retained = Vec::new();
    for p in 0..PACKS {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&p.to_le_bytes());
        let id = PackId(id);
        let entries: Vec<IndexEntry> = (0..PER_PACK)
            .map(|i| {
                let mut hash = [0u8; 32];
                hash[..4].copy_from_slice(&p.to_le_bytes());
                hash[4..8].copy_from_slice(&i.to_le_bytes());
                IndexEntry {
                    hash: BlockHash(hash),
                    offset: 32 + u64::from(i) * 65600,
                    stored_len: 65536,
                }
            })
            .collect();
        retained.extend(entries.iter().step_by(2).map(|e| e.hash));
        std::fs::write(id.idx_path(&packs), encode_idx(id, &entries)).expect("write an index");
        // A plain pack's header (magic, version 1, CRC-32C protection, its id, no key object);
        // the records' room is sparse, never written.
        let mut header = vec![0u8; 32];
        header[..4].copy_from_slice(b"KLBP");
        header[4] = 1;
        header[8..24].copy_from_slice(&id.0);
        let crc = crc32c::crc32c(&header[..28]);
        header[28..].copy_from_slice(&crc.to_le_bytes());
        let pack = std::fs::File::create(id.pack_path(&packs)).expect("create a pack");
        pack.set_len(32 + u64::from(PER_PACK) * 65600)
            .expect("size a pack");
        std::os::unix::fs::FileExt::write_all_at(&pack, &header, 0).expect("write a header");
    }
    let id = BackupId::parse("big").expect("a backup id");
    let mut staged = store.stage(&id).expect("stage a backup");
    for (n, hashes) in retained.chunks(1024).enumerate() {
        staged
            .add_entry(&FileEntry {
                path: format!("base/5/{n}"),
                kind: FileKind::File,
                mode: 0o600,
                size: hashes.len() as u64 * 65536,
                mtime: 0,
                blocks: hashes.to_vec(),
            })
            .expect("add a file");
    }
    staged.add_manifest(b"{}").expect("add the manifest");
    let position = CatalogPosition {
        timeline: 1,
        lsn: Lsn(0x3000000),
    };
    let info = BackupInfo {
        schema: CATALOG_SCHEMA,
        id: "big".to_owned(),
        cluster: "bench".to_owned(),
        label: "bench".to_owned(),
        status: BackupStatus::Complete,
        start: position,
        end: position,
        started_at: "2026-12-01T12:00:00Z".to_owned(),
        ended_at: "2026-12-01T12:00:06Z".to_owned(),
        completed_at: "2026-12-01T12:00:06Z".to_owned(),
        postgres_version: 150010,
        system_identifier: "1".to_owned(),
        block_size: 65536,
        tablespaces: Vec::new(),
        files: 0,
        blocks: 0,
        logical_bytes: 0,
        referenced_stored_bytes: 0,
        new_stored_bytes: 0,
        pinned: false,
        capture: klio_proto::klio::CaptureMethod::Stream,
    };
    staged
        .seal()
        .expect("seal the backup")
        .publish(&info)
        .expect("publish the backup");
    (dir, store, id)
}

fn bench(c: &mut Criterion) {
    let (_dir, store, id) = store();
    let index = RwLock::new(store.open_index().expect("open the index"));
    let packs = store.packs_dir();
    let none = SlotSet::default();
    let keep = [id];
    let live = store.mark(&keep, &index).expect("mark");
    let survey = survey_packs(&index, Duration::ZERO, SystemTime::now(), &packs);
    let mut g = c.benchmark_group("reclaim_1m_slots_2000_packs");
    g.sample_size(10);
    g.bench_function("mark", |b| {
        b.iter(|| black_box(store.mark(&keep, &index).expect("mark")));
    });
    g.bench_function("survey_packs", |b| {
        b.iter(|| {
            black_box(survey_packs(
                &index,
                Duration::ZERO,
                SystemTime::now(),
                &packs,
            ))
        });
    });
    g.bench_function("measure", |b| {
        let idx = index.read().expect("the index");
        b.iter(|| black_box(measure(&idx, &live, &none, &survey)));
    });
    g.bench_function("condemn_under_the_write_lock", |b| {
        b.iter_batched(
            || store.open_index().expect("a fresh index"),
            |mut fresh| black_box(condemn(&mut fresh, &live, &none, &survey)),
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
