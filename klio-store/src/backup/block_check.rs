//! Whether a block's bytes are the block its hash names: decompressed (zstd, LZ4, LZ4
//! against the cluster's dictionary, or stored, by `Block::decompress_with`), of its exact
//! `plain_len`, with its keyed hash. The server checks every block it receives and every
//! block it verifies, so a bug or a hostile client cannot poison the store.

use klio_crypto::BlockHashKey;
use klio_proto::klio::{Block, BlockDecodeError, BlockDictionary};

use super::error::BlockProblem;

pub use klio_proto::klio::MAX_BLOCK_LEN;

/// How a cluster's blocks are named and compressed: what checking one needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockCoding {
    /// The key of the blocks' keyed hashes.
    pub hash_key: BlockHashKey,
    /// The dictionary blocks may be compressed against, once the cluster has one.
    pub dictionary: Option<BlockDictionary>,
}

/// The block's plaintext, if `block` is what its hash names.
pub fn check_block(coding: &BlockCoding, block: &Block) -> Result<Vec<u8>, BlockProblem> {
    let plain = block
        .decompress_with(coding.dictionary.as_ref())
        .map_err(|e| match e {
            BlockDecodeError::TooLarge { plain_len } => BlockProblem::TooLarge { plain_len },
            BlockDecodeError::WrongLength { expected, actual } => {
                BlockProblem::WrongLength { expected, actual }
            }
            BlockDecodeError::NeedsDictionary => BlockProblem::NeedsDictionary,
            _ => BlockProblem::Undecompressible,
        })?;
    if !coding.hash_key.matches(&plain, &block.hash.0) {
        return Err(BlockProblem::HashMismatch);
    }
    Ok(plain)
}
