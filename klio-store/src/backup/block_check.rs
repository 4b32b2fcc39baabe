//! Whether a block's bytes are the block its hash names: decompressed (LZ4 or stored), of its
//! exact `plain_len`, with its keyed hash. The server checks every block it receives and every
//! block it verifies, so a bug or a hostile client cannot poison the store.

use klio_crypto::BlockHashKey;
use klio_proto::klio::{Block, BlockCompression};

use super::error::BlockProblem;

/// The largest plaintext of a block (the client cuts 64 KiB blocks; larger ones are refused
/// before anything is decompressed).
pub const MAX_BLOCK_LEN: u32 = 1 << 20;

/// The block's plaintext, if `block` is what its hash names.
pub fn check_block(key: &BlockHashKey, block: &Block) -> Result<Vec<u8>, BlockProblem> {
    if block.plain_len > MAX_BLOCK_LEN {
        return Err(BlockProblem::TooLarge {
            plain_len: block.plain_len,
        });
    }
    let plain = match block.compression {
        BlockCompression::Lz4 => lz4_flex::block::decompress(&block.data, block.plain_len as usize)
            .map_err(|_| BlockProblem::Undecompressible)?,
        BlockCompression::None => block.data.to_vec(),
        _ => return Err(BlockProblem::Undecompressible),
    };
    if plain.len() != block.plain_len as usize {
        return Err(BlockProblem::WrongLength {
            expected: block.plain_len,
            actual: plain.len(),
        });
    }
    if !key.matches(&plain, &block.hash.0) {
        return Err(BlockProblem::HashMismatch);
    }
    Ok(plain)
}
