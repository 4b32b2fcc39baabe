//! Verifying a backup: every block it refers to read through the store's checks, decompressed
//! and checked against its keyed hash, its file list streamed.

use std::ops::ControlFlow;
use std::sync::RwLock;

use klio_proto::klio::{BackupInfo, BlockHash};

use super::error::{BackupStoreError, BlockDamage};
use super::file_list::FileListItem;
use super::id::BackupId;
use super::index::BlockIndex;
use super::{BackupStore, check_block};

/// How a verification ended, when no damage was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// Every block was read and checked.
    Verified(Box<BackupInfo>),
    /// The progress callback asked to stop (nobody waits for the answer any more).
    Stopped,
}

/// How far a verification has come, in plaintext bytes of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Bytes verified.
    pub done: u64,
    /// Bytes in all (the backup's logical size).
    pub total: u64,
}

impl BackupStore {
    /// Reads every block of backup `id` through the checks; `progress` hears after each block
    /// and may stop the verification. A failure names the backup, the file and (in its source)
    /// the block and the pack.
    ///
    /// `index` is locked for reading one block at a time, so that a backup session can add
    /// packs to it while a long verification runs.
    pub fn verify(
        &self,
        index: &RwLock<BlockIndex>,
        id: &BackupId,
        progress: &mut dyn FnMut(VerifyProgress) -> ControlFlow<()>,
    ) -> Result<VerifyOutcome, BackupStoreError> {
        let info = self.entry(id)?;
        let coding = self.block_coding()?;
        let mut files = self.file_list(id)?;
        let mut blocks = self.block_reader();
        let mut done = 0u64;
        let total = info.logical_bytes;
        let mut path = String::new();
        let mut check = |path: &str, hashes: &[BlockHash], done: &mut u64| {
            for hash in hashes {
                let failed = |source| BackupStoreError::DamagedBackupFile {
                    backup: id.to_string(),
                    path: path.to_owned(),
                    source: Box::new(source),
                };
                let idx = index.read().unwrap_or_else(|p| p.into_inner());
                let block = blocks.read(&idx, hash).map_err(failed)?;
                check_block(&coding, &block).map_err(|problem| {
                    failed(BackupStoreError::DamagedBlock {
                        pack: blocks.pack_path(&idx, hash),
                        hash: *hash,
                        reason: BlockDamage::Content(problem),
                    })
                })?;
                *done += u64::from(block.plain_len);
                if progress(VerifyProgress { done: *done, total }).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok::<_, BackupStoreError>(ControlFlow::Continue(()))
        };
        while let Some(item) = files.next_item()? {
            let flow = match item {
                FileListItem::Entry(entry) => {
                    path = entry.path;
                    check(&path, &entry.blocks, &mut done)?
                }
                FileListItem::Blocks(hashes) => check(&path, &hashes, &mut done)?,
            };
            if flow.is_break() {
                return Ok(VerifyOutcome::Stopped);
            }
        }
        Ok(VerifyOutcome::Verified(Box::new(info)))
    }
}
