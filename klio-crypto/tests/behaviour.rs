//! Known behaviour: layout, errors, key rotation.

mod common;

use common::*;
use klio_crypto::{
    Compression, CompressionKind, CryptoError, HEADER_LEN, KEY_SLOT_LEN, Kek, Keyring,
    MAX_CHUNK_SIZE, ObjectHeader, Opener, SealOptions, Sealer, SystemRandom, key_slot_range,
    object_key_id, open, rewrap, seal,
};

#[test]
fn header_layout() {
    let keyring = keyring(1);
    let o = seal(
        &keyring,
        &opts(Compression::Zstd { level: 5 }, 4096),
        b"hello",
        &SystemRandom::new(),
    )
    .unwrap();
    assert_eq!(HEADER_LEN, 124);
    assert_eq!(KEY_SLOT_LEN, 76);
    assert_eq!(key_slot_range(), 48..124);
    assert_eq!(&o[..8], b"KLIO-ENC");
    assert_eq!(o[8], 1, "version");
    assert_eq!(o[9], 1, "cipher AES-256-GCM");
    assert_eq!(o[10], 2, "compression zstd");
    assert_eq!(o[11], 5, "zstd level");
    assert_eq!(&o[12..16], &4096u32.to_be_bytes());
    assert_eq!(&o[32..48], &[0; 16], "reserved");
    assert_eq!(&o[48..64], keyring.primary_id().as_bytes());
    let h = ObjectHeader::parse(&o).unwrap();
    assert_eq!(h.compression(), CompressionKind::Zstd);
    assert_eq!(h.chunk_size(), 4096);
    assert_eq!(h.key_id(), keyring.primary_id());
    assert_eq!(&h.object_id(), &o[16..32]);
    // One final chunk: "hello" is too short to compress, so it is stored.
    let field = u32::from_be_bytes(o[124..128].try_into().unwrap());
    assert_eq!(field, 0x8000_0000 | (1 + 5 + 16));
    assert_eq!(o.len(), 124 + 4 + 22);
}

#[test]
fn objects_differ_even_for_the_same_plaintext() {
    let keyring = keyring(1);
    let rng = SystemRandom::new();
    let a = seal(&keyring, &SealOptions::default(), b"same", &rng).unwrap();
    let b = seal(&keyring, &SealOptions::default(), b"same", &rng).unwrap();
    assert_ne!(a[16..32], b[16..32], "object ids");
    assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..], "chunk ciphertexts");
}

#[test]
fn empty_object_has_one_final_chunk() {
    let keyring = keyring(1);
    for comp in [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd { level: 3 },
    ] {
        let o = seal(&keyring, &opts(comp, 1024), b"", &SystemRandom::new()).unwrap();
        assert_eq!(o.len(), HEADER_LEN + 4 + 17);
        assert_eq!(open(&keyring, &o).unwrap(), b"");
        let (sealer, mut s) =
            Sealer::new(&keyring, &opts(comp, 1024), &SystemRandom::new()).unwrap();
        s.extend(sealer.finish().unwrap());
        assert_eq!(s.len(), HEADER_LEN + 4 + 17);
        assert_eq!(open(&keyring, &s).unwrap(), b"");
        // Header alone: truncated.
        assert_eq!(
            open(&keyring, &o[..HEADER_LEN]).unwrap_err(),
            CryptoError::Truncated {
                len: HEADER_LEN as u64
            }
        );
    }
}

#[test]
fn compressible_data_shrinks_and_incompressible_data_barely_grows() {
    let keyring = keyring(1);
    let rng = SystemRandom::new();
    let text = data(1, 1 << 20, 1);
    let random = data(2, 1 << 20, 0);
    for comp in [Compression::Lz4, Compression::Zstd { level: 3 }] {
        let o = seal(&keyring, &opts(comp, 64 << 10), &text, &rng).unwrap();
        assert!(o.len() < text.len() / 4, "{comp:?}: {}", o.len());
        let o = seal(&keyring, &opts(comp, 64 << 10), &random, &rng).unwrap();
        // Stored chunks: 21 bytes per chunk of overhead, nothing else.
        assert_eq!(o.len(), HEADER_LEN + random.len() + 16 * 21, "{comp:?}");
        assert_eq!(open(&keyring, &o).unwrap(), random);
    }
}

#[test]
fn exact_multiple_of_chunk_size() {
    let keyring = keyring(1);
    let plain = data(3, 4096, 2);
    let o = seal(
        &keyring,
        &opts(Compression::Lz4, 1024),
        &plain,
        &SystemRandom::new(),
    )
    .unwrap();
    let frames = chunk_frames(&o);
    assert_eq!(frames.len(), 4);
    // Only the last is final; dropping it leaves a truncated object.
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(o[f.start] & 0x80 != 0, i == 3);
    }
    assert_eq!(
        open(&keyring, &o[..frames[3].start]).unwrap_err(),
        CryptoError::Truncated {
            len: frames[3].start as u64
        }
    );
    assert_eq!(open(&keyring, &o).unwrap(), plain);
}

#[test]
fn setting_the_final_flag_early_fails() {
    let keyring = keyring(1);
    let plain = data(3, 4096, 2);
    let o = seal(
        &keyring,
        &opts(Compression::Lz4, 1024),
        &plain,
        &SystemRandom::new(),
    )
    .unwrap();
    let frames = chunk_frames(&o);
    // Mark chunk 1 final and cut the object after it: still no valid final chunk.
    let mut bad = o[..frames[1].end].to_vec();
    bad[frames[1].start] |= 0x80;
    assert!(matches!(
        open(&keyring, &bad),
        Err(CryptoError::Corrupted { chunk: 1, .. })
    ));
}

#[test]
fn hostile_length_field_is_refused_before_allocating() {
    let keyring = keyring(1);
    let o = seal(
        &keyring,
        &opts(Compression::Lz4, 1024),
        b"x",
        &SystemRandom::new(),
    )
    .unwrap();
    for field in [0x7fff_ffffu32, 0xffff_ffff, 0, 16, 1024 + 18] {
        let mut bad = o.clone();
        bad[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&field.to_be_bytes());
        let err = open(&keyring, &bad).unwrap_err();
        assert!(
            matches!(err, CryptoError::Corrupted { chunk: 0, ref reason } if reason.contains("length field")),
            "{field:#x}: {err}"
        );
        let mut opener = Opener::new(&keyring);
        assert_eq!(opener.feed(&bad[..HEADER_LEN + 4]).unwrap_err(), err);
        // The error sticks.
        assert_eq!(opener.feed(b"more").unwrap_err(), err);
        assert_eq!(opener.finish().unwrap_err(), err);
    }
}

#[test]
fn header_errors() {
    let keyring = keyring(1);
    let o = seal(
        &keyring,
        &SealOptions::default(),
        b"data",
        &SystemRandom::new(),
    )
    .unwrap();
    assert_eq!(
        open(&keyring, b"plain text WAL").unwrap_err(),
        CryptoError::NotAnObject
    );
    assert_eq!(
        open(&keyring, b"").unwrap_err(),
        CryptoError::Truncated { len: 0 }
    );
    assert_eq!(
        open(&keyring, b"KLIO").unwrap_err(),
        CryptoError::Truncated { len: 4 }
    );
    // Streaming notices a wrong magic from the first byte.
    assert_eq!(
        Opener::new(&keyring).feed(b"X").unwrap_err(),
        CryptoError::NotAnObject
    );
    let mut v2 = o.clone();
    v2[8] = 2;
    assert_eq!(
        open(&keyring, &v2).unwrap_err(),
        CryptoError::UnsupportedVersion {
            version: 2,
            supported: 1
        }
    );
    let mut cipher = o.clone();
    cipher[9] = 7;
    assert!(matches!(
        open(&keyring, &cipher),
        Err(CryptoError::UnsupportedAlgorithm {
            what: "cipher",
            value: 7
        })
    ));
    let mut comp = o.clone();
    comp[10] = 9;
    assert!(matches!(
        open(&keyring, &comp),
        Err(CryptoError::UnsupportedAlgorithm {
            what: "compression",
            value: 9
        })
    ));
    for cs in [0u32, MAX_CHUNK_SIZE as u32 + 1] {
        let mut bad = o.clone();
        bad[12..16].copy_from_slice(&cs.to_be_bytes());
        assert!(matches!(
            open(&keyring, &bad),
            Err(CryptoError::HeaderCorrupted { .. })
        ));
    }
    // A valid but different compression code or chunk size: the key slot no longer opens.
    let mut other = o.clone();
    other[10] = 2;
    assert_eq!(
        open(&keyring, &other).unwrap_err(),
        CryptoError::WrongKey {
            key_id: keyring.primary_id()
        }
    );
}

#[test]
fn unknown_and_wrong_keys() {
    let a = keyring(1);
    let b = keyring(2);
    let o = seal(&a, &SealOptions::default(), b"secret", &SystemRandom::new()).unwrap();
    let err = open(&b, &o).unwrap_err();
    assert_eq!(
        err,
        CryptoError::UnknownKey {
            key_id: a.primary_id()
        }
    );
    let msg = err.to_string();
    assert!(msg.contains(&a.primary_id().to_string()), "{msg}");
    assert!(msg.contains("add the key file"), "{msg}");
    assert_eq!(Opener::new(&b).feed(&o).unwrap_err(), err);
    assert_eq!(object_key_id(&o).unwrap(), a.primary_id());

    // A damaged wrapped data key: the id matches but the slot does not open.
    let mut bad = o.clone();
    bad[100] ^= 0x10;
    assert_eq!(
        open(&a, &bad).unwrap_err(),
        CryptoError::WrongKey {
            key_id: a.primary_id()
        }
    );
    // A passphrase with another salt is another key.
    let p = klio_crypto::KdfParams::INSECURE_FAST_FOR_TESTS;
    let k1 = Keyring::new(Kek::from_passphrase(b"pw", &[1; 16], &p).unwrap());
    let k2 = Keyring::new(Kek::from_passphrase(b"pw", &[2; 16], &p).unwrap());
    let o = seal(
        &k1,
        &SealOptions::default(),
        b"secret",
        &SystemRandom::new(),
    )
    .unwrap();
    assert!(matches!(open(&k2, &o), Err(CryptoError::UnknownKey { .. })));
    assert_eq!(open(&k1, &o).unwrap(), b"secret");
}

#[test]
fn rotation_rewrites_only_the_key_slot() {
    let rng = SystemRandom::new();
    let old = kek(1);
    let new = kek(2);
    let mut keyring = Keyring::new(old.clone());
    let plain = data(9, 200_000, 2);
    let mut object = seal(&keyring, &SealOptions::default(), &plain, &rng).unwrap();
    let before = object.clone();

    // Add the new key and make it primary; old objects stay readable throughout.
    keyring.add(new.clone());
    keyring.set_primary(&new.id()).unwrap();
    assert_eq!(open(&keyring, &object).unwrap(), plain);

    // The rewrap needs only the header, and returns a slot of the same size.
    let slot = rewrap(&keyring, &object[..HEADER_LEN], &new.id(), &rng).unwrap();
    assert_eq!(slot.len(), key_slot_range().len());
    object[key_slot_range()].copy_from_slice(&slot);
    assert_eq!(object_key_id(&object).unwrap(), new.id());
    assert_eq!(object[..48], before[..48]);
    assert_eq!(object[HEADER_LEN..], before[HEADER_LEN..]);

    // The old key is no longer needed...
    keyring.remove(&old.id()).unwrap();
    assert_eq!(open(&keyring, &object).unwrap(), plain);
    assert_eq!(open(&Keyring::new(new.clone()), &object).unwrap(), plain);
    // ...and no longer enough.
    assert_eq!(
        open(&Keyring::new(old.clone()), &object).unwrap_err(),
        CryptoError::UnknownKey { key_id: new.id() }
    );
    // Rewrap needs both keys.
    assert_eq!(
        rewrap(&keyring, &object, &old.id(), &rng).unwrap_err(),
        CryptoError::UnknownKey { key_id: old.id() }
    );
    assert_eq!(
        rewrap(&Keyring::new(old.clone()), &object, &old.id(), &rng).unwrap_err(),
        CryptoError::UnknownKey { key_id: new.id() }
    );
    // Rewrapping with the same key again is harmless (fresh nonce, same data key).
    let again = rewrap(&keyring, &object, &new.id(), &rng).unwrap();
    assert_ne!(&again[..], &object[key_slot_range()]);
    object[key_slot_range()].copy_from_slice(&again);
    assert_eq!(open(&keyring, &object).unwrap(), plain);
    // A short prefix is refused.
    assert_eq!(
        rewrap(&keyring, &object[..100], &new.id(), &rng).unwrap_err(),
        CryptoError::Truncated { len: 100 }
    );
}

#[test]
fn invalid_options() {
    let keyring = keyring(1);
    let rng = SystemRandom::new();
    for o in [
        opts(Compression::Lz4, 0),
        opts(Compression::Lz4, MAX_CHUNK_SIZE + 1),
        opts(Compression::Zstd { level: 23 }, 1024),
        opts(Compression::Zstd { level: -8 }, 1024),
    ] {
        assert!(matches!(
            seal(&keyring, &o, b"x", &rng),
            Err(CryptoError::InvalidOptions { .. })
        ));
    }
    assert_eq!(SealOptions::default(), opts(Compression::Lz4, 32 << 10));
}

#[test]
fn streaming_reports_header_once_keyed() {
    let keyring = keyring(1);
    let o = seal(
        &keyring,
        &opts(Compression::Lz4, 100),
        &data(4, 1000, 2),
        &SystemRandom::new(),
    )
    .unwrap();
    let mut opener = Opener::new(&keyring);
    assert!(opener.feed(&o[..HEADER_LEN - 1]).unwrap().is_empty());
    assert!(opener.header().is_none());
    assert!(
        opener
            .feed(&o[HEADER_LEN - 1..HEADER_LEN])
            .unwrap()
            .is_empty()
    );
    assert_eq!(opener.header().unwrap().chunk_size(), 100);
    let out = opener.feed(&o[HEADER_LEN..]).unwrap();
    assert_eq!(out.len(), 1000);
    assert_eq!(opener.feed(b"").unwrap(), b"");
    assert_eq!(
        opener.feed(b"!").unwrap_err(),
        CryptoError::TrailingData {
            offset: o.len() as u64
        }
    );
}

#[test]
fn errors_say_what_to_do() {
    let id = kek(1).id();
    for e in [
        CryptoError::NotAnObject,
        CryptoError::UnknownKey { key_id: id },
        CryptoError::WrongKey { key_id: id },
        CryptoError::Corrupted {
            chunk: 3,
            reason: "x".into(),
        },
        CryptoError::Truncated { len: 10 },
        CryptoError::TrailingData { offset: 10 },
    ] {
        let m = e.to_string();
        assert!(
            m.contains("restore") || m.contains("add the key") || m.contains("check"),
            "{m}"
        );
    }
}
