#![no_main]
//! The cluster's block-hash key file is read back from disk by every backup session: any
//! bytes must give the key or a clear error, never a panic. Inputs whose first byte is odd are
//! wrapped in a valid plain hash-key object first. A key written by the store reads back.

use std::path::Path;

use klio_crypto::{BLOCK_HASH_KEY_LEN, BlockHashAlgorithm, SystemRandom};
use klio_store::backup::{ObjectKind, encode_object, parse_hash_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let path = Path::new("block-hash-key");
    let rng = SystemRandom::new();
    let object = if mode & 1 == 1 {
        encode_object(None, ObjectKind::HashKey, "", rest, &rng, path).expect("encodes")
    } else {
        rest.to_vec()
    };
    if let Ok(key) = parse_hash_key(&object, path, None) {
        // A wrapped input is the key itself: only 32 bytes (HMAC-SHA-256, as written before
        // there was a choice) or 32 and a known algorithm are one.
        assert!(
            mode & 1 == 0
                || rest.len() == BLOCK_HASH_KEY_LEN
                || (rest.len() == BLOCK_HASH_KEY_LEN + 1
                    && BlockHashAlgorithm::from_u8(rest[BLOCK_HASH_KEY_LEN]).is_some())
        );
        let _ = key.hash(b"a block");
    }
    if let Ok(bytes) = <[u8; BLOCK_HASH_KEY_LEN]>::try_from(rest) {
        let object =
            encode_object(None, ObjectKind::HashKey, "", &bytes, &rng, path).expect("encodes");
        let key = parse_hash_key(&object, path, None).expect("a written key reads");
        assert_eq!(key.to_bytes(), bytes);
        assert_eq!(key.algorithm(), BlockHashAlgorithm::HmacSha256);
    }
});
