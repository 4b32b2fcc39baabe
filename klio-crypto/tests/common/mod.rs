//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::ops::Range;

use klio_crypto::{Compression, HEADER_LEN, Kek, Keyring, SealOptions};
use proptest::prelude::*;

pub fn kek(byte: u8) -> Kek {
    Kek::from_bytes(&[byte; 32]).unwrap()
}

pub fn keyring(byte: u8) -> Keyring {
    Keyring::new(kek(byte))
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Test data of `len` bytes: `kind` 0 random, 1 repetitive text, 2 a mix of runs of zeros,
/// text and random bytes (WAL-like).
pub fn data(seed: u64, len: usize, kind: u8) -> Vec<u8> {
    const TEXT: &[u8] = b"INSERT INTO accounts VALUES (42, 'klio', now()); -- marker ";
    let mut s = seed;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let r = splitmix(&mut s);
        let run = match kind % 3 {
            0 => 0,
            1 => 1,
            _ => (r % 3) as u8,
        };
        let n = ((r >> 8) % 700 + 1) as usize;
        for i in 0..n {
            if out.len() == len {
                break;
            }
            match run {
                0 => out.push(splitmix(&mut s) as u8),
                1 => out.push(TEXT[(i + (r >> 20) as usize) % TEXT.len()]),
                _ => out.push(0),
            }
        }
    }
    out
}

pub fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        (-7i32..=6).prop_map(|level| Compression::Zstd { level }),
    ]
}

pub fn chunk_size() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=64, 65usize..=4096, 4097usize..=200_000]
}

pub fn opts(compression: Compression, chunk_size: usize) -> SealOptions {
    SealOptions {
        compression,
        chunk_size,
    }
}

/// Byte ranges of the chunk frames (length field and ciphertext) of a well-formed object.
pub fn chunk_frames(object: &[u8]) -> Vec<Range<usize>> {
    let mut frames = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < object.len() {
        let v = u32::from_be_bytes(object[pos..pos + 4].try_into().unwrap());
        let end = pos + 4 + (v & 0x7fff_ffff) as usize;
        frames.push(pos..end);
        pos = end;
    }
    assert_eq!(pos, object.len());
    frames
}

/// Splits `bytes` at the cut points (taken modulo the remaining length).
pub fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    for &c in cuts {
        if rest.is_empty() {
            break;
        }
        let n = c % (rest.len() + 1);
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out.push(rest);
    out
}
