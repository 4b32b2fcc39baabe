#![no_main]
//! A backup's file list is read back from disk for every restore and verify: any bytes must
//! give entries or a clear error, never a panic. Inputs whose first byte is odd are wrapped in a
//! valid plain object first, so the fuzzer reaches the record parser; others are read as the
//! object itself. A list read to its end counts exactly what it yielded.

use std::path::Path;

use klio_crypto::SystemRandom;
use klio_proto::klio::MAX_HASHES_PER_MESSAGE;
use klio_store::backup::{FileListItem, FileListReader, FileListTotals, ObjectKind, encode_object};
use libfuzzer_sys::fuzz_target;

const BACKUP: &str = "20260101T000000Z-abcd";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let path = Path::new("fuzz.files");
    let object = if mode & 1 == 1 {
        encode_object(
            None,
            ObjectKind::FileList,
            BACKUP,
            rest,
            &SystemRandom::new(),
            path,
        )
        .expect("encodes")
    } else {
        rest.to_vec()
    };
    let Ok(mut reader) = FileListReader::from_bytes(&object, path, None, BACKUP) else {
        return;
    };
    let mut seen = FileListTotals::default();
    loop {
        match reader.next_item() {
            Ok(Some(FileListItem::Entry(entry))) => {
                assert!(entry.blocks.len() <= MAX_HASHES_PER_MESSAGE);
                seen.files += 1;
                seen.blocks += entry.blocks.len() as u64;
                if entry.kind == klio_proto::klio::FileKind::File {
                    seen.logical_bytes += entry.size;
                }
            }
            Ok(Some(FileListItem::Blocks(blocks))) => {
                assert!(!blocks.is_empty() && blocks.len() <= MAX_HASHES_PER_MESSAGE);
                seen.blocks += blocks.len() as u64;
            }
            Ok(None) => {
                assert_eq!(reader.totals(), seen);
                // The end stays the end.
                assert!(matches!(reader.next_item(), Ok(None)));
                break;
            }
            Err(_) => break,
        }
    }
});
