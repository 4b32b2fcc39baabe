//! `BASE_BACKUP` copystream payloads built from fuzz bytes (each chunk is one length byte and
//! that many payload bytes) fed to one CopyStreamDecoder: errors are fine, panics are not, and
//! after the first error the stream is abandoned as a client would.
#![no_main]

use bytes::Bytes;
use klio_proto::base_backup::{CopyStreamDecoder, CopyStreamEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = CopyStreamDecoder::new();
    let mut rest = data;
    let mut manifest_started = false;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        match decoder.decode(Bytes::copy_from_slice(payload)) {
            Ok(CopyStreamEvent::ManifestStart) => manifest_started = true,
            Ok(CopyStreamEvent::NewArchive { name, .. }) => {
                assert!(
                    !manifest_started,
                    "an archive after the manifest was accepted"
                );
                assert!(
                    !name.is_empty() && !name.contains('/'),
                    "unsafe name {name:?}"
                );
            }
            Ok(CopyStreamEvent::ArchiveData(_)) => assert!(!manifest_started),
            Ok(CopyStreamEvent::ManifestData(_)) => assert!(manifest_started),
            Ok(CopyStreamEvent::Progress(_)) => {}
            Err(_) => return,
        }
    }
    let _ = decoder.finish();
});
