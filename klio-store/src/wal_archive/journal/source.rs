//! The bytes a journal is read back from: a file, or memory (inspection, tests, fuzzing).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes read per I/O when scanning or copying.
const IO_CHUNK: u64 = 1 << 20;

/// Random-access bytes a journal can be scanned from.
pub(crate) trait Source {
    /// Length in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the range lies within `size()`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..)?.get(..buf.len()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A journal file opened for reading, with its length taken once.
#[derive(Debug)]
pub(crate) struct FileSource<'a> {
    pub(crate) file: &'a File,
    pub(crate) len: u64,
}

impl<'a> FileSource<'a> {
    pub(crate) fn new(file: &'a File) -> io::Result<Self> {
        Ok(FileSource {
            file,
            len: file.metadata()?.len(),
        })
    }
}

impl Source for FileSource<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self.file, buf, offset)
    }
}

/// Reads `[offset, offset + len)` in chunks and hands each to `f`.
pub(super) fn for_each_chunk<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    len: u64,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(IO_CHUNK) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(IO_CHUNK) as usize;
        src.read_exact_at(&mut buf[..n], offset + done)?;
        f(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// Offset just past the last non-zero byte at or after `from`, if any.
pub(crate) fn nonzero_tail_end<S: Source + ?Sized>(src: &S, from: u64) -> io::Result<Option<u64>> {
    let mut end = None;
    let mut pos = from;
    for_each_chunk(src, from, src.size().saturating_sub(from), |c| {
        if let Some(i) = c.iter().rposition(|&b| b != 0) {
            end = Some(pos + i as u64 + 1);
        }
        pos += c.len() as u64;
        Ok(())
    })?;
    Ok(end)
}
