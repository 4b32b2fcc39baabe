//! Where one request's blocks are decompressed before they are written: one buffer per
//! worker, reused, holding the blocks in runs of consecutive blocks of one file, so that
//! each run goes out in one write.
//!
//! # Layout
//!
//! The runs follow each other in request order. A run of a file written with direct I/O
//! ([`super::files::RestoredFile::is_direct`]) starts at an address aligned to
//! [`DIRECT_IO_ALIGN`]; the others follow the previous run's last byte. A run's blocks are
//! back to back: block `k` of the run is at `run.at + k × block_size`.
//!
//! # Memory
//!
//! One request's blocks ([`super::blocks::hashes_per_request`]: 8 MiB of 64 KiB blocks), plus
//! at most [`DIRECT_IO_ALIGN`] of padding per direct run, which a fresh restore has one of
//! per file of the request.

use std::ops::Range;

use super::BlockRef;
use super::files::DIRECT_IO_ALIGN;

/// A reusable buffer whose start is aligned for direct I/O.
#[derive(Debug, Default)]
pub(super) struct WriteBuffer {
    storage: Vec<u8>,
}

impl WriteBuffer {
    /// `len` bytes starting at an address aligned to [`DIRECT_IO_ALIGN`], holding whatever
    /// the last use left. The buffer grows to the largest length asked for, and stays.
    pub(super) fn aligned(&mut self, len: usize) -> &mut [u8] {
        let needed = len + DIRECT_IO_ALIGN;
        if self.storage.len() < needed {
            self.storage = vec![0; needed];
        }
        let misalignment = self.storage.as_ptr().addr() % DIRECT_IO_ALIGN;
        let start = (DIRECT_IO_ALIGN - misalignment) % DIRECT_IO_ALIGN;
        &mut self.storage[start..start + len]
    }
}

/// Consecutive blocks of one file, written with one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Run {
    /// The file, as an index into the request's files.
    pub(super) file: usize,
    /// Its blocks, as a range of the request's blocks.
    pub(super) blocks: Range<usize>,
    /// Where the run starts in the buffer.
    pub(super) at: usize,
    /// Its length in bytes.
    pub(super) len: usize,
    /// Where it goes in the file.
    pub(super) offset: u64,
}

impl Run {
    /// The run's bytes in the buffer.
    pub(super) fn span(&self) -> Range<usize> {
        self.at..self.at + self.len
    }
}

/// The runs of a request's blocks `chunk`, and the buffer length they need. `len_of` gives a
/// block's length in its file; `direct` whether a file is written with direct I/O.
pub(super) fn plan_runs(
    chunk: &[BlockRef],
    block_size: u32,
    len_of: impl Fn(BlockRef) -> u64,
    direct: impl Fn(usize) -> bool,
) -> (Vec<Run>, usize) {
    let mut runs: Vec<Run> = Vec::new();
    let mut end = 0;
    for (i, &block) in chunk.iter().enumerate() {
        // Blocks are at most 64 KiB (`Block::plain_len` is checked against it): a usize.
        let len = len_of(block) as usize;
        let offset = block.index as u64 * u64::from(block_size);
        if let Some(run) = runs.last_mut()
            && run.file == block.file
            && run.offset + run.len as u64 == offset
        {
            run.blocks.end = i + 1;
            run.len += len;
            end += len;
            continue;
        }
        let at = if direct(block.file) {
            end.next_multiple_of(DIRECT_IO_ALIGN)
        } else {
            end
        };
        runs.push(Run {
            file: block.file,
            blocks: i..i + 1,
            at,
            len,
            offset,
        });
        end = at + len;
    }
    (runs, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u32 = 65_536;

    fn refs(list: &[(usize, usize)]) -> Vec<BlockRef> {
        list.iter()
            .map(|&(file, index)| BlockRef { file, index })
            .collect()
    }

    #[test]
    fn consecutive_blocks_of_a_file_make_one_run_and_gaps_or_other_files_start_another() {
        // File 0: blocks 0-2 then 5 (a delta restore's gap); file 1: a short last block;
        // file 2: two blocks.
        let chunk = refs(&[(0, 0), (0, 1), (0, 2), (0, 5), (1, 0), (2, 0), (2, 1)]);
        let len_of = |b: BlockRef| if b.file == 1 { 100 } else { u64::from(BLOCK) };
        let (runs, len) = plan_runs(&chunk, BLOCK, len_of, |file| file == 2);
        let b = BLOCK as usize;
        assert_eq!(
            runs,
            vec![
                Run {
                    file: 0,
                    blocks: 0..3,
                    at: 0,
                    len: 3 * b,
                    offset: 0
                },
                Run {
                    file: 0,
                    blocks: 3..4,
                    at: 3 * b,
                    len: b,
                    offset: 5 * u64::from(BLOCK)
                },
                Run {
                    file: 1,
                    blocks: 4..5,
                    at: 4 * b,
                    len: 100,
                    offset: 0
                },
                // Direct: aligned after file 1's 100 bytes.
                Run {
                    file: 2,
                    blocks: 5..7,
                    at: 4 * b + DIRECT_IO_ALIGN,
                    len: 2 * b,
                    offset: 0
                },
            ]
        );
        assert_eq!(len, 6 * b + DIRECT_IO_ALIGN);
    }

    #[test]
    fn the_buffer_is_aligned_and_keeps_its_memory() {
        let mut buffer = WriteBuffer::default();
        let first = buffer.aligned(3 * DIRECT_IO_ALIGN + 1);
        assert_eq!(first.len(), 3 * DIRECT_IO_ALIGN + 1);
        assert_eq!(first.as_ptr().addr() % DIRECT_IO_ALIGN, 0);
        first.fill(5);
        let again = buffer.aligned(10);
        assert_eq!(again.as_ptr().addr() % DIRECT_IO_ALIGN, 0);
        assert_eq!(again, [5; 10]);
    }
}
