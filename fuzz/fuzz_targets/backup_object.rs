#![no_main]
//! The backup store's protected objects (catalog entries, file lists, manifests, the
//! block-hash key, the block dictionary) are read back from disk: any bytes must give the object's plaintext or a
//! clear error, never a panic, plain or sealed. What the writer encodes (plain and sealed)
//! reads back as it was.

use std::path::Path;

use klio_crypto::{Kek, Keyring, SystemRandom};
use klio_store::backup::{ObjectKind, encode_object, parse_dictionary, read_object};
use libfuzzer_sys::fuzz_target;

const KINDS: [ObjectKind; 5] = [
    ObjectKind::HashKey,
    ObjectKind::Entry,
    ObjectKind::FileList,
    ObjectKind::Manifest,
    ObjectKind::Dictionary,
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let kind = KINDS[usize::from(mode) % KINDS.len()];
    let id = if matches!(kind, ObjectKind::HashKey | ObjectKind::Dictionary) {
        ""
    } else {
        "20260101T000000Z-abcd"
    };
    let keyring = Keyring::new(Kek::from_bytes(&[0x5a; 32]).expect("32-byte key"));
    let path = Path::new("fuzz.object");

    let _ = read_object(rest, path, None, kind, id);
    let _ = read_object(rest, path, Some(&keyring), kind, id);
    if kind == ObjectKind::Dictionary {
        let _ = parse_dictionary(rest, path, None);
        let _ = parse_dictionary(rest, path, Some(&keyring));
    }

    let rng = SystemRandom::new();
    for ring in [None, Some(&keyring)] {
        let object = encode_object(ring, kind, id, rest, &rng, path).expect("encodes");
        let back = read_object(&object, path, ring, kind, id).expect("what was written reads");
        assert_eq!(back, rest);
        // Bound to what it is: the same bytes as another kind or backup are refused.
        let other = KINDS[(usize::from(mode) + 1) % KINDS.len()];
        assert!(read_object(&object, path, ring, other, id).is_err());
    }
});
