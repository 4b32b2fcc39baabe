//! Property tests: round trips, and every kind of damage fails to open.

mod common;

use common::*;
use klio_crypto::{CryptoError, Keyring, Opener, Sealer, SystemRandom, open, seal};
use proptest::prelude::*;

/// Opens `object` by streaming it in `pieces`; the plaintext and the result of `finish`.
fn open_streaming(keyring: &Keyring, pieces: &[&[u8]]) -> Result<Vec<u8>, CryptoError> {
    let mut opener = Opener::new(keyring);
    let mut out = Vec::new();
    for p in pieces {
        opener.feed_into(p, &mut out)?;
    }
    opener.finish()?;
    Ok(out)
}

/// Both ways of opening fail (and the streaming one never hands out more than the one-shot
/// one would have: nothing, since it fails).
fn assert_fails(keyring: &Keyring, object: &[u8], what: &str) {
    let r = open(keyring, object);
    assert!(r.is_err(), "{what}: one-shot open succeeded");
    let s = open_streaming(keyring, &[object]);
    assert!(s.is_err(), "{what}: streaming open succeeded");
    let halves = object.split_at(object.len() / 2);
    let s = open_streaming(keyring, &[halves.0, halves.1]);
    assert!(s.is_err(), "{what}: streaming open in halves succeeded");
}

/// Small objects for the damage properties: several chunks, every compression.
fn small_object() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, usize)> {
    (
        any::<u64>(),
        0usize..6000,
        0u8..3,
        compression(),
        1usize..2048,
    )
        .prop_map(|(seed, len, kind, comp, cs)| {
            let plain = data(seed, len, kind);
            let object = seal(&keyring(1), &opts(comp, cs), &plain, &SystemRandom::new()).unwrap();
            (plain, object, cs)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_any_data_and_chunk_size(
        seed: u64, len in 0usize..300_000, kind in 0u8..3, comp in compression(),
        cs in chunk_size(),
    ) {
        // Keep one-byte chunks from making a test of 300,000 chunks in a debug build.
        let len = len.min(cs * 3000);
        let plain = data(seed, len, kind);
        let keyring = keyring(1);
        let object = seal(&keyring, &opts(comp, cs), &plain, &SystemRandom::new()).unwrap();
        prop_assert_eq!(open(&keyring, &object).unwrap(), plain);
    }

    #[test]
    fn streaming_open_with_any_split_points_equals_one_shot(
        seed: u64, len in 0usize..100_000, kind in 0u8..3, comp in compression(),
        cs in chunk_size(), cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let len = len.min(cs * 2000);
        let plain = data(seed, len, kind);
        let keyring = keyring(1);
        let object = seal(&keyring, &opts(comp, cs), &plain, &SystemRandom::new()).unwrap();
        let pieces = pieces(&object, &cuts);
        prop_assert_eq!(open_streaming(&keyring, &pieces).unwrap(), plain);
    }

    #[test]
    fn streaming_seal_with_any_split_points_opens(
        seed: u64, len in 0usize..100_000, kind in 0u8..3, comp in compression(),
        cs in chunk_size(), cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let len = len.min(cs * 2000);
        let plain = data(seed, len, kind);
        let keyring = keyring(1);
        let (mut sealer, mut object) =
            Sealer::new(&keyring, &opts(comp, cs), &SystemRandom::new()).unwrap();
        for p in pieces(&plain, &cuts) {
            sealer.update_into(p, &mut object).unwrap();
        }
        object.extend(sealer.finish().unwrap());
        // Full chunks, then one final chunk: as many chunks as the one-shot seal makes.
        prop_assert_eq!(chunk_frames(&object).len(), plain.len().div_ceil(cs).max(1));
        prop_assert_eq!(open(&keyring, &object).unwrap(), plain);
    }

    #[test]
    fn any_single_bit_flip_fails((_, object, _) in small_object(), bit: prop::sample::Index) {
        let bit = bit.index(object.len() * 8);
        let mut bad = object.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert_fails(&keyring(1), &bad, &format!("flip of bit {bit}"));
    }

    #[test]
    fn truncation_at_any_length_fails((_, object, _) in small_object(), at: prop::sample::Index) {
        let at = at.index(object.len());
        let keyring = keyring(1);
        assert_fails(&keyring, &object[..at], &format!("truncated to {at}"));
        // Streaming: whatever plaintext came out, finish() reports the truncation.
        let mut opener = Opener::new(&keyring);
        let fed = opener.feed(&object[..at]);
        let finished = opener.finish();
        prop_assert!(finished.is_err());
        if fed.is_ok() {
            prop_assert!(matches!(finished, Err(CryptoError::Truncated { len }) if len == at as u64),
                "{finished:?}");
        }
    }

    #[test]
    fn swapping_two_chunks_fails(
        (_, object, _) in small_object(), i: prop::sample::Index, j: prop::sample::Index,
    ) {
        let frames = chunk_frames(&object);
        prop_assume!(frames.len() >= 2);
        let (i, j) = (i.index(frames.len()), j.index(frames.len()));
        prop_assume!(i != j);
        let (a, b) = (frames[i.min(j)].clone(), frames[i.max(j)].clone());
        let mut bad = object[..a.start].to_vec();
        bad.extend_from_slice(&object[b.clone()]);
        bad.extend_from_slice(&object[a.end..b.start]);
        bad.extend_from_slice(&object[a.clone()]);
        bad.extend_from_slice(&object[b.end..]);
        prop_assert_eq!(bad.len(), object.len());
        assert_fails(&keyring(1), &bad, &format!("chunks {i} and {j} swapped"));
    }

    #[test]
    fn dropping_or_duplicating_a_chunk_fails(
        (_, object, _) in small_object(), i: prop::sample::Index,
    ) {
        let frames = chunk_frames(&object);
        let f = frames[i.index(frames.len())].clone();
        let mut dropped = object[..f.start].to_vec();
        dropped.extend_from_slice(&object[f.end..]);
        assert_fails(&keyring(1), &dropped, "chunk dropped");
        let mut dup = object[..f.end].to_vec();
        dup.extend_from_slice(&object[f.clone()]);
        dup.extend_from_slice(&object[f.end..]);
        assert_fails(&keyring(1), &dup, "chunk duplicated");
    }

    #[test]
    fn cutting_at_a_chunk_boundary_and_marking_it_final_fails(
        (_, object, _) in small_object(), i: prop::sample::Index,
    ) {
        let frames = chunk_frames(&object);
        prop_assume!(frames.len() >= 2);
        let f = frames[i.index(frames.len() - 1)].clone();
        let mut bad = object[..f.end].to_vec();
        bad[f.start] |= 0x80;
        assert_fails(&keyring(1), &bad, "cut and marked final");
    }

    #[test]
    fn splicing_a_chunk_from_another_object_fails(
        seed: u64, len in 1usize..6000, comp in compression(), cs in 1usize..2048,
        same_data: bool, i: prop::sample::Index,
    ) {
        let keyring = keyring(1);
        let rng = SystemRandom::new();
        let a_plain = data(seed, len, 2);
        let b_plain = if same_data { a_plain.clone() } else { data(seed ^ 1, len, 2) };
        let a = seal(&keyring, &opts(comp, cs), &a_plain, &rng).unwrap();
        let b = seal(&keyring, &opts(comp, cs), &b_plain, &rng).unwrap();
        let (fa, fb) = (chunk_frames(&a), chunk_frames(&b));
        let i = i.index(fa.len().min(fb.len()));
        // Same key, same chunk index, same options: only the object differs.
        let mut bad = a[..fa[i].start].to_vec();
        bad.extend_from_slice(&b[fb[i].clone()]);
        bad.extend_from_slice(&a[fa[i].end..]);
        assert_fails(&keyring, &bad, &format!("chunk {i} spliced"));
        // Nor can a key slot move between objects.
        let slot = klio_crypto::key_slot_range();
        let mut moved = a.clone();
        moved[slot.clone()].copy_from_slice(&b[slot]);
        let key_id = keyring.primary_id();
        prop_assert_eq!(open(&keyring, &moved).unwrap_err(), CryptoError::WrongKey { key_id });
    }

    #[test]
    fn appended_bytes_fail((_, object, _) in small_object(), extra in prop::collection::vec(any::<u8>(), 1..64)) {
        let mut bad = object.clone();
        bad.extend_from_slice(&extra);
        prop_assert_eq!(
            open(&keyring(1), &bad).unwrap_err(),
            CryptoError::TrailingData { offset: object.len() as u64 }
        );
        assert_fails(&keyring(1), &bad, "bytes appended");
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), cut: usize) {
        let keyring = keyring(1);
        let _ = open(&keyring, &bytes);
        let mut with_magic = klio_crypto::MAGIC.to_vec();
        with_magic.push(1);
        with_magic.extend_from_slice(&bytes);
        prop_assert!(open(&keyring, &with_magic).is_err());
        let (a, b) = bytes.split_at(cut % (bytes.len() + 1));
        let _ = open_streaming(&keyring, &[a, b]);
    }
}
