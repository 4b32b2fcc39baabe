//! One round of the dedup exchange: the distinct blocks cut since the last round, and the
//! files that may be announced once the server said which of those blocks it holds.

use std::collections::HashSet;

use bytes::Bytes;
use klio_proto::klio::{Block, BlockCompression, BlockDictionary, BlockHash, FileEntry};

/// When a batch is full and must be exchanged before more blocks are cut. Whichever limit is
/// reached first ends the batch, so a batch holds at most about `max_bytes` of block data,
/// `max_hashes` hashes and `max_files` entries, whatever the files look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// Distinct block hashes (the `HaveBlocks` message's length).
    pub(crate) max_hashes: usize,
    /// Plaintext bytes of the distinct blocks.
    pub(crate) max_bytes: usize,
    /// File entries waiting for the batch (many small or empty files, directories).
    pub(crate) max_files: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_hashes: 4096,
            max_bytes: 16 << 20,
            max_files: 4096,
        }
    }
}

/// A block cut from a file whose fate (held by the server, or to be sent) is not known yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingBlock {
    /// The keyed hash of `plain`.
    pub(crate) hash: BlockHash,
    /// The block's bytes.
    pub(crate) plain: Bytes,
}

/// The blocks cut since the last exchange (each hash once) and the files that end in them.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    blocks: Vec<PendingBlock>,
    seen: HashSet<BlockHash>,
    plain_bytes: usize,
    files: Vec<FileEntry>,
}

/// The server answered a different number of flags than hashes were asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Klio server answered {answered} flags for {asked} block hashes; check that client and server run the same Klio version"
)]
pub struct HeldCountMismatch {
    /// Hashes asked for.
    pub asked: usize,
    /// Flags answered.
    pub answered: usize,
}

/// A batch once the server said what it holds: the blocks to send, then the files to announce.
#[derive(Debug, Default)]
pub(crate) struct ResolvedBatch {
    /// The blocks the server does not hold, in the order they were cut, to [`compress`] and
    /// send.
    pub(crate) new_blocks: Vec<PendingBlock>,
    /// Plaintext bytes of `new_blocks`.
    pub(crate) new_plain_bytes: u64,
    /// The files whose blocks are now all held or in `new_blocks`, in archive order.
    pub(crate) files: Vec<FileEntry>,
}

impl Batch {
    /// Adds a block unless the batch has it already (a file repeating itself, or two equal
    /// files); returns whether it was new to the batch.
    pub(crate) fn add_block(&mut self, hash: BlockHash, plain: Bytes) -> bool {
        if !self.seen.insert(hash) {
            return false;
        }
        self.plain_bytes += plain.len();
        self.blocks.push(PendingBlock { hash, plain });
        true
    }

    /// Adds a file all of whose blocks are held by this batch or by earlier ones.
    pub(crate) fn add_file(&mut self, entry: FileEntry) {
        self.files.push(entry);
    }

    /// Whether one of `limits` is reached.
    pub(crate) fn is_full(&self, limits: &BatchLimits) -> bool {
        self.blocks.len() >= limits.max_hashes
            || self.plain_bytes >= limits.max_bytes
            || self.files.len() >= limits.max_files
    }

    /// Whether there is nothing to exchange.
    pub(crate) fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.files.is_empty()
    }

    /// The distinct blocks, in the order they were cut.
    pub(crate) fn blocks(&self) -> &[PendingBlock] {
        &self.blocks
    }

    /// The files waiting for this batch, in archive order.
    #[cfg(test)]
    pub(crate) fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// The hashes to ask the server about (`HaveBlocks`), one per distinct block.
    pub(crate) fn hashes(&self) -> Vec<BlockHash> {
        self.blocks.iter().map(|b| b.hash).collect()
    }

    /// Applies the server's answer (one flag per [`Batch::hashes`], in order): the blocks not
    /// held are to be sent, and every file of the batch may then be announced.
    pub(crate) fn resolve(self, held: &[bool]) -> Result<ResolvedBatch, HeldCountMismatch> {
        if held.len() != self.blocks.len() {
            return Err(HeldCountMismatch {
                asked: self.blocks.len(),
                answered: held.len(),
            });
        }
        let mut new_plain_bytes = 0;
        let new_blocks = self
            .blocks
            .into_iter()
            .zip(held)
            .filter(|(_, held)| !**held)
            .map(|(block, _)| {
                new_plain_bytes += block.plain.len() as u64;
                block
            })
            .collect();
        Ok(ResolvedBatch {
            new_blocks,
            new_plain_bytes,
            files: self.files,
        })
    }
}

/// The block as sent: compressed with `codec` when that is smaller, else the plaintext as is.
/// LZ4 compresses against the cluster's `dictionary` when it has one.
pub(crate) fn compress(
    block: PendingBlock,
    codec: BlockCompression,
    dictionary: Option<&BlockDictionary>,
) -> Block {
    match (codec, dictionary) {
        (BlockCompression::Lz4, Some(dictionary)) => {
            Block::compress_against(block.hash, block.plain, dictionary)
        }
        _ => Block::compress_with(block.hash, block.plain, codec),
    }
}

/// [`compress`] of every block, in order, on `jobs` threads (off the async runtime) when
/// there is more than one job and more than one block.
pub(crate) async fn compress_all(
    blocks: Vec<PendingBlock>,
    jobs: usize,
    codec: BlockCompression,
    dictionary: Option<BlockDictionary>,
) -> Vec<Block> {
    let compress = move |b| compress(b, codec, dictionary.as_ref());
    if jobs <= 1 || blocks.len() <= 1 {
        return blocks.into_iter().map(compress).collect();
    }
    let compressing = tokio::task::spawn_blocking(move || {
        let per = blocks.len().div_ceil(jobs);
        let mut parts: Vec<Vec<PendingBlock>> = Vec::with_capacity(jobs);
        let mut rest = blocks.into_iter();
        loop {
            let part: Vec<PendingBlock> = rest.by_ref().take(per).collect();
            if part.is_empty() {
                break;
            }
            parts.push(part);
        }
        let compress = &compress;
        std::thread::scope(|s| {
            let running: Vec<_> = parts
                .into_iter()
                .map(|part| s.spawn(move || part.into_iter().map(compress).collect::<Vec<_>>()))
                .collect();
            running
                .into_iter()
                .flat_map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Vec<Block>>()
        })
    });
    match compressing.await {
        Ok(blocks) => blocks,
        // Only a panic (passed on) or a runtime shutting down ends the task early.
        Err(e) => std::panic::resume_unwind(
            e.try_into_panic()
                .unwrap_or_else(|_| Box::new("block compression was cancelled")),
        ),
    }
}
