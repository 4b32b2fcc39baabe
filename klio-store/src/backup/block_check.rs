//! Whether a block's bytes are the block its hash names: decompressed (zstd, LZ4 or stored,
//! by `Block::decompress`), of its exact `plain_len`, with its keyed hash. The server checks
//! every block it receives and every block it verifies, so a bug or a hostile client cannot
//! poison the store.

use klio_crypto::BlockHashKey;
use klio_proto::klio::{Block, BlockDecodeError};

use super::error::BlockProblem;

pub use klio_proto::klio::MAX_BLOCK_LEN;

/// The block's plaintext, if `block` is what its hash names.
pub fn check_block(key: &BlockHashKey, block: &Block) -> Result<Vec<u8>, BlockProblem> {
    let plain = block.decompress().map_err(|e| match e {
        BlockDecodeError::TooLarge { plain_len } => BlockProblem::TooLarge { plain_len },
        BlockDecodeError::WrongLength { expected, actual } => {
            BlockProblem::WrongLength { expected, actual }
        }
        BlockDecodeError::NeedsDictionary => BlockProblem::NeedsDictionary,
        _ => BlockProblem::Undecompressible,
    })?;
    if !key.matches(&plain, &block.hash.0) {
        return Err(BlockProblem::HashMismatch);
    }
    Ok(plain)
}
