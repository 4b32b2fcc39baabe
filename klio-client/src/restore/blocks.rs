//! Fetching a file's blocks with `GetBlocks` and checking each one before its bytes are used.
//!
//! A block is used only when it is the block asked for (same hash, in order), it decompresses
//! to exactly the length its place in the file needs, and its plaintext has its keyed hash
//! ([`BlockHashKey::matches`]): a bug or a damaged store can then never put wrong bytes in a
//! restored file unnoticed.

use std::fmt;

use klio_crypto::BlockHashKey;
use klio_proto::klio::{Block, BlockDecodeError, BlockDictionary, BlockHash, Message};

use crate::server_link::{FramedRecv, FramedSend, ServerLinkError};

/// The most hashes in one `GetBlocks` request.
const MAX_HASHES_PER_REQUEST: usize = 4096;

/// The most block bytes in one request. A worker holds two requests' worth: the blocks it is
/// writing and those of the next request, arriving meanwhile.
const MAX_BYTES_IN_FLIGHT: u64 = 8 << 20;

/// Hashes per request for blocks of `block_size` bytes: at most
/// [`MAX_HASHES_PER_REQUEST`], and at most [`MAX_BYTES_IN_FLIGHT`] of blocks.
pub(super) fn hashes_per_request(block_size: u32) -> usize {
    let by_bytes = MAX_BYTES_IN_FLIGHT / u64::from(block_size.max(1));
    (by_bytes as usize).clamp(1, MAX_HASHES_PER_REQUEST)
}

/// What is wrong with a block the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockFault {
    /// The server sent another block than the one asked for.
    NotAskedFor {
        /// The hash asked for.
        asked: BlockHash,
        /// The hash sent.
        sent: BlockHash,
    },
    /// The block does not decompress to its stated length.
    Undecodable {
        /// Its hash.
        hash: BlockHash,
    },
    /// The block is compressed against the cluster's dictionary, which the server did not
    /// send.
    NeedsDictionary {
        /// Its hash.
        hash: BlockHash,
    },
    /// Its length is not the one its place in the file needs.
    WrongLength {
        /// Its hash.
        hash: BlockHash,
        /// The length needed.
        expected: u64,
        /// Its length.
        actual: u64,
    },
    /// Its plaintext does not have its hash.
    HashMismatch {
        /// The hash.
        hash: BlockHash,
    },
}

impl fmt::Display for BlockFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAskedFor { asked, sent } => {
                write!(f, "the server sent block {sent} when asked for {asked}")
            }
            Self::Undecodable { hash } => write!(f, "block {hash} does not decompress"),
            Self::NeedsDictionary { hash } => write!(
                f,
                "block {hash} is compressed against the cluster's block dictionary, which the \
                 server did not send (its block-dictionary file is missing)"
            ),
            Self::WrongLength {
                hash,
                expected,
                actual,
            } => write!(
                f,
                "block {hash} has {actual} bytes where the file needs {expected}"
            ),
            Self::HashMismatch { hash } => {
                write!(
                    f,
                    "block {hash} does not match its hash (wrong key or damaged data)"
                )
            }
        }
    }
}

/// Decompresses `block` into `out`, its place in the file (as many bytes as the block must
/// have there), checked to be the block `asked` for, of that length, with that keyed hash;
/// with the cluster's `dictionary` if it is compressed against it. On a fault, `out` holds
/// bytes that must not be used.
pub(super) fn check_into(
    key: &BlockHashKey,
    dictionary: Option<&BlockDictionary>,
    asked: &BlockHash,
    block: &Block,
    out: &mut [u8],
) -> Result<(), BlockFault> {
    if block.hash != *asked {
        return Err(BlockFault::NotAskedFor {
            asked: *asked,
            sent: block.hash,
        });
    }
    let hash = block.hash;
    if u64::from(block.plain_len) != out.len() as u64 {
        return Err(BlockFault::WrongLength {
            hash,
            expected: out.len() as u64,
            actual: u64::from(block.plain_len),
        });
    }
    block
        .decompress_into(dictionary, out)
        .map_err(|e| match e {
            BlockDecodeError::NeedsDictionary => BlockFault::NeedsDictionary { hash },
            _ => BlockFault::Undecodable { hash },
        })?;
    if !key.matches(out, &hash.0) {
        return Err(BlockFault::HashMismatch { hash });
    }
    Ok(())
}

/// The length of block `index` of a file of `size` bytes cut every `block_size` bytes.
pub(super) fn block_len(index: usize, size: u64, block_size: u32) -> u64 {
    let start = index as u64 * u64::from(block_size);
    size.saturating_sub(start).min(u64::from(block_size))
}

/// One catalog stream asking for blocks.
#[derive(Debug)]
pub(super) struct BlockStream {
    send: FramedSend,
    recv: FramedRecv,
}

impl BlockStream {
    pub(super) fn new(send: FramedSend, recv: FramedRecv) -> Self {
        Self { send, recv }
    }

    /// The blocks of `hashes` (at most [`MAX_HASHES_PER_REQUEST`]), as the server sent them,
    /// in order; unchecked (see [`check_into`]).
    pub(super) async fn fetch(&mut self, hashes: &[BlockHash]) -> Result<Vec<Block>, FetchFailure> {
        self.request(hashes).await?;
        self.receive(hashes.len()).await
    }

    /// Asks for the blocks of `hashes` (at most [`MAX_HASHES_PER_REQUEST`]); [`Self::receive`]
    /// takes them. The server answers requests in order, so a next request may go out before
    /// the answer to the last one has arrived.
    pub(super) async fn request(&mut self, hashes: &[BlockHash]) -> Result<(), FetchFailure> {
        self.send
            .send(&Message::GetBlocks {
                hashes: hashes.to_vec(),
            })
            .await
            .map_err(|source| FetchFailure {
                received: 0,
                source,
            })
    }

    /// The `count` blocks answering the oldest request not yet received, in order; unchecked
    /// (see [`check_into`]).
    pub(super) async fn receive(&mut self, count: usize) -> Result<Vec<Block>, FetchFailure> {
        let failed = |received: usize, source| FetchFailure { received, source };
        let mut blocks = Vec::with_capacity(count);
        while blocks.len() < count {
            match self.recv.recv().await {
                Ok(Some(Message::BlockData { block })) => blocks.push(block),
                Ok(Some(other)) => {
                    return Err(failed(
                        blocks.len(),
                        ServerLinkError::Unexpected(format!(
                            "in answer to GetBlocks: message {:#04x}",
                            other.tag()
                        )),
                    ));
                }
                Ok(None) => return Err(failed(blocks.len(), ServerLinkError::Closed)),
                Err(e) => return Err(failed(blocks.len(), e)),
            }
        }
        Ok(blocks)
    }
}

/// A `GetBlocks` request failed after `received` of its blocks arrived.
#[derive(Debug)]
pub(super) struct FetchFailure {
    /// Blocks received before the failure: the next one is where it failed.
    pub(super) received: usize,
    /// Why.
    pub(super) source: ServerLinkError,
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use klio_crypto::BlockHashAlgorithm;

    use super::*;

    fn block(key: &BlockHashKey, plain: &[u8], compress: bool) -> Block {
        let (compression, data) = if compress {
            (
                klio_proto::klio::BlockCompression::Lz4,
                Bytes::from(lz4_flex::block::compress(plain)),
            )
        } else {
            (
                klio_proto::klio::BlockCompression::None,
                Bytes::copy_from_slice(plain),
            )
        };
        Block {
            hash: BlockHash(key.hash(plain)),
            plain_len: plain.len() as u32,
            compression,
            data,
        }
    }

    #[test]
    fn a_block_is_used_only_with_its_length_and_keyed_hash() {
        let key = BlockHashKey::new(BlockHashAlgorithm::Blake3, [5; 32]);
        let plain = vec![7u8; 8192];
        for compress in [true, false] {
            let b = block(&key, &plain, compress);
            // Into a buffer that held other bytes: all of them are replaced.
            let mut out = vec![1u8; 8192];
            check_into(&key, None, &b.hash, &b, &mut out).unwrap();
            assert_eq!(out, plain);
            assert!(matches!(
                check_into(&key, None, &b.hash, &b, &mut [0; 4096]),
                Err(BlockFault::WrongLength { .. })
            ));
            let other_key = BlockHashKey::new(BlockHashAlgorithm::Blake3, [6; 32]);
            assert!(matches!(
                check_into(&other_key, None, &b.hash, &b, &mut [0; 8192]),
                Err(BlockFault::HashMismatch { .. })
            ));
        }
        let mut flipped = block(&key, &plain, false);
        let mut data = flipped.data.to_vec();
        data[100] ^= 1;
        flipped.data = Bytes::from(data);
        assert!(matches!(
            check_into(&key, None, &flipped.hash, &flipped, &mut [0; 8192]),
            Err(BlockFault::HashMismatch { .. })
        ));
        let mut garbled = block(&key, &plain, true);
        garbled.data = Bytes::from_static(b"\xff\xff\xff");
        assert!(matches!(
            check_into(&key, None, &garbled.hash, &garbled, &mut [0; 8192]),
            Err(BlockFault::Undecodable { .. })
        ));
        let other = block(&key, b"another block", false);
        assert!(matches!(
            check_into(
                &key,
                None,
                &other.hash,
                &block(&key, &plain, false),
                &mut [0; 8192]
            ),
            Err(BlockFault::NotAskedFor { .. })
        ));
    }

    #[test]
    fn blocks_are_cut_at_fixed_offsets_and_requests_bound_the_bytes_in_flight() {
        assert_eq!(block_len(0, 100, 64), 64);
        assert_eq!(block_len(1, 100, 64), 36);
        assert_eq!(block_len(2, 100, 64), 0);
        assert_eq!(hashes_per_request(65_536), 128);
        assert_eq!(hashes_per_request(1024), 4096);
        assert_eq!(hashes_per_request(1 << 30), 1);
    }
}
