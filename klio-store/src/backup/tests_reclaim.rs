//! Block reclaim on real files: mark, condemn, sweep, crashes at every step, plain and
//! encrypted.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use klio_crypto::Keyring;
use klio_proto::klio::{Block, FileEntry};

use super::tests::{backup, block, file, formats, plain, store_blocks, without_dictionary};
use super::*;

const HOUR: Duration = Duration::from_secs(3600);

/// A store with three packs of four incompressible blocks each and one retained backup:
/// - `dead`: referenced only by a deleted backup (removed by reclaim);
/// - `half`: two blocks of the deleted backup, two retained (rewritten);
/// - `mostly_live`: one block of the deleted backup, three retained (kept as it is).
struct Fixture {
    _dir: tempfile::TempDir,
    store: BackupStore,
    dead: Vec<Block>,
    half: Vec<Block>,
    mostly_live: Vec<Block>,
    packs: [PathBuf; 3],
}

impl Fixture {
    fn new(keyring: Option<Keyring>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = BackupStore::new(dir.path(), keyring);
        let key = store.prepare_for_backup().unwrap().hash_key;
        let blocks = |from: u32| -> Vec<Block> {
            (from..from + 4)
                .map(|i| block(&key, &plain(i, false)))
                .collect()
        };
        let (dead, half, mostly_live) = (blocks(0), blocks(10), blocks(20));
        let mut packs = Vec::new();
        for blocks in [&dead, &half, &mostly_live] {
            let before: HashSet<PathBuf> = files_ending(&store, "pack").into_iter().collect();
            store_blocks(&store, blocks);
            let new: Vec<PathBuf> = files_ending(&store, "pack")
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
            assert_eq!(new.len(), 1);
            packs.push(new[0].clone());
        }
        let refs = |blocks: &[Block]| -> Vec<FileEntry> {
            blocks
                .iter()
                .enumerate()
                .map(|(i, b)| file(&format!("base/5/{}", 1000 + i), &[b]))
                .collect()
        };
        let old: Vec<Block> = dead
            .iter()
            .chain(&half[..2])
            .chain(&mostly_live[3..])
            .cloned()
            .collect();
        let kept: Vec<Block> = half[2..].iter().chain(&mostly_live[..3]).cloned().collect();
        backup(&store, "old", 0x3000000, &refs(&old));
        backup(&store, "keep", 0x4000000, &refs(&kept));
        store.delete(&BackupId::parse("old").unwrap()).unwrap();
        Self {
            _dir: dir,
            store,
            dead,
            half,
            mostly_live,
            packs: [packs[0].clone(), packs[1].clone(), packs[2].clone()],
        }
    }

    fn index(&self) -> RwLock<BlockIndex> {
        RwLock::new(self.store.open_index().unwrap())
    }

    /// Blocks no retained backup refers to that reclaim removes from disk.
    fn removed_blocks(&self) -> impl Iterator<Item = &Block> {
        self.dead.iter().chain(&self.half[..2])
    }

    fn all_blocks(&self) -> impl Iterator<Item = &Block> {
        self.dead.iter().chain(&self.half).chain(&self.mostly_live)
    }
}

fn files_ending(store: &BackupStore, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(store.packs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

fn keep() -> Vec<BackupId> {
    vec![BackupId::parse("keep").unwrap()]
}

/// Mark, condemn and sweep with `claimed`, `grace` and `now`; `step` hears the sweep's steps.
/// What condemn planned and what the sweep did.
fn reclaim(
    store: &BackupStore,
    index: &RwLock<BlockIndex>,
    claimed: &SlotSet,
    grace: Duration,
    now: SystemTime,
    step: &mut dyn FnMut(SweepStep) -> ControlFlow<()>,
) -> (ReclaimSummary, ReclaimSummary) {
    let live = store.mark(&keep(), index).unwrap();
    let survey = survey_packs(index, grace, now, &store.packs_dir());
    let condemned = condemn(&mut index.write().unwrap(), &live, claimed, &survey);
    let planned = condemned.planned();
    let done = sweep(
        store,
        condemned,
        &mut |pack, moved| index.write().unwrap().relocate(pack, moved),
        step,
    )
    .unwrap();
    (planned, done)
}

fn reclaim_all(
    store: &BackupStore,
    index: &RwLock<BlockIndex>,
) -> (ReclaimSummary, ReclaimSummary) {
    reclaim(
        store,
        index,
        &SlotSet::default(),
        Duration::ZERO,
        SystemTime::now(),
        &mut |_| ControlFlow::Continue(()),
    )
}

/// What a dry run reports for the store as it is on disk now.
fn measure_now(store: &BackupStore) -> ReclaimSummary {
    let index = RwLock::new(store.open_index().unwrap());
    let live = store.mark(&keep(), &index).unwrap();
    let survey = survey_packs(
        &index,
        Duration::ZERO,
        SystemTime::now(),
        &store.packs_dir(),
    );
    measure(&index.read().unwrap(), &live, &SlotSet::default(), &survey)
}

fn assert_kept_backup_verifies(store: &BackupStore, index: &RwLock<BlockIndex>) {
    let outcome = store
        .verify(index, &keep()[0], &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(matches!(outcome, VerifyOutcome::Verified(_)), "{outcome:?}");
}

#[test]
fn reclaim_removes_a_dead_pack_rewrites_a_half_dead_one_and_keeps_a_mostly_live_one() {
    for keyring in formats() {
        let f = Fixture::new(keyring);
        let index = f.index();
        let (planned, done) = reclaim_all(&f.store, &index);
        assert_eq!(
            done,
            ReclaimSummary {
                blocks: 6,
                bytes: done.bytes,
                packs_removed: 1,
                packs_rewritten: 1,
            }
        );
        assert!(done.bytes > 6 * 65536, "{done:?}");
        assert_eq!(planned, done, "condemn foresees what the sweep frees");
        let [dead, half, mostly_live] = &f.packs;
        assert!(!dead.exists() && !dead.with_extension("idx").exists());
        assert!(!half.exists() && !half.with_extension("idx").exists());
        assert!(mostly_live.exists() && mostly_live.with_extension("idx").exists());
        assert_eq!(
            files_ending(&f.store, "pack").len(),
            2,
            "the kept pack and the rewrite"
        );
        assert!(files_ending(&f.store, "dead").is_empty());
        // The live index and a fresh one both serve every retained block, and forget the rest.
        assert_kept_backup_verifies(&f.store, &index);
        assert_kept_backup_verifies(&f.store, &f.index());
        let idx = index.read().unwrap();
        for b in f.removed_blocks().chain(&f.mostly_live[3..]) {
            assert!(!idx.contains(&b.hash));
        }
        assert_eq!(idx.len(), 5);
        drop(idx);
        assert_eq!(
            measure_now(&f.store),
            ReclaimSummary::default(),
            "nothing left to do"
        );
    }
}

#[test]
fn a_dry_run_measures_exactly_what_reclaim_then_frees_and_forgets_nothing() {
    for keyring in formats() {
        let f = Fixture::new(keyring);
        let index = f.index();
        let live = f.store.mark(&keep(), &index).unwrap();
        let survey = survey_packs(
            &index,
            Duration::ZERO,
            SystemTime::now(),
            &f.store.packs_dir(),
        );
        let dry = measure(&index.read().unwrap(), &live, &SlotSet::default(), &survey);
        assert_eq!(index.read().unwrap().len(), 12, "a dry run forgets nothing");
        assert_eq!(files_ending(&f.store, "pack").len(), 3);
        let (_, done) = reclaim_all(&f.store, &index);
        assert_eq!(dry, done);
        assert_ne!(dry, ReclaimSummary::default());
    }
}

#[test]
fn a_claimed_slot_survives_reclaim() {
    let f = Fixture::new(None);
    let index = f.index();
    let claimed_block = &f.dead[0];
    let mut claimed = SlotSet::default();
    claimed.insert(index.read().unwrap().slot_of(&claimed_block.hash).unwrap());
    let (_, done) = reclaim(
        &f.store,
        &index,
        &claimed,
        Duration::ZERO,
        SystemTime::now(),
        &mut |_| ControlFlow::Continue(()),
    );
    // Its pack is rewritten around it instead of removed.
    assert_eq!((done.packs_removed, done.packs_rewritten), (0, 2));
    for idx in [index, f.index()] {
        let idx = idx.into_inner().unwrap();
        assert!(idx.contains(&claimed_block.hash));
        assert_eq!(
            &f.store
                .block_reader()
                .read(&idx, &claimed_block.hash)
                .unwrap(),
            claimed_block
        );
        assert!(!idx.contains(&f.dead[1].hash));
    }
}

#[test]
fn the_grace_period_protects_a_fresh_pack() {
    let f = Fixture::new(None);
    let index = f.index();
    let now = SystemTime::now();
    let (planned, done) = reclaim(
        &f.store,
        &index,
        &SlotSet::default(),
        HOUR,
        now,
        &mut |_| ControlFlow::Continue(()),
    );
    assert_eq!((planned, done), Default::default());
    let idx = index.read().unwrap();
    assert!(
        f.all_blocks().all(|b| idx.contains(&b.hash)),
        "nothing forgotten"
    );
    drop(idx);
    assert_eq!(files_ending(&f.store, "pack").len(), 3);
    // Once the packs are older than the grace period, they are reclaimed.
    let (_, done) = reclaim(
        &f.store,
        &index,
        &SlotSet::default(),
        HOUR,
        now + 2 * HOUR,
        &mut |_| ControlFlow::Continue(()),
    );
    assert_eq!((done.packs_removed, done.packs_rewritten), (1, 1));
    assert_kept_backup_verifies(&f.store, &index);
}

#[test]
fn a_crash_at_every_sweep_step_leaves_every_kept_backup_whole_and_the_next_sweep_finishes() {
    for keyring in formats() {
        let mut seen_steps = Vec::new();
        for crash_at in 0usize.. {
            let f = Fixture::new(keyring.clone());
            let index = f.index();
            let mut steps = 0usize;
            let mut last = None;
            reclaim(
                &f.store,
                &index,
                &SlotSet::default(),
                Duration::ZERO,
                SystemTime::now(),
                &mut |step| {
                    steps += 1;
                    last = Some(step);
                    if steps > crash_at {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            );
            if steps <= crash_at {
                // The sweep ran to its end before the crash point: every step was crashed at.
                assert_eq!(crash_at, seen_steps.len());
                break;
            }
            seen_steps.push(last);
            // The process is gone: what is on disk is all there is.
            drop(index);
            let index = f.index();
            assert!(
                files_ending(&f.store, "dead").is_empty(),
                "after step {last:?}"
            );
            assert_kept_backup_verifies(&f.store, &index);
            reclaim_all(&f.store, &index);
            assert_kept_backup_verifies(&f.store, &index);
            assert!(files_ending(&f.store, "dead").is_empty());
            assert_eq!(
                measure_now(&f.store),
                ReclaimSummary::default(),
                "after step {last:?}"
            );
            let fresh = f.store.open_index().unwrap();
            for b in f.removed_blocks() {
                assert!(!fresh.contains(&b.hash), "after step {last:?}");
            }
            assert_eq!(files_ending(&f.store, "pack").len(), 2);
            assert_kept_backup_verifies(&f.store, &RwLock::new(fresh));
        }
        // The removal (retired, removed), then the rewrite (rewritten, retired, removed).
        let kinds: Vec<_> = seen_steps
            .iter()
            .map(|s| match s {
                Some(SweepStep::PackRewritten { .. }) => "rewritten",
                Some(SweepStep::PackRetired { .. }) => "retired",
                Some(SweepStep::PackRemoved { .. }) => "removed",
                None => "none",
            })
            .collect();
        assert_eq!(
            kinds,
            ["retired", "removed", "rewritten", "retired", "removed"]
        );
    }
}

#[test]
fn a_rewrite_cut_short_before_its_index_is_recovered_by_open_index_and_reclaimed() {
    for keyring in formats() {
        let f = Fixture::new(keyring);
        // A rewrite that died after copying the live blocks, before closing its pack.
        let key = f.store.prepare_for_backup().unwrap().hash_key;
        let empty = BlockIndex::default();
        let mut writer = f.store.block_writer(without_dictionary(&key));
        for b in &f.half[2..] {
            assert!(matches!(writer.put(&empty, b).unwrap(), Put::Stored));
        }
        std::mem::forget(writer);
        assert_eq!(files_ending(&f.store, "pack").len(), 4);
        assert_eq!(files_ending(&f.store, "idx").len(), 3);
        // A backup session leaves it alone (a sweep might be writing it); opening the index
        // recovers it.
        f.store.prepare_for_backup().unwrap();
        assert_eq!(files_ending(&f.store, "idx").len(), 3);
        let index = f.index();
        assert_eq!(files_ending(&f.store, "idx").len(), 4);
        assert_kept_backup_verifies(&f.store, &index);
        reclaim_all(&f.store, &index);
        assert_kept_backup_verifies(&f.store, &index);
        assert_kept_backup_verifies(&f.store, &f.index());
        assert_eq!(measure_now(&f.store), ReclaimSummary::default());
        assert_eq!(files_ending(&f.store, "pack").len(), 2);
    }
}

#[test]
fn slots_stay_stable_across_forgetting_and_relocation() {
    let f = Fixture::new(None);
    let index = f.index();
    let slots_before: Vec<Option<u32>> = {
        let idx = index.read().unwrap();
        f.all_blocks().map(|b| idx.slot_of(&b.hash)).collect()
    };
    assert_eq!(index.read().unwrap().slot_count(), 12);
    reclaim_all(&f.store, &index);
    let idx = index.read().unwrap();
    assert_eq!(idx.slot_count(), 12, "tombstones keep their slots");
    for (b, before) in f.all_blocks().zip(slots_before) {
        if let Some(now) = idx.slot_of(&b.hash) {
            assert_eq!(Some(now), before, "a relocated block keeps its slot");
        }
    }
    // A pack added afterwards gets the slots after the tombstones.
    drop(idx);
    let key = f.store.prepare_for_backup().unwrap().hash_key;
    let mut writer = f.store.block_writer(without_dictionary(&key));
    let fresh = block(&key, &plain(99, false));
    let _ = writer.put(&index.read().unwrap(), &fresh).unwrap();
    let pack = writer.close().unwrap().unwrap();
    let added = index.write().unwrap().insert(pack);
    assert_eq!(added, 12..13);
    assert_eq!(index.read().unwrap().slot_of(&fresh.hash), Some(12));
}

#[test]
fn packs_left_alone_are_neither_removed_nor_rewritten_and_keep_their_blocks() {
    let f = Fixture::new(None);
    let index = f.index();
    let live = f.store.mark(&keep(), &index).unwrap();
    let mut survey = survey_packs(
        &index,
        Duration::ZERO,
        SystemTime::now(),
        &f.store.packs_dir(),
    );
    // As the Tier 2 clamp does: every pack not yet relayed (here: all of them) stays.
    survey.leave_alone(|_| true);
    let condemned = condemn(
        &mut index.write().unwrap(),
        &live,
        &SlotSet::default(),
        &survey,
    );
    assert!(condemned.is_empty(), "{:?}", condemned.planned());
    let done = sweep(
        &f.store,
        condemned,
        &mut |pack, moved| index.write().unwrap().relocate(pack, moved),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(done, ReclaimSummary::default());
    let idx = index.read().unwrap();
    assert!(
        f.all_blocks().all(|b| idx.contains(&b.hash)),
        "nothing forgotten"
    );
    drop(idx);
    assert!(f.packs.iter().all(|p| p.is_file()));
    // Once relayed, the same packs are reclaimed.
    let (_, done) = reclaim_all(&f.store, &index);
    assert_eq!((done.packs_removed, done.packs_rewritten), (1, 1));
    assert_kept_backup_verifies(&f.store, &index);
}
