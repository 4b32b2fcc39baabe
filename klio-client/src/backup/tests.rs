//! The block cutter and batcher, fed tar events without any network.

use std::collections::HashMap;

use bytes::Bytes;
use klio_crypto::{BlockHashAlgorithm, BlockHashKey};
use klio_proto::klio::{
    Block, BlockCompression, BlockDictionary, BlockHash, FileEntry, FileKind,
    MAX_HASHES_PER_MESSAGE, Message,
};
use klio_proto::tar::{EntryKind, EntryPath, TarEntry, TarEvent};
use proptest::prelude::*;

use super::BLOCK_SIZE;
use super::batch::{Batch, BatchLimits, HeldCountMismatch, compress};
use super::capture::file_messages;
use super::cutter::{ArchiveRoot, Cutter};

fn key() -> BlockHashKey {
    BlockHashKey::new(BlockHashAlgorithm::Blake3, [7; 32])
}

fn hash(data: &[u8]) -> BlockHash {
    BlockHash(key().hash(data))
}

fn entry(path: &str, kind: EntryKind) -> TarEvent {
    TarEvent::Entry(TarEntry {
        path: EntryPath::parse(path.as_bytes()).expect("a valid path"),
        kind,
        mode: 0o600,
        uid: 26,
        gid: 26,
        mtime: 1_764_590_400,
    })
}

/// Bytes that differ from block to block (no accidental dedupe) and compress poorly.
fn contents(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Pushes a regular file in slices of `piece` bytes.
fn push_file(cutter: &mut Cutter, path: &str, data: &[u8], piece: usize) {
    cutter
        .push(entry(
            path,
            EntryKind::File {
                size: data.len() as u64,
            },
        ))
        .expect("entry");
    for chunk in data.chunks(piece.max(1)) {
        cutter
            .push(TarEvent::Data(Bytes::copy_from_slice(chunk)))
            .expect("data");
    }
    cutter.push(TarEvent::EntryEnd).expect("entry end");
}

fn unlimited() -> BatchLimits {
    BatchLimits {
        max_hashes: usize::MAX,
        max_bytes: usize::MAX,
        max_files: usize::MAX,
    }
}

fn cutter(limits: BatchLimits) -> Cutter {
    Cutter::new(key(), limits)
}

#[test]
fn files_are_cut_at_64_kib_offsets_and_the_last_block_is_short() {
    let data = contents(2 * BLOCK_SIZE + 100, 1);
    let mut c = cutter(unlimited());
    push_file(&mut c, "base/1/1259", &data, 10_000);
    let batch = c.finish().expect("finished");

    let expected: Vec<&[u8]> = vec![
        &data[..BLOCK_SIZE],
        &data[BLOCK_SIZE..2 * BLOCK_SIZE],
        &data[2 * BLOCK_SIZE..],
    ];
    let plains: Vec<&[u8]> = batch.blocks().iter().map(|b| &b.plain[..]).collect();
    assert_eq!(plains, expected);
    let [file] = batch.files() else {
        panic!("one file expected, got {:?}", batch.files());
    };
    assert_eq!(file.path, "base/1/1259");
    assert_eq!(file.kind, FileKind::File);
    assert_eq!(file.size, data.len() as u64);
    assert_eq!(file.mode, 0o600);
    assert_eq!(file.mtime, 1_764_590_400);
    assert_eq!(
        file.blocks,
        expected.iter().map(|b| hash(b)).collect::<Vec<_>>()
    );
}

#[test]
fn a_file_of_exactly_one_block_has_one_block() {
    let data = contents(BLOCK_SIZE, 2);
    let mut c = cutter(unlimited());
    push_file(&mut c, "global/pg_control", &data, BLOCK_SIZE);
    let batch = c.finish().expect("finished");
    assert_eq!(batch.files()[0].blocks, vec![hash(&data)]);
    assert_eq!(batch.blocks().len(), 1);
}

#[test]
fn an_empty_file_has_no_blocks() {
    let mut c = cutter(unlimited());
    push_file(&mut c, "pg_logical/replorigin_checkpoint", &[], 1);
    let batch = c.finish().expect("finished");
    assert!(batch.blocks().is_empty());
    assert_eq!(batch.files().len(), 1);
    assert_eq!(batch.files()[0].size, 0);
    assert!(batch.files()[0].blocks.is_empty());
    // Nothing to ask the server, but the entry still goes out.
    assert!(!batch.is_empty());
}

#[test]
fn a_batch_spans_files_in_archive_order() {
    let a = contents(BLOCK_SIZE + 1, 3);
    let b = contents(10, 4);
    let mut c = cutter(unlimited());
    push_file(&mut c, "base/1/a", &a, 4096);
    push_file(&mut c, "base/1/b", &b, 4096);
    let batch = c.finish().expect("finished");
    assert_eq!(
        batch.hashes(),
        vec![hash(&a[..BLOCK_SIZE]), hash(&a[BLOCK_SIZE..]), hash(&b)]
    );
    let paths: Vec<&str> = batch.files().iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["base/1/a", "base/1/b"]);
}

#[test]
fn equal_blocks_in_a_batch_are_asked_for_once() {
    let block = contents(BLOCK_SIZE, 5);
    let twice = [block.clone(), block.clone()].concat();
    let mut c = cutter(unlimited());
    push_file(&mut c, "base/1/twice", &twice, 1000);
    push_file(&mut c, "base/1/copy", &block, 1000);
    let batch = c.finish().expect("finished");
    assert_eq!(batch.hashes(), vec![hash(&block)]);
    assert_eq!(batch.files()[0].blocks, vec![hash(&block), hash(&block)]);
    assert_eq!(batch.files()[1].blocks, vec![hash(&block)]);
}

#[test]
fn a_file_entry_waits_for_the_batch_its_last_block_is_in() {
    let data = contents(5 * BLOCK_SIZE, 6);
    let limits = BatchLimits {
        max_hashes: 2,
        ..unlimited()
    };
    let mut c = cutter(limits);
    let mut batches: Vec<Batch> = Vec::new();
    c.push(entry(
        "base/1/big",
        EntryKind::File {
            size: data.len() as u64,
        },
    ))
    .expect("entry");
    for chunk in data.chunks(BLOCK_SIZE / 2) {
        c.push(TarEvent::Data(Bytes::copy_from_slice(chunk)))
            .expect("data");
        if c.batch_is_full() {
            batches.push(c.take_batch());
        }
    }
    c.push(TarEvent::EntryEnd).expect("entry end");
    batches.push(c.finish().expect("finished"));

    let sizes: Vec<usize> = batches.iter().map(|b| b.blocks().len()).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let files: Vec<usize> = batches.iter().map(|b| b.files().len()).collect();
    assert_eq!(
        files,
        [0, 0, 1],
        "the entry comes with the batch of its last block"
    );
    let listed = &batches[2].files()[0].blocks;
    let cut: Vec<BlockHash> = batches.iter().flat_map(|b| b.hashes()).collect();
    assert_eq!(
        listed, &cut,
        "the entry keeps the hashes of earlier batches"
    );
}

#[test]
fn a_batch_is_full_at_its_byte_limit_and_at_its_entry_limit() {
    let by_bytes = BatchLimits {
        max_bytes: 2 * BLOCK_SIZE,
        ..unlimited()
    };
    let mut c = cutter(by_bytes);
    push_file(&mut c, "a", &contents(BLOCK_SIZE, 7), BLOCK_SIZE);
    assert!(!c.batch_is_full());
    push_file(&mut c, "b", &contents(BLOCK_SIZE, 8), BLOCK_SIZE);
    assert!(c.batch_is_full());

    let by_files = BatchLimits {
        max_files: 3,
        ..unlimited()
    };
    let mut c = cutter(by_files);
    for name in ["d1", "d2"] {
        c.push(entry(name, EntryKind::Directory)).expect("entry");
        c.push(TarEvent::EntryEnd).expect("entry end");
    }
    assert!(!c.batch_is_full());
    push_file(&mut c, "empty", &[], 1);
    assert!(c.batch_is_full(), "empty files and directories count too");
}

#[test]
fn tablespace_entries_go_under_pg_tblspc_and_the_data_directory_root_is_skipped() {
    let mut c = cutter(unlimited());
    c.start_archive(ArchiveRoot::Tablespace { oid: 16385 })
        .expect("archive");
    c.push(entry("PG_15_202209061/", EntryKind::Directory))
        .expect("entry");
    c.push(TarEvent::EntryEnd).expect("end");
    push_file(&mut c, "PG_15_202209061/5/16386", b"rows", 10);
    c.push(TarEvent::End).expect("archive end");
    c.start_archive(ArchiveRoot::DataDirectory)
        .expect("archive");
    c.push(entry("./", EntryKind::Directory)).expect("root");
    c.push(TarEvent::EntryEnd).expect("end");
    c.push(entry("./pg_wal/archive_status/", EntryKind::Directory))
        .expect("entry");
    c.push(TarEvent::EntryEnd).expect("end");
    c.push(entry(
        "pg_tblspc/16385",
        EntryKind::Symlink {
            target: b"/srv/ts".to_vec(),
        },
    ))
    .expect("entry");
    c.push(TarEvent::EntryEnd).expect("end");
    let batch = c.finish().expect("finished");
    let got: Vec<(&str, &FileKind)> = batch
        .files()
        .iter()
        .map(|f| (f.path.as_str(), &f.kind))
        .collect();
    assert_eq!(
        got,
        [
            ("pg_tblspc/16385/PG_15_202209061", &FileKind::Directory),
            ("pg_tblspc/16385/PG_15_202209061/5/16386", &FileKind::File),
            ("pg_wal/archive_status", &FileKind::Directory),
            (
                "pg_tblspc/16385",
                &FileKind::Symlink {
                    target: "/srv/ts".to_owned()
                }
            ),
        ]
    );
    let totals = c.totals();
    assert_eq!(totals.files, 4);
    assert_eq!(totals.blocks, 1);
    assert_eq!(totals.logical_bytes, 4);
}

#[test]
fn data_outside_a_file_is_refused_not_recorded() {
    let mut c = cutter(unlimited());
    c.push(entry("d", EntryKind::Directory)).expect("entry");
    assert!(c.push(TarEvent::Data(Bytes::from_static(b"x"))).is_err());
    let mut c = cutter(unlimited());
    c.push(entry("f", EntryKind::File { size: 1 }))
        .expect("entry");
    assert!(c.finish().is_err(), "a backup cannot end inside a file");
}

#[test]
fn only_blocks_not_held_are_sent_compressed_when_that_is_smaller() {
    let compressible = vec![0u8; BLOCK_SIZE];
    let random = contents(BLOCK_SIZE, 9);
    let held = contents(BLOCK_SIZE, 10);
    let mut c = cutter(unlimited());
    push_file(&mut c, "z", &compressible, BLOCK_SIZE);
    push_file(&mut c, "r", &random, BLOCK_SIZE);
    push_file(&mut c, "h", &held, BLOCK_SIZE);
    let batch = c.finish().expect("finished");
    let resolved = batch.resolve(&[false, false, true]).expect("resolved");

    assert_eq!(resolved.new_blocks.len(), 2);
    assert_eq!(resolved.new_plain_bytes, 2 * BLOCK_SIZE as u64);
    let sent: Vec<Block> = resolved
        .new_blocks
        .into_iter()
        .map(|b| compress(b, BlockCompression::Zstd, None))
        .collect();
    let zeros = &sent[0];
    assert_eq!(zeros.hash, hash(&compressible));
    assert_eq!(zeros.compression, BlockCompression::Zstd);
    assert!(zeros.data.len() < BLOCK_SIZE / 10);
    assert_eq!(zeros.decompress().expect("zstd"), compressible);
    let plain = &sent[1];
    assert_eq!(plain.compression, BlockCompression::None);
    assert_eq!(&plain.data[..], &random[..]);
    assert_eq!(plain.plain_len as usize, BLOCK_SIZE);
    assert_eq!(
        resolved.files.len(),
        3,
        "every file of the batch may now be announced"
    );
}

#[test]
fn lz4_compresses_against_the_cluster_dictionary_and_zstd_ignores_it() {
    let page = b"row 17 of pgbench_accounts, filler filler filler ".repeat(1400);
    let dictionary = BlockDictionary::new(Bytes::copy_from_slice(&page[..4096])).expect("valid");
    let pending = |plain: &[u8]| {
        let mut c = cutter(unlimited());
        push_file(&mut c, "f", plain, BLOCK_SIZE);
        let batch = c.finish().expect("finished");
        let mut resolved = batch.resolve(&[false]).expect("resolved");
        resolved.new_blocks.remove(0)
    };
    let plain = &page[..BLOCK_SIZE];
    let lz4 = compress(pending(plain), BlockCompression::Lz4, Some(&dictionary));
    assert_eq!(lz4.compression, BlockCompression::Lz4Dictionary);
    assert_eq!(lz4.decompress_with(Some(&dictionary)).expect("lz4"), plain);
    let without = compress(pending(plain), BlockCompression::Lz4, None);
    assert_eq!(without.compression, BlockCompression::Lz4);
    let zstd = compress(pending(plain), BlockCompression::Zstd, Some(&dictionary));
    assert_eq!(zstd.compression, BlockCompression::Zstd);
    assert_eq!(zstd.decompress().expect("zstd"), plain);
}

#[test]
fn an_answer_of_the_wrong_length_is_an_error() {
    let mut c = cutter(unlimited());
    push_file(&mut c, "f", b"data", 4);
    let batch = c.finish().expect("finished");
    assert_eq!(
        batch.resolve(&[]).map(|_| ()),
        Err(HeldCountMismatch {
            asked: 1,
            answered: 0
        })
    );
}

#[test]
fn a_file_with_more_hashes_than_a_message_carries_continues_in_file_blocks() {
    let n = MAX_HASHES_PER_MESSAGE * 2 + 3;
    let blocks: Vec<BlockHash> = (0..n)
        .map(|i| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_be_bytes());
            BlockHash(h)
        })
        .collect();
    let entry = FileEntry {
        path: "base/1/huge".to_owned(),
        kind: FileKind::File,
        mode: 0o600,
        size: n as u64 * BLOCK_SIZE as u64,
        mtime: 0,
        blocks: blocks.clone(),
    };
    let messages = file_messages(entry);
    let lens: Vec<usize> = messages
        .iter()
        .map(|m| match m {
            Message::FileEntry { entry } => entry.blocks.len(),
            Message::FileBlocks { blocks } => blocks.len(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(lens, [MAX_HASHES_PER_MESSAGE, MAX_HASHES_PER_MESSAGE, 3]);
    assert!(matches!(messages[0], Message::FileEntry { .. }));
    let rejoined: Vec<BlockHash> = messages
        .into_iter()
        .flat_map(|m| match m {
            Message::FileEntry { entry } => entry.blocks,
            Message::FileBlocks { blocks } => blocks,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(rejoined, blocks);

    let small = FileEntry {
        blocks: blocks[..1].to_vec(),
        ..FileEntry {
            path: "f".to_owned(),
            kind: FileKind::File,
            mode: 0o600,
            size: 1,
            mtime: 0,
            blocks: Vec::new(),
        }
    };
    assert_eq!(file_messages(small).len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_files_blocks_concatenated_give_the_file_back(
        len in prop_oneof![0usize..3 * BLOCK_SIZE, Just(BLOCK_SIZE), Just(2 * BLOCK_SIZE)],
        piece in 1usize..2 * BLOCK_SIZE,
        max_hashes in 1usize..5,
        seed in any::<u64>(),
    ) {
        // Short periodic runs make some blocks equal, so in-batch dedupe is exercised too.
        let data: Vec<u8> = if seed % 3 == 0 {
            contents(BLOCK_SIZE, seed).into_iter().cycle().take(len).collect()
        } else {
            contents(len, seed)
        };
        let mut c = cutter(BatchLimits { max_hashes, ..unlimited() });
        let mut store: HashMap<BlockHash, Bytes> = HashMap::new();
        let mut files = Vec::new();
        let mut take = |batch: Batch, files: &mut Vec<FileEntry>| {
            for b in batch.blocks() {
                prop_assert_eq!(b.hash, hash(&b.plain));
                store.insert(b.hash, b.plain.clone());
            }
            files.extend(batch.files().iter().cloned());
            Ok(())
        };
        c.push(entry("base/1/f", EntryKind::File { size: len as u64 })).expect("entry");
        for chunk in data.chunks(piece) {
            c.push(TarEvent::Data(Bytes::copy_from_slice(chunk))).expect("data");
            if c.batch_is_full() {
                take(c.take_batch(), &mut files)?;
            }
        }
        c.push(TarEvent::EntryEnd).expect("end");
        take(c.finish().expect("finished"), &mut files)?;

        prop_assert_eq!(files.len(), 1);
        let file = &files[0];
        prop_assert_eq!(file.blocks.len(), len.div_ceil(BLOCK_SIZE));
        let mut rebuilt = Vec::with_capacity(len);
        for (i, h) in file.blocks.iter().enumerate() {
            let block = store.get(h).expect("every block was in a batch");
            let expected_len = (len - i * BLOCK_SIZE).min(BLOCK_SIZE);
            prop_assert_eq!(block.len(), expected_len);
            rebuilt.extend_from_slice(block);
        }
        prop_assert_eq!(rebuilt, data);
    }
}
