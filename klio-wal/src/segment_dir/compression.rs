//! Compressed segments as pg_receivewal `-Z` writes them, and reading them back.
//!
//! | method | file of a complete segment | while streaming | format |
//! |---|---|---|---|
//! | none | `<segment>` | `<segment>.partial`, pre-padded | the segment's bytes |
//! | gzip | `<segment>.gz` | `<segment>.gz.partial` | one gzip member (RFC 1952) |
//! | lz4 | `<segment>.lz4` | `<segment>.lz4.partial` | one LZ4 frame, 64 KiB linked blocks, no checksums |
//!
//! A compressed file is not padded: it holds the segment's bytes received so far, and is a
//! complete gzip member or LZ4 frame once closed, so `gzip --test` and `lz4 -t` accept a
//! closed `.partial` as well. While it is open, a flush ends the compressor's current block
//! (gzip's sync flush, an LZ4 block) so that every byte reported flushed is in the file and
//! can be decompressed after a crash. History files get the same suffix
//! (`00000002.history.gz`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

/// How segments are compressed in a [`super::SegmentDir`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed: pg_receivewal's default.
    #[default]
    None,
    /// gzip at `level` (1 to 9).
    Gzip {
        /// 1 (fastest) to 9 (smallest).
        level: u32,
    },
    /// LZ4 frames, at LZ4's fast level.
    Lz4,
}

impl Compression {
    /// The suffix of a file compressed this way (`""`, `".gz"`, `".lz4"`).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Gzip { .. } => ".gz",
            Self::Lz4 => ".lz4",
        }
    }

    /// The method a file with `suffix` was written with, if it is one of them.
    pub(crate) fn of_suffix(suffix: &str) -> Option<Self> {
        match suffix {
            "" => Some(Self::None),
            // The level does not matter for reading.
            ".gz" => Some(Self::Gzip { level: 6 }),
            ".lz4" => Some(Self::Lz4),
            _ => None,
        }
    }
}

/// A compressor writing one file from its start.
pub(crate) enum Compressor {
    Gzip(GzEncoder<File>),
    Lz4(Box<FrameEncoder<File>>),
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gzip(_) => "Compressor::Gzip",
            Self::Lz4(_) => "Compressor::Lz4",
        })
    }
}

impl Compressor {
    /// A gzip compressor at `level`, for the file it is given.
    pub(crate) fn gzip(level: u32) -> impl FnOnce(File) -> Self {
        move |file| Self::Gzip(GzEncoder::new(file, flate2::Compression::new(level)))
    }

    /// An LZ4 frame compressor (64 KiB linked blocks, no checksums, as pg_receivewal's), for
    /// the file it is given.
    pub(crate) fn lz4() -> impl FnOnce(File) -> Self {
        |file| {
            let mut info = FrameInfo::new();
            info.block_size = BlockSize::Max64KB;
            info.block_mode = BlockMode::Linked;
            Self::Lz4(Box::new(FrameEncoder::with_frame_info(info, file)))
        }
    }

    /// Compresses `bytes`, the next ones of the file.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Gzip(e) => e.write_all(bytes),
            Self::Lz4(e) => e.write_all(bytes),
        }
    }

    /// Writes out everything compressed so far, ending the current block, so that it can be
    /// fsynced and read back.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Gzip(e) => e.flush(),
            Self::Lz4(e) => e.flush(),
        }
    }

    /// The file, for fsync.
    pub(crate) fn file(&self) -> &File {
        match self {
            Self::Gzip(e) => e.get_ref(),
            Self::Lz4(e) => e.get_ref(),
        }
    }

    /// Ends the stream (gzip's trailer, LZ4's end mark) and returns the file.
    pub(crate) fn finish(self) -> io::Result<File> {
        match self {
            Self::Gzip(e) => e.finish(),
            Self::Lz4(e) => e.finish().map_err(io::Error::other),
        }
    }
}

/// `bytes` compressed with `method`, as one whole gzip member or LZ4 frame (history files).
pub(crate) fn compress_bytes(method: Compression, bytes: &[u8]) -> io::Result<Vec<u8>> {
    match method {
        Compression::None => Ok(bytes.to_vec()),
        Compression::Gzip { level } => {
            let mut e = GzEncoder::new(Vec::new(), flate2::Compression::new(level));
            e.write_all(bytes)?;
            e.finish()
        }
        Compression::Lz4 => {
            let mut e = FrameEncoder::new(Vec::new());
            e.write_all(bytes)?;
            e.finish().map_err(io::Error::other)
        }
    }
}

/// The uncompressed bytes of `path`, compressed with `method`: at most one segment's worth
/// ([`SegmentSize::MAX_BYTES`](crate::SegmentSize::MAX_BYTES)), so that a damaged or hostile
/// file cannot make its reader allocate without bound.
pub fn decompress_file(path: &Path, method: Compression) -> io::Result<Vec<u8>> {
    let (bytes, cut) = decompress_prefix(path, method)?;
    match cut {
        None => Ok(bytes),
        Some(e) => Err(e),
    }
}

/// Like [`decompress_file`], for a `.partial` whose writer may have died before ending its
/// stream (no gzip trailer, an LZ4 block cut short): the bytes decoded before the stream
/// broke off, and why it did, if it did. Every byte a receiver reported flushed is in that
/// prefix, since a flush ends the compressor's block before it fsyncs.
pub fn decompress_prefix(
    path: &Path,
    method: Compression,
) -> io::Result<(Vec<u8>, Option<io::Error>)> {
    let limit = u64::from(crate::SegmentSize::MAX_BYTES);
    let file = File::open(path)?;
    let mut out = Vec::new();
    // read_to_end keeps what was read before an error.
    let result = match method {
        Compression::None => file.take(limit + 1).read_to_end(&mut out),
        Compression::Gzip { .. } => flate2::read::GzDecoder::new(file)
            .take(limit + 1)
            .read_to_end(&mut out),
        Compression::Lz4 => FrameDecoder::new(file)
            .take(limit + 1)
            .read_to_end(&mut out),
    };
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("holds more than a segment's {limit} bytes"),
        ));
    }
    Ok((out, result.err()))
}

/// The uncompressed size of a complete compressed segment file, as pg_receivewal checks it:
/// for gzip the size its trailer records (ISIZE, the last four bytes), for LZ4 the bytes it
/// decompresses to, counted up to one more than `limit`.
pub(crate) fn uncompressed_size(path: &Path, method: Compression, limit: u64) -> io::Result<u64> {
    let mut file = File::open(path)?;
    match method {
        Compression::None => Ok(file.metadata()?.len()),
        Compression::Gzip { .. } => {
            let len = file.metadata()?.len();
            if len < 4 {
                return Ok(0);
            }
            let mut isize = [0u8; 4];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut isize, len - 4)?;
            Ok(u64::from(u32::from_le_bytes(isize)))
        }
        Compression::Lz4 => {
            let mut decoder = FrameDecoder::new(&mut file).take(limit + 1);
            io::copy(&mut decoder, &mut io::sink())
        }
    }
}
