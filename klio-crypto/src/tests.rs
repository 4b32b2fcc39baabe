//! Tests that need the crate's internals: byte-exact streaming, exhaustive damage.

use proptest::prelude::*;
use ring::rand::SystemRandom;

use crate::format::{HEADER_LEN, IMMUTABLE_HEADER_LEN, ObjectHeader};
use crate::keys::{Kek, Keyring};
use crate::seal::{Compression, SealOptions, Sealer};
use crate::{CompressionKind, CryptoError, Opener, open, seal};

fn keyring() -> Keyring {
    Keyring::new(Kek::from_bytes(&[5; 32]).unwrap())
}

fn sealer(opts: &SealOptions) -> Sealer {
    let immutable: [u8; IMMUTABLE_HEADER_LEN] =
        ObjectHeader::encode_immutable(CompressionKind::Lz4, 0, opts.chunk_size as u32, &[3; 16]);
    Sealer::from_parts(immutable, &[4; 32], keyring().primary_id(), opts).unwrap()
}

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Half compressible, half not.
            if (i / 97) % 2 == 0 {
                b'a' + (i % 7) as u8
            } else {
                s as u8
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Streaming seal with any split points produces exactly the bytes of the one-shot seal.
    #[test]
    fn streaming_seal_is_byte_identical(
        seed: u64, len in 0usize..40_000, cs in 1usize..5000,
        comp in prop_oneof![Just(Compression::None), Just(Compression::Lz4),
                            (-3i32..=5).prop_map(|level| Compression::Zstd { level })],
        cuts in prop::collection::vec(0usize..20_000, 0..30),
    ) {
        let opts = SealOptions { compression: comp, chunk_size: cs };
        let plain = pseudo_random(seed, len);
        let mut one_shot = Vec::new();
        sealer(&opts).seal_all(&plain, &mut one_shot).unwrap();
        let mut streamed = Vec::new();
        let mut s = sealer(&opts);
        let mut rest = &plain[..];
        for c in cuts {
            let (a, b) = rest.split_at(c.min(rest.len()));
            let emitted = s.update(a).unwrap();
            // Whatever update emits is a prefix of the object.
            streamed.extend_from_slice(&emitted);
            prop_assert_eq!(&one_shot[..streamed.len()], &streamed[..]);
            rest = b;
        }
        s.update_into(rest, &mut streamed).unwrap();
        s.finish_into(&mut streamed).unwrap();
        prop_assert_eq!(one_shot, streamed);
    }
}

/// Every single-bit flip of small objects (several chunks, each compression) fails to open,
/// one-shot and streaming.
#[test]
fn every_bit_flip_of_small_objects_fails() {
    let keyring = keyring();
    let rng = SystemRandom::new();
    for comp in [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd { level: 1 },
    ] {
        for len in [0, 1, 40, 150] {
            let opts = SealOptions {
                compression: comp,
                chunk_size: 64,
            };
            let object = seal(&keyring, &opts, &pseudo_random(len as u64, len), &rng).unwrap();
            for bit in 0..object.len() * 8 {
                let mut bad = object.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    open(&keyring, &bad).is_err(),
                    "{comp:?} len {len} bit {bit}"
                );
                let mut opener = Opener::new(&keyring);
                let fed = opener.feed(&bad);
                assert!(
                    fed.is_err() || opener.finish().is_err(),
                    "{comp:?} len {len} bit {bit} (streaming)"
                );
            }
        }
    }
}

/// Every truncation of small objects fails, one-shot and streaming, and the streaming opener
/// never returns more plaintext than was authentically there.
#[test]
fn every_truncation_of_small_objects_fails() {
    let keyring = keyring();
    let rng = SystemRandom::new();
    for comp in [Compression::None, Compression::Lz4] {
        let plain = pseudo_random(7, 300);
        let opts = SealOptions {
            compression: comp,
            chunk_size: 64,
        };
        let object = seal(&keyring, &opts, &plain, &rng).unwrap();
        for at in 0..object.len() {
            let cut = &object[..at];
            assert!(open(&keyring, cut).is_err(), "{comp:?} cut at {at}");
            let mut opener = Opener::new(&keyring);
            let out = opener.feed(cut);
            if let Ok(out) = out {
                assert!(plain.starts_with(&out));
                assert!(out.len() < plain.len());
            }
            let err = opener.finish().unwrap_err();
            if at >= HEADER_LEN {
                assert_eq!(err, CryptoError::Truncated { len: at as u64 });
            }
        }
    }
}
