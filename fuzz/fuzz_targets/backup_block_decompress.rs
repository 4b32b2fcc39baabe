#![no_main]
//! Blocks arrive from clients (`PutBlock`) and from pack files (`GetBlocks`, restore): their
//! compressed bytes are hostile, and so is the dictionary a damaged store may hold.
//! Decompressing must give exactly `plain_len` bytes or a clear error, never a panic, for
//! every compression, with or without a dictionary. What `Block::compress` and
//! `Block::compress_against` make decompresses back to the plaintext, and so does an LZ4
//! block of it.

use bytes::Bytes;
use klio_proto::klio::{
    Block, BlockCompression, BlockDictionary, BlockHash, MAX_BLOCK_LEN, MAX_DICTIONARY_LEN,
};
use libfuzzer_sys::fuzz_target;

const COMPRESSIONS: [BlockCompression; 4] = [
    BlockCompression::None,
    BlockCompression::Lz4,
    BlockCompression::Zstd,
    BlockCompression::Lz4Dictionary,
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let (head, rest) = data.split_at(5);
    let compression = COMPRESSIONS[usize::from(head[0]) % COMPRESSIONS.len()];
    // A declared length from anywhere in 0..2^24, so both lengths that fit and lengths that
    // are too large (above MAX_BLOCK_LEN) are tried.
    let plain_len = u32::from_le_bytes([head[1], head[2], head[3], 0]);
    // The dictionary: the first head[4] * 256 bytes of the rest (none when that is 0).
    let dictionary_len = (usize::from(head[4]) * 256)
        .min(rest.len())
        .min(MAX_DICTIONARY_LEN);
    let (dictionary, body) = rest.split_at(dictionary_len);
    let dictionary = BlockDictionary::new(Bytes::copy_from_slice(dictionary)).ok();
    let block = Block {
        hash: BlockHash([0; 32]),
        plain_len,
        compression,
        data: Bytes::copy_from_slice(body),
    };
    for given in [None, dictionary.as_ref()] {
        let decompressed = block.decompress_with(given);
        if let Ok(plain) = &decompressed {
            assert_eq!(plain.len(), plain_len as usize);
            assert!(plain_len <= MAX_BLOCK_LEN);
        }
        // Into a buffer holding other bytes (as a restore's reused one does): the same
        // answer, and on success the same bytes.
        if plain_len <= MAX_BLOCK_LEN {
            let mut out = vec![0xaa; plain_len as usize];
            match (&decompressed, block.decompress_into(given, &mut out)) {
                (Ok(plain), Ok(())) => assert_eq!(&out, plain),
                (Err(a), Err(b)) => assert_eq!(*a, b),
                (a, b) => panic!("decompress_with gave {a:?}, decompress_into {b:?}"),
            }
        }
    }

    if body.len() <= MAX_BLOCK_LEN as usize {
        let packed = Block::compress(BlockHash([0; 32]), Bytes::copy_from_slice(body));
        assert_eq!(
            packed
                .decompress()
                .expect("a compressed block decompresses"),
            body
        );
        let lz4 = Block {
            hash: BlockHash([0; 32]),
            plain_len: body.len() as u32,
            compression: BlockCompression::Lz4,
            data: Bytes::from(lz4_flex::block::compress(body)),
        };
        assert_eq!(lz4.decompress().expect("an LZ4 block decompresses"), body);
        if let Some(dictionary) = &dictionary {
            let against = Block::compress_against(
                BlockHash([0; 32]),
                Bytes::copy_from_slice(body),
                dictionary,
            );
            assert_eq!(
                against
                    .decompress_with(Some(dictionary))
                    .expect("a block compressed against a dictionary decompresses with it"),
                body
            );
        }
    }
});
