//! The backup store on real files in temporary directories, plain and encrypted.

use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use klio_crypto::{BlockHashAlgorithm, BlockHashKey, Kek, Keyring};
use klio_proto::klio::{
    BackupInfo, BackupStatus, Block, BlockCompression, BlockHash, CATALOG_SCHEMA,
    DICTIONARY_SAMPLE_LEN, DICTIONARY_SAMPLES, FileEntry, FileKind,
};
use klio_wal::{Lsn, SegmentSize, TimelineId, WalPosition};

use super::*;
use crate::wal_archive::{ClusterIdentity, WalArchive, WalArchiveReader};

pub(super) fn ring(seed: u8) -> Keyring {
    Keyring::new(Kek::from_bytes(&[seed; 32]).unwrap())
}

/// Both ways a server stores backups.
pub(super) fn formats() -> [Option<Keyring>; 2] {
    [None, Some(ring(1))]
}

pub(super) fn block(key: &BlockHashKey, plain: &[u8]) -> Block {
    let compressed = lz4_flex::block::compress(plain);
    let (compression, data) = if compressed.len() < plain.len() {
        (BlockCompression::Lz4, compressed)
    } else {
        (BlockCompression::None, plain.to_vec())
    };
    Block {
        hash: BlockHash(key.hash(plain)),
        plain_len: plain.len() as u32,
        compression,
        data: Bytes::from(data),
    }
}

/// The coding of a cluster with block-hash key `key` and no dictionary.
pub(super) fn without_dictionary(key: &BlockHashKey) -> BlockCoding {
    BlockCoding {
        hash_key: key.clone(),
        dictionary: None,
    }
}

/// A 64 KiB block that compresses (repeated text with a seed) or not (pseudo-random).
pub(super) fn plain(seed: u32, compressible: bool) -> Vec<u8> {
    if compressible {
        format!("page {seed} ").repeat(20000).into_bytes()[..65536].to_vec()
    } else {
        let mut x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}

/// Stores `blocks` in a session and closes its pack; returns the index (opened as the server
/// opens it, recovering packs without index).
pub(super) fn store_blocks(store: &BackupStore, blocks: &[Block]) -> BlockIndex {
    let key = store.prepare_for_backup().unwrap().hash_key;
    let mut index = store.open_index().unwrap();
    let mut writer = store.block_writer(without_dictionary(&key));
    for b in blocks {
        if let Put::StoredAndClosed(p) = writer.put(&index, b).unwrap() {
            index.insert(p);
        }
    }
    if let Some(p) = writer.close().unwrap() {
        index.insert(p);
    }
    index
}

pub(super) fn info(id: &str, end: u64, completed_at: &str) -> BackupInfo {
    BackupInfo {
        schema: CATALOG_SCHEMA,
        id: id.to_owned(),
        cluster: "pg-main".to_owned(),
        label: "test".to_owned(),
        status: BackupStatus::Complete,
        start: WalPosition::new(TimelineId::FIRST, Lsn(end - 0x100)).into(),
        end: WalPosition::new(TimelineId::FIRST, Lsn(end)).into(),
        started_at: "2026-12-01T12:00:00Z".to_owned(),
        ended_at: "2026-12-01T12:00:05Z".to_owned(),
        completed_at: completed_at.to_owned(),
        postgres_version: 150010,
        system_identifier: "7400000000000000001".to_owned(),
        block_size: 65536,
        tablespaces: Vec::new(),
        files: 0,
        blocks: 0,
        logical_bytes: 0,
        referenced_stored_bytes: 0,
        new_stored_bytes: 0,
        pinned: false,
        capture: klio_proto::klio::CaptureMethod::Stream,
    }
}

pub(super) fn file(path: &str, blocks: &[&Block]) -> FileEntry {
    FileEntry {
        path: path.to_owned(),
        kind: FileKind::File,
        mode: 0o600,
        size: blocks.iter().map(|b| u64::from(b.plain_len)).sum(),
        mtime: 1_700_000_000,
        blocks: blocks.iter().map(|b| b.hash).collect(),
    }
}

/// Writes and publishes a backup of `entries` with the given end LSN.
pub(super) fn backup(store: &BackupStore, id: &str, end: u64, entries: &[FileEntry]) {
    let id = BackupId::parse(id).unwrap();
    let mut staged = store.stage(&id).unwrap();
    for e in entries {
        staged.add_entry(e).unwrap();
    }
    staged
        .add_manifest(b"{ \"PostgreSQL-Backup-Manifest-Version\": 1 }")
        .unwrap();
    let sealed = staged.seal().unwrap();
    let t = sealed.totals();
    let mut i = info(id.as_str(), end, "2026-12-01T12:00:06Z");
    (i.files, i.blocks, i.logical_bytes) = (t.files, t.blocks, t.logical_bytes);
    sealed.publish(&i).unwrap();
}

fn only_pack(store: &BackupStore) -> PathBuf {
    let packs: Vec<_> = std::fs::read_dir(store.packs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    packs[0].clone()
}

#[test]
fn blocks_round_trip_plain_and_encrypted() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring.clone());
        let key = store.prepare_for_backup().unwrap().hash_key;
        let blocks: Vec<Block> = (0..10)
            .map(|i| block(&key, &plain(i, i % 2 == 0)))
            .collect();
        let index = store_blocks(&store, &blocks);
        assert_eq!(index.len(), 10);
        // A fresh index from the .idx files finds the same blocks.
        let reloaded = store.load_index().unwrap();
        let mut reader = store.block_reader();
        for (i, b) in blocks.iter().enumerate() {
            let got = reader.read(&reloaded, &b.hash).unwrap();
            assert_eq!(&got, b, "block {i}");
            assert_eq!(
                check_block(&without_dictionary(&key), &got).unwrap(),
                plain(i as u32, i % 2 == 0)
            );
        }
        let pack = std::fs::read(only_pack(&store)).unwrap();
        let text = plain(0, true);
        let compressed = &blocks[0].data;
        let contains = |needle: &[u8]| pack.windows(needle.len()).any(|w| w == needle);
        match keyring {
            // Stored as the client compressed it, CRC-protected.
            None => assert!(contains(compressed)),
            // Nothing of a block is on disk in the clear, compressed or not.
            Some(_) => {
                assert!(!contains(&compressed[..64]));
                assert!(!contains(&text[..64]));
            }
        }
    }
}

#[test]
fn a_block_that_does_not_match_its_hash_is_refused_and_not_stored() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    let key = store.prepare_for_backup().unwrap().hash_key;
    let index = store.load_index().unwrap();
    let mut writer = store.block_writer(without_dictionary(&key));
    let mut bad = block(&key, &plain(1, true));
    bad.hash = BlockHash(key.hash(b"something else"));
    let err = writer.put(&index, &bad).unwrap_err();
    assert!(
        matches!(
            err,
            BackupStoreError::RefusedBlock {
                problem: BlockProblem::HashMismatch,
                ..
            }
        ),
        "{err}"
    );
    let mut short = block(&key, &plain(2, true));
    short.plain_len -= 1;
    assert!(matches!(
        writer.put(&index, &short),
        Err(BackupStoreError::RefusedBlock { .. })
    ));
    assert!(!writer.holds(&index, &bad.hash));
    assert!(
        writer.close().unwrap().is_none(),
        "no pack for refused blocks"
    );
}

#[test]
fn a_block_compressed_against_a_dictionary_the_cluster_lacks_is_refused_and_not_stored() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    let key = store.prepare_for_backup().unwrap().hash_key;
    let index = store.load_index().unwrap();
    let mut writer = store.block_writer(without_dictionary(&key));
    let text = plain(3, true);
    let dictionary = BlockDictionary::new(Bytes::from(text[..4096].to_vec())).unwrap();
    let against =
        Block::compress_against(BlockHash(key.hash(&text)), Bytes::from(text), &dictionary);
    assert_eq!(against.compression, BlockCompression::Lz4Dictionary);
    let err = writer.put(&index, &against).unwrap_err();
    assert!(
        matches!(
            err,
            BackupStoreError::RefusedBlock {
                problem: BlockProblem::NeedsDictionary,
                ..
            }
        ),
        "{err}"
    );
    assert!(!writer.holds(&index, &against.hash));
    assert!(
        writer.close().unwrap().is_none(),
        "no pack for a refused block"
    );
}

#[test]
fn the_first_backup_with_enough_blocks_leaves_a_dictionary_that_is_never_replaced() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring.clone());
        let coding = store.prepare_for_backup().unwrap();
        assert_eq!(coding.dictionary, None, "a new cluster has no dictionary");
        let key = coding.hash_key.clone();
        let index = store.load_index().unwrap();
        let mut writer = store.block_writer(coding);
        for seed in 0..40 {
            let put = writer
                .put(&index, &block(&key, &plain(seed, true)))
                .unwrap();
            assert!(!matches!(put, Put::Held));
        }
        writer.close().unwrap();
        let sampled = writer
            .sampled_dictionary()
            .expect("40 full blocks are enough");
        assert_eq!(
            sampled.as_bytes().len(),
            DICTIONARY_SAMPLES * DICTIONARY_SAMPLE_LEN
        );
        let kept = store.keep_dictionary(sampled.clone()).unwrap();
        assert_eq!(kept, sampled);

        // It survives a reopen, later sessions get it, and a later offer does not replace it.
        let again = BackupStore::new(d.path(), keyring.clone());
        let coding = again.prepare_for_backup().unwrap();
        assert_eq!(coding.dictionary.as_ref(), Some(&sampled));
        let other = BlockDictionary::new(Bytes::from_static(b"another dictionary")).unwrap();
        assert_eq!(again.keep_dictionary(other).unwrap(), sampled);
        assert_eq!(again.read_dictionary().unwrap(), Some(sampled.clone()));

        // Blocks compressed against it are stored, read back and checked with it; a writer
        // of a cluster that has one samples nothing.
        let text = plain(77, true);
        let against = Block::compress_against(
            BlockHash(key.hash(&text)),
            Bytes::from(text.clone()),
            &sampled,
        );
        assert_eq!(against.compression, BlockCompression::Lz4Dictionary);
        let mut writer = again.block_writer(coding.clone());
        assert!(matches!(writer.put(&index, &against).unwrap(), Put::Stored));
        let pack = writer.close().unwrap().unwrap();
        assert_eq!(writer.sampled_dictionary(), None);
        let mut index = again.load_index().unwrap();
        index.insert(pack);
        let read = again.block_reader().read(&index, &against.hash).unwrap();
        assert_eq!(
            check_block(&again.block_coding().unwrap(), &read).unwrap(),
            text
        );

        // A damaged dictionary is an error, never replaced.
        let path = d.path().join(DICTIONARY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(again.read_dictionary().is_err());
        assert!(again.prepare_for_backup().is_err());
        assert!(again.keep_dictionary(sampled.clone()).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it was");
    }
}

#[test]
fn a_backup_of_too_few_full_blocks_leaves_no_dictionary() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    let coding = store.prepare_for_backup().unwrap();
    let key = coding.hash_key.clone();
    let index = store.load_index().unwrap();
    let mut writer = store.block_writer(coding);
    for seed in 0..(DICTIONARY_SAMPLES as u32 - 1) {
        let put = writer
            .put(&index, &block(&key, &plain(seed, true)))
            .unwrap();
        assert!(matches!(put, Put::Stored));
    }
    let tail = block(&key, &plain(99, true)[..1000]);
    assert!(matches!(writer.put(&index, &tail).unwrap(), Put::Stored));
    writer.close().unwrap();
    assert_eq!(writer.sampled_dictionary(), None);
}

#[test]
fn a_flipped_byte_in_a_pack_is_an_error_naming_the_pack_and_the_block() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring);
        let key = store.prepare_for_backup().unwrap().hash_key;
        let blocks: Vec<Block> = (0..3).map(|i| block(&key, &plain(i, false))).collect();
        let index = store_blocks(&store, &blocks);
        let pack = only_pack(&store);
        let location = index.get(&blocks[1].hash).unwrap();
        // A byte inside the second block's data.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&pack)
            .unwrap();
        let at = location.offset + 60 + 1000;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
        let mut reader = store.block_reader();
        let err = reader.read(&index, &blocks[1].hash).unwrap_err();
        let BackupStoreError::DamagedBlock {
            pack: named, hash, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(named, &pack);
        assert_eq!(hash, &blocks[1].hash);
        let text = err.to_string();
        assert!(text.contains(&blocks[1].hash.to_string()), "{text}");
        assert!(
            text.contains(pack.file_name().unwrap().to_str().unwrap()),
            "{text}"
        );
        // Its neighbours still read.
        reader.read(&index, &blocks[0].hash).unwrap();
        reader.read(&index, &blocks[2].hash).unwrap();
    }
}

#[test]
fn a_torn_pack_is_recovered_to_its_valid_records_and_the_rest_is_put_again() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring);
        let key = store.prepare_for_backup().unwrap().hash_key;
        let blocks: Vec<Block> = (0..4).map(|i| block(&key, &plain(i, false))).collect();
        // A session that dies (kill -9) with its pack open: no close, no index.
        let index = store.load_index().unwrap();
        let mut writer = store.block_writer(without_dictionary(&key));
        for b in &blocks {
            assert!(matches!(writer.put(&index, b).unwrap(), Put::Stored));
        }
        std::mem::forget(writer);
        let pack = only_pack(&store);
        assert!(!pack.with_extension("idx").exists());
        // The last record is torn in the middle.
        let len = std::fs::metadata(&pack).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&pack)
            .unwrap()
            .set_len(len - 3000)
            .unwrap();
        // Opening the index recovers the three whole blocks; the next session stores the fourth
        // again.
        let index = store_blocks(&store, &blocks);
        assert!(pack.with_extension("idx").exists());
        assert_eq!(index.len(), 4);
        let mut reader = store.block_reader();
        let reloaded = store.load_index().unwrap();
        for b in &blocks {
            assert_eq!(&reader.read(&reloaded, &b.hash).unwrap(), b);
        }
        // The torn pack now ends after its third record.
        assert!(std::fs::metadata(&pack).unwrap().len() < len - 3000);
    }
}

#[test]
fn the_block_hash_key_survives_reopen_and_is_never_regenerated() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring.clone());
        let key = store.prepare_for_backup().unwrap().hash_key;
        let again = BackupStore::new(d.path(), keyring.clone());
        assert_eq!(again.prepare_for_backup().unwrap().hash_key, key);
        assert_eq!(again.read_hash_key().unwrap(), Some(key));
        // A damaged key is an error, and stays as it is.
        let path = d.path().join("block-hash-key");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(again.prepare_for_backup().is_err());
        assert!(again.read_hash_key().is_err());
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "never regenerated");
    }
}

#[test]
fn new_keys_are_blake3_and_a_key_written_before_the_choice_is_hmac_sha256() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring.clone());
        let key = store.prepare_for_backup().unwrap().hash_key;
        assert_eq!(key.algorithm(), BlockHashAlgorithm::Blake3);

        // A key object as written before there was a choice: 32 bytes, nothing after.
        let path = d.path().join("block-hash-key");
        let legacy = object::encode(
            keyring.as_ref(),
            ObjectKind::HashKey,
            "",
            &[4u8; 32],
            &SystemRandom::new(),
            &path,
        )
        .unwrap();
        std::fs::write(&path, &legacy).unwrap();
        let old = BackupStore::new(d.path(), keyring.clone())
            .prepare_for_backup()
            .unwrap()
            .hash_key;
        assert_eq!(
            old,
            BlockHashKey::new(BlockHashAlgorithm::HmacSha256, [4; 32])
        );
        // Its blocks go on being named as before.
        let b = block(&old, &plain(2, true));
        let index = store_blocks(&store, std::slice::from_ref(&b));
        assert_eq!(&store.block_reader().read(&index, &b.hash).unwrap(), &b);

        // An algorithm this version does not know is damage, never a guess.
        let unknown = object::encode(
            keyring.as_ref(),
            ObjectKind::HashKey,
            "",
            &[[4u8; 32].as_slice(), &[9]].concat(),
            &SystemRandom::new(),
            &path,
        )
        .unwrap();
        std::fs::write(&path, &unknown).unwrap();
        let err = store.read_hash_key().unwrap_err();
        assert!(
            klio_wal::ErrorChain(&err)
                .to_string()
                .contains("hash algorithm"),
            "{err}"
        );
    }
}

#[test]
fn a_wrong_keyring_fails_clearly() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), Some(ring(1)));
    let key = store.prepare_for_backup().unwrap().hash_key;
    let b = block(&key, &plain(1, true));
    let index = store_blocks(&store, std::slice::from_ref(&b));
    backup(&store, "b1", 0x3000000, &[file("base/1/1259", &[&b])]);

    let wrong = BackupStore::new(d.path(), Some(ring(2)));
    let err = wrong.read_hash_key().unwrap_err();
    let chain = klio_wal::ErrorChain(&err).to_string();
    assert!(chain.contains("block-hash-key"), "{chain}");
    assert!(chain.contains("not in the keyring"), "{chain}");
    let err = wrong.block_reader().read(&index, &b.hash).unwrap_err();
    let chain = klio_wal::ErrorChain(&err).to_string();
    assert!(
        chain.contains(".pack") && chain.contains("not in the keyring"),
        "{chain}"
    );
    let err = wrong.list().unwrap_err();
    assert!(
        klio_wal::ErrorChain(&err)
            .to_string()
            .contains("entry.json")
    );

    let plain_server = BackupStore::new(d.path(), None);
    let err = plain_server.read_hash_key().unwrap_err();
    assert!(matches!(err, BackupStoreError::Encrypted { .. }), "{err}");
}

#[test]
fn a_backup_appears_in_the_catalog_atomically_and_staging_leftovers_are_cleaned() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring);
        let key = store.prepare_for_backup().unwrap().hash_key;
        let b = block(&key, &plain(7, true));
        store_blocks(&store, std::slice::from_ref(&b));
        // Staged and sealed, but the session dies before publishing.
        let id = BackupId::parse("20261201T120000Z-0001").unwrap();
        let mut staged = store.stage(&id).unwrap();
        staged.add_entry(&file("PG_VERSION", &[&b])).unwrap();
        let sealed = staged.seal().unwrap();
        std::mem::forget(sealed);
        assert!(d.path().join("staging").join(id.as_str()).is_dir());
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.entry(&id),
            Err(BackupStoreError::NoSuchBackup { .. })
        ));
        // The next session removes it, and a complete one is listed.
        store.prepare_for_backup().unwrap();
        assert!(!d.path().join("staging").join(id.as_str()).exists());
        backup(&store, id.as_str(), 0x3000000, &[file("PG_VERSION", &[&b])]);
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].files, listed[0].blocks), (1, 1));
        // An abandoned one leaves nothing.
        let other = BackupId::parse("20261201T130000Z-0002").unwrap();
        let staged = store.stage(&other).unwrap();
        staged.abandon().unwrap();
        assert!(!d.path().join("staging").join(other.as_str()).exists());
        assert_eq!(store.list().unwrap().len(), 1);
    }
}

#[test]
fn the_file_list_and_manifest_read_back_in_order() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring);
        let key = store.prepare_for_backup().unwrap().hash_key;
        let blocks: Vec<Block> = (0..3).map(|i| block(&key, &plain(i, true))).collect();
        let index = store_blocks(&store, &blocks);
        let id = BackupId::parse("b1").unwrap();
        let mut staged = store.stage(&id).unwrap();
        let dir = FileEntry {
            path: "pg_wal".to_owned(),
            kind: FileKind::Directory,
            mode: 0o700,
            size: 0,
            mtime: 5,
            blocks: Vec::new(),
        };
        let link = FileEntry {
            path: "pg_tblspc/16385".to_owned(),
            kind: FileKind::Symlink {
                target: "/srv/ts1".to_owned(),
            },
            ..dir.clone()
        };
        let big = file("base/1/16384", &[&blocks[0], &blocks[1]]);
        staged.add_entry(&dir).unwrap();
        staged.add_entry(&big).unwrap();
        // A continuation repeating a block: references count twice, stored bytes once.
        staged
            .add_blocks(&[blocks[2].hash, blocks[0].hash])
            .unwrap();
        staged.add_entry(&link).unwrap();
        let err = staged.add_blocks(&[blocks[0].hash]).unwrap_err();
        assert!(matches!(
            err,
            BackupStoreError::InvalidFileList {
                problem: FileListProblem::BlocksWithoutFile,
                ..
            }
        ));
        for bad in ["", "/etc/passwd", "base/../../x", "a//b", "./a"] {
            assert!(staged.add_entry(&file(bad, &[])).is_err(), "{bad:?}");
        }
        let manifest: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in manifest.chunks(100_000) {
            staged.add_manifest(chunk).unwrap();
        }
        let sealed = staged.seal().unwrap();
        assert_eq!(sealed.totals().files, 3);
        assert_eq!(sealed.totals().blocks, 4);
        let referenced = sealed.referenced_stored_bytes(&index).unwrap();
        let distinct: u64 = blocks.iter().map(|b| b.data.len() as u64).sum();
        assert_eq!(referenced, distinct);
        sealed.publish(&info("b1", 0x3000000, "x")).unwrap();

        let mut list = store.file_list(&id).unwrap();
        let mut items = Vec::new();
        while let Some(item) = list.next_item().unwrap() {
            items.push(item);
        }
        assert_eq!(
            items,
            vec![
                FileListItem::Entry(dir.clone()),
                FileListItem::Entry(big.clone()),
                FileListItem::Blocks(vec![blocks[2].hash, blocks[0].hash]),
                FileListItem::Entry(link.clone()),
            ]
        );
        let mut reader = store.manifest(&id).unwrap();
        let mut back = Vec::new();
        while let Some(chunk) = reader.next_chunk(1 << 20).unwrap() {
            back.extend(chunk);
        }
        assert_eq!(back, manifest);
    }
}

#[test]
fn a_catalog_file_moved_to_another_backup_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    store.prepare_for_backup().unwrap();
    backup(&store, "b1", 0x3000000, &[]);
    backup(&store, "b2", 0x4000000, &[]);
    let catalog = d.path().join("catalog");
    std::fs::copy(catalog.join("b1/files"), catalog.join("b2/files")).unwrap();
    let err = store
        .file_list(&BackupId::parse("b2").unwrap())
        .unwrap_err();
    assert!(
        matches!(
            err,
            BackupStoreError::DamagedFile {
                reason: ObjectDamage::OtherObject,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn the_list_is_ordered_by_end_position_then_completion_not_by_id() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    store.prepare_for_backup().unwrap();
    for (id, end) in [
        ("a-late", 0x9000000),
        ("z-early", 0x2000000),
        ("m-mid", 0x5000000),
    ] {
        backup(&store, id, end, &[]);
    }
    let ids: Vec<String> = store.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, ["z-early", "m-mid", "a-late"]);
}

#[test]
fn delete_removes_the_entry_only() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), Some(ring(1)));
    let key = store.prepare_for_backup().unwrap().hash_key;
    let b = block(&key, &plain(3, true));
    let index = store_blocks(&store, std::slice::from_ref(&b));
    backup(&store, "b1", 0x3000000, &[file("PG_VERSION", &[&b])]);
    backup(&store, "b2", 0x4000000, &[file("PG_VERSION", &[&b])]);
    let id = BackupId::parse("b1").unwrap();
    assert_eq!(store.delete(&id).unwrap().id, "b1");
    let ids: Vec<String> = store.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, ["b2"]);
    assert!(matches!(
        store.delete(&id),
        Err(BackupStoreError::NoSuchBackup { .. })
    ));
    // The blocks stay, for the other backup and for retention.
    assert_eq!(store.block_reader().read(&index, &b.hash).unwrap(), b);
    assert!(
        std::fs::read_dir(d.path().join("deleted"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn verify_reads_every_block_and_names_the_backup_file_and_block_it_fails_on() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring);
        let key = store.prepare_for_backup().unwrap().hash_key;
        let blocks: Vec<Block> = (0..4).map(|i| block(&key, &plain(i, false))).collect();
        let index = store_blocks(&store, &blocks);
        backup(
            &store,
            "b1",
            0x3000000,
            &[
                file("global/pg_control", &[&blocks[0]]),
                file("base/5/2619", &[&blocks[1], &blocks[2], &blocks[3]]),
            ],
        );
        let id = BackupId::parse("b1").unwrap();
        let index = std::sync::RwLock::new(index);
        let mut seen = Vec::new();
        let outcome = store
            .verify(&index, &id, &mut |p| {
                seen.push((p.done, p.total));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(matches!(outcome, VerifyOutcome::Verified(i) if i.id == "b1"));
        assert_eq!(seen.len(), 4);
        let stopped = store
            .verify(&index, &id, &mut |_| ControlFlow::Break(()))
            .unwrap();
        assert_eq!(stopped, VerifyOutcome::Stopped);
        assert_eq!(seen.last(), Some(&(4 * 65536, 4 * 65536)));

        let location = index.read().unwrap().get(&blocks[2].hash).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(only_pack(&store))
            .unwrap();
        f.write_all_at(&[0xff; 8], location.offset + 100).unwrap();
        let err = store
            .verify(&index, &id, &mut |_| ControlFlow::Continue(()))
            .unwrap_err();
        let chain = klio_wal::ErrorChain(&err).to_string();
        assert!(chain.contains("b1"), "{chain}");
        assert!(chain.contains("base/5/2619"), "{chain}");
        assert!(chain.contains(&blocks[2].hash.to_string()), "{chain}");
    }
}

const SEG: u64 = 1 << 20;

fn archive(dir: &Path) -> WalArchive {
    WalArchive::open(
        dir,
        ClusterIdentity {
            system_id: 7_400_000_000_000_000_001,
            segment_size: SegmentSize::new(SEG).unwrap(),
        },
    )
    .unwrap()
}

fn at(timeline: u32, lsn: u64) -> WalPosition {
    WalPosition::new(TimelineId::new(timeline).unwrap(), Lsn(lsn))
}

#[test]
fn the_wal_range_check_follows_the_archive() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("wal");
    let mut a = archive(&dir);
    let t1 = TimelineId::FIRST;
    // Segments 2 and 3 complete, 4 in progress up to 4.5 segments.
    a.begin(t1, Lsn(2 * SEG)).unwrap();
    a.append(Lsn(2 * SEG), &vec![0x5a; (2 * SEG + SEG / 2) as usize])
        .unwrap();
    a.sync().unwrap();
    let reader = WalArchiveReader::open(&dir).unwrap();
    let check = |start, end| wal_coverage(&reader, start, end).unwrap();
    assert_eq!(
        check(at(1, 2 * SEG + 0x28), at(1, 4 * SEG + 0x100)),
        WalCoverage::Archived
    );
    // Ending exactly at a boundary needs nothing of the next segment.
    assert_eq!(
        check(at(1, 2 * SEG + 0x28), at(1, 4 * SEG)),
        WalCoverage::Archived
    );
    assert!(matches!(
        check(at(1, 2 * SEG + 0x28), at(1, 4 * SEG + SEG / 2 + 1)),
        WalCoverage::ShortOfEnd { durable, .. } if durable == Lsn(4 * SEG + SEG / 2)
    ));
    assert!(matches!(
        check(at(1, SEG + 0x28), at(1, 3 * SEG)),
        WalCoverage::MissingSegment { name } if name == "000000010000000000000001"
    ));
    assert!(matches!(
        check(at(1, 2 * SEG), at(1, 6 * SEG)),
        WalCoverage::MissingSegment { .. }
    ));
    assert_eq!(
        check(at(1, 2 * SEG), at(2, 4 * SEG)),
        WalCoverage::MissingHistory {
            timeline: TimelineId::new(2).unwrap()
        }
    );

    // Timeline 2 branches off in segment 4: that segment is read from timeline 2.
    a.store_history(
        TimelineId::new(2).unwrap(),
        b"1\t0/40A000\tno recovery target specified\n",
    )
    .unwrap();
    let t2 = TimelineId::new(2).unwrap();
    a.begin(t2, Lsn(4 * SEG)).unwrap();
    a.append(Lsn(4 * SEG), &vec![0x6b; (SEG + 100) as usize])
        .unwrap();
    a.sync().unwrap();
    let reader = WalArchiveReader::open(&dir).unwrap();
    assert_eq!(
        wal_coverage(&reader, at(1, 3 * SEG), at(2, 5 * SEG + 50)).unwrap(),
        WalCoverage::Archived
    );
    assert!(matches!(
        wal_coverage(&reader, at(1, 3 * SEG), at(2, 5 * SEG + 200)).unwrap(),
        WalCoverage::ShortOfEnd { .. }
    ));
}

#[test]
fn a_full_pack_is_closed_and_the_next_blocks_go_into_a_new_one() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    let key = store.prepare_for_backup().unwrap().hash_key;
    let n = (PACK_TARGET_BYTES / 65536) as u32 + 8;
    let index = store.load_index().unwrap();
    let mut writer = store.block_writer(without_dictionary(&key));
    let mut closed = Vec::new();
    let mut hashes = Vec::new();
    for i in 0..n {
        let b = block(&key, &plain(i, false));
        hashes.push(b.hash);
        if let Put::StoredAndClosed(p) = writer.put(&index, &b).unwrap() {
            closed.push(p);
        }
    }
    assert_eq!(
        closed.len(),
        1,
        "one pack per ~32 MiB, not a file per block"
    );
    closed.extend(writer.close().unwrap());
    let packs = std::fs::read_dir(store.packs_dir()).unwrap().count();
    assert_eq!(packs, 4, "two packs and their indexes");
    let index = store.load_index().unwrap();
    assert_eq!(index.len(), n as usize);
    let mut reader = store.block_reader();
    for h in [hashes[0], hashes[n as usize - 1]] {
        reader.read(&index, &h).unwrap();
    }
}

#[test]
fn an_index_offset_near_the_end_of_u64_is_a_damaged_block_not_a_panic() {
    // Found by the `backup_pack_index` fuzz target: `offset + 60` overflowed.
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    let key = store.prepare_for_backup().unwrap().hash_key;
    let b = block(&key, &plain(1, true));
    store_blocks(&store, std::slice::from_ref(&b));
    let path = only_pack(&store);
    let bytes = std::fs::read(&path).unwrap();
    let entry = IndexEntry {
        hash: b.hash,
        offset: u64::MAX - 10,
        stored_len: b.data.len() as u32,
    };
    let err = read_pack_block(&bytes, &path, None, &entry).unwrap_err();
    assert!(
        matches!(
            err,
            BackupStoreError::DamagedBlock {
                reason: BlockDamage::Truncated,
                ..
            }
        ),
        "{err:?}"
    );
    // The store's own file path reads the same bytes the same way.
    let scan = scan_pack(&bytes, &path, None).unwrap();
    assert_eq!(scan.entries.len(), 1);
    assert_eq!(scan.valid_len, bytes.len() as u64);
}

fn huge_file(path: &str) -> FileEntry {
    FileEntry {
        size: u64::MAX / 2 + 1,
        ..file(path, &[])
    }
}

#[test]
fn file_sizes_that_add_up_past_u64_are_refused_when_written() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    store.prepare_for_backup().unwrap();
    let mut staged = store.stage(&BackupId::parse("b1").unwrap()).unwrap();
    staged.add_entry(&huge_file("a")).unwrap();
    let err = staged.add_entry(&huge_file("b")).unwrap_err();
    assert!(
        matches!(
            &err,
            BackupStoreError::InvalidFileList {
                problem: FileListProblem::SizesOverflow { path },
                ..
            } if path == "b"
        ),
        "{err:?}"
    );
}

#[test]
fn a_file_list_whose_sizes_add_up_past_u64_is_damage_not_a_panic() {
    // Found by the `backup_file_list` fuzz target: the reader's running total overflowed.
    let mut records = Vec::new();
    for path in ["a", "b"] {
        records.push(1); // an entry
        records.push(0); // a regular file
        records.extend_from_slice(&0o600u32.to_le_bytes());
        records.extend_from_slice(&(u64::MAX / 2 + 1).to_le_bytes());
        records.extend_from_slice(&0i64.to_le_bytes());
        records.extend_from_slice(&(path.len() as u32).to_le_bytes());
        records.extend_from_slice(path.as_bytes());
        records.extend_from_slice(&0u32.to_le_bytes());
    }
    records.push(3);
    let path = Path::new("files");
    let rng = SystemRandom::new();
    let object = encode_object(None, ObjectKind::FileList, "b1", &records, &rng, path).unwrap();
    let mut reader = FileListReader::from_bytes(&object, path, None, "b1").unwrap();
    assert!(matches!(
        reader.next_item(),
        Ok(Some(FileListItem::Entry(_)))
    ));
    let err = reader.next_item().unwrap_err();
    assert!(
        matches!(
            err,
            BackupStoreError::DamagedFile {
                reason: ObjectDamage::Malformed(_),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_pin_survives_a_reopen_and_unpinning_removes_it() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring.clone());
        store.prepare_for_backup().unwrap();
        backup(&store, "b1", 0x3000000, &[]);
        backup(&store, "b2", 0x4000000, &[]);
        let id = BackupId::parse("b1").unwrap();
        assert!(!store.entry(&id).unwrap().pinned);
        assert!(store.set_pinned(&id, true).unwrap().pinned);
        // Pinning twice keeps the first marker.
        let marker = d.path().join("catalog/b1/pinned");
        let first = std::fs::read(&marker).unwrap();
        assert!(store.set_pinned(&id, true).unwrap().pinned);
        assert_eq!(std::fs::read(&marker).unwrap(), first);

        let reopened = BackupStore::new(d.path(), keyring);
        let pins: Vec<(String, bool)> = reopened
            .list()
            .unwrap()
            .into_iter()
            .map(|i| (i.id, i.pinned))
            .collect();
        assert_eq!(pins, [("b1".to_owned(), true), ("b2".to_owned(), false)]);

        assert!(!reopened.set_pinned(&id, false).unwrap().pinned);
        assert!(!marker.exists());
        assert!(!reopened.entry(&id).unwrap().pinned);
        // Unpinning an unpinned backup changes nothing.
        assert!(!reopened.set_pinned(&id, false).unwrap().pinned);
    }
}

#[test]
fn pinning_a_backup_that_is_not_in_the_catalog_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    store.prepare_for_backup().unwrap();
    let id = BackupId::parse("nope").unwrap();
    assert!(matches!(
        store.set_pinned(&id, true),
        Err(BackupStoreError::NoSuchBackup { .. })
    ));
    assert!(!d.path().join("catalog/nope").exists());
}

#[test]
fn a_damaged_pin_marker_is_an_error_naming_it_never_unpinned() {
    for keyring in formats() {
        let d = tempfile::tempdir().unwrap();
        let store = BackupStore::new(d.path(), keyring);
        store.prepare_for_backup().unwrap();
        backup(&store, "b1", 0x3000000, &[]);
        let id = BackupId::parse("b1").unwrap();
        store.set_pinned(&id, true).unwrap();
        let marker = d.path().join("catalog/b1/pinned");
        let mut bytes = std::fs::read(&marker).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&marker, &bytes).unwrap();
        for err in [
            store.entry(&id).unwrap_err(),
            store.list().unwrap_err(),
            store.delete(&id).unwrap_err(),
        ] {
            assert!(
                matches!(&err, BackupStoreError::DamagedPin { id, .. } if id == "b1"),
                "{err}"
            );
            assert!(err.to_string().contains("klio backup pin b1"), "{err}");
            let chain = klio_wal::ErrorChain(&err).to_string();
            assert!(
                chain.contains("catalog/b1/pinned"),
                "the error names the marker: {chain}"
            );
        }
        assert!(d.path().join("catalog/b1/entry.json").exists());
        // Pinning again repairs it.
        assert!(store.set_pinned(&id, true).unwrap().pinned);
        assert!(store.entry(&id).unwrap().pinned);
        // So does unpinning, which removes it.
        std::fs::write(&marker, b"garbage").unwrap();
        assert!(!store.set_pinned(&id, false).unwrap().pinned);
    }
}

#[test]
fn a_pin_marker_copied_to_another_backup_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    store.prepare_for_backup().unwrap();
    backup(&store, "b1", 0x3000000, &[]);
    backup(&store, "b2", 0x4000000, &[]);
    store
        .set_pinned(&BackupId::parse("b1").unwrap(), true)
        .unwrap();
    let catalog = d.path().join("catalog");
    std::fs::copy(catalog.join("b1/pinned"), catalog.join("b2/pinned")).unwrap();
    let err = store.entry(&BackupId::parse("b2").unwrap()).unwrap_err();
    let BackupStoreError::DamagedPin { id, source } = &err else {
        panic!("{err}");
    };
    assert_eq!(id, "b2");
    assert!(
        matches!(
            **source,
            BackupStoreError::DamagedFile {
                reason: ObjectDamage::OtherObject,
                ..
            }
        ),
        "{source}"
    );
}

#[test]
fn delete_of_a_pinned_backup_is_refused_until_it_is_unpinned() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), None);
    store.prepare_for_backup().unwrap();
    backup(&store, "b1", 0x3000000, &[]);
    let id = BackupId::parse("b1").unwrap();
    store.set_pinned(&id, true).unwrap();
    let err = store.delete(&id).unwrap_err();
    assert!(
        matches!(&err, BackupStoreError::Pinned { id } if id == "b1"),
        "{err}"
    );
    assert!(err.to_string().contains("klio backup unpin b1"), "{err}");
    assert!(store.entry(&id).unwrap().pinned);
    store.set_pinned(&id, false).unwrap();
    assert_eq!(store.delete(&id).unwrap().id, "b1");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn an_encrypted_store_keeps_the_pin_marker_sealed() {
    let d = tempfile::tempdir().unwrap();
    let store = BackupStore::new(d.path(), Some(ring(1)));
    store.prepare_for_backup().unwrap();
    backup(&store, "b1", 0x3000000, &[]);
    let id = BackupId::parse("b1").unwrap();
    store.set_pinned(&id, true).unwrap();
    let bytes = std::fs::read(d.path().join("catalog/b1/pinned")).unwrap();
    assert!(bytes.starts_with(&klio_crypto::MAGIC), "sealed");
    // Its plaintext (a year of this millennium) appears nowhere in the file.
    assert!(!bytes.windows(2).any(|w| w == b"20"), "no plaintext time");
    // Without the keyring it cannot be read, and is not taken as unpinned.
    let without = BackupStore::new(d.path(), None);
    assert!(matches!(
        without.pinned_at(&id),
        Err(BackupStoreError::Encrypted { .. })
    ));
    // With another keyring neither.
    let other = BackupStore::new(d.path(), Some(ring(2)));
    assert!(matches!(
        other.pinned_at(&id),
        Err(BackupStoreError::DamagedPin { .. })
    ));
}
