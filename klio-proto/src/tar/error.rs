//! Why a tar archive was refused: each error names what was wrong and at which byte.

use std::fmt;

use crate::error::tag_display;

/// A field of the 512-byte ustar header (see the table in the [module docs](super)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderField {
    /// `mode`, bytes 100..108.
    Mode,
    /// `uid`, bytes 108..116.
    Uid,
    /// `gid`, bytes 116..124.
    Gid,
    /// `size`, bytes 124..136.
    Size,
    /// `mtime`, bytes 136..148.
    Mtime,
    /// `chksum`, bytes 148..156.
    Checksum,
    /// `devmajor`, bytes 329..337.
    DevMajor,
    /// `devminor`, bytes 337..345.
    DevMinor,
}

impl HeaderField {
    /// The field's byte range inside the header block.
    pub const fn range(self) -> std::ops::Range<usize> {
        match self {
            Self::Mode => 100..108,
            Self::Uid => 108..116,
            Self::Gid => 116..124,
            Self::Size => 124..136,
            Self::Mtime => 136..148,
            Self::Checksum => 148..156,
            Self::DevMajor => 329..337,
            Self::DevMinor => 337..345,
        }
    }

    /// The field's name in the ustar specification.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Mode => "mode",
            Self::Uid => "uid",
            Self::Gid => "gid",
            Self::Size => "size",
            Self::Mtime => "mtime",
            Self::Checksum => "chksum",
            Self::DevMajor => "devmajor",
            Self::DevMinor => "devminor",
        }
    }
}

impl fmt::Display for HeaderField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a numeric header field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NumberProblem {
    /// Neither octal digits ended by NUL or space, nor GNU base-256 (a leading 0x80 byte).
    NotANumber,
    /// GNU base-256 with the sign bit set (0xff): a negative value.
    Negative,
    /// A well-formed number above what the field may hold (a mode beyond 0o7777, a value
    /// beyond 64 bits).
    OutOfRange,
}

impl fmt::Display for NumberProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotANumber => "is not an octal number",
            Self::Negative => "is negative",
            Self::OutOfRange => "is out of range",
        })
    }
}

/// Why an entry's path was refused. A restore writes every entry below the data directory,
/// so a path that could lead anywhere else is never accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathProblem {
    /// The path starts with `/`.
    Absolute,
    /// A component is `..`.
    ParentComponent,
    /// Nothing is left once `.` components and slashes are removed, on an entry that is not a
    /// directory (only a directory may name the archive's root, as in `./`).
    Empty,
    /// A regular file's name ends with `/`, the mark of a directory.
    TrailingSlashOnFile,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Absolute => "is absolute",
            Self::ParentComponent => "has a '..' component",
            Self::Empty => "is empty",
            Self::TrailingSlashOnFile => "names a regular file but ends with '/'",
        })
    }
}

/// Where the archive stopped when [`TarReader::finish`](super::TarReader::finish) was called
/// before its end-of-archive marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TruncatedIn {
    /// Between entries or inside a header block.
    Header,
    /// Inside a file's contents, with this many bytes still missing.
    FileData {
        /// Bytes of the file not received.
        missing: u64,
    },
    /// Inside the zero padding after a file's contents.
    Padding,
    /// After the first of the two zero blocks that end an archive.
    EndMarker,
}

impl fmt::Display for TruncatedIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header => f.write_str("a header"),
            Self::FileData { missing } => write!(f, "a file's contents ({missing} bytes missing)"),
            Self::Padding => f.write_str("the padding after a file"),
            Self::EndMarker => f.write_str("the end-of-archive marker"),
        }
    }
}

/// A tar archive could not be read: the bytes are not what PostgreSQL's server writes.
///
/// Every variant carries the byte offset, from the start of the archive, of the header block
/// (`header_at`) or of the byte (`at`) that was wrong. After an error the reader refuses all
/// further input: nothing after a corrupt header can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// The header's checksum does not match its bytes.
    #[error(
        "tar header at byte {header_at}: checksum {recorded} recorded but the header sums to {computed}; the archive is corrupt or this is not a tar stream"
    )]
    ChecksumMismatch {
        /// Offset of the header block.
        header_at: u64,
        /// The value in the `chksum` field.
        recorded: u64,
        /// The unsigned sum of the header's bytes.
        computed: u64,
    },
    /// A numeric field could not be read.
    #[error(
        "tar header at byte {header_at}: field {field} (bytes {}..{} of the header) {problem}; the archive is corrupt",
        field.range().start,
        field.range().end
    )]
    InvalidNumber {
        /// Offset of the header block.
        header_at: u64,
        /// The field.
        field: HeaderField,
        /// What is wrong with it.
        problem: NumberProblem,
    },
    /// The header is not a POSIX ustar header (`ustar\0` then `00` at byte 257).
    #[error(
        "tar header at byte {header_at}: magic {magic:?} is not POSIX ustar (\"ustar\\0\" \"00\"); PostgreSQL writes ustar only, so this archive comes from elsewhere"
    )]
    NotUstar {
        /// Offset of the header block.
        header_at: u64,
        /// Bytes 257..265 of the header.
        magic: [u8; 8],
    },
    /// An entry type PostgreSQL never writes (hard links, devices, FIFOs, pax or GNU
    /// extension headers).
    #[error(
        "tar header at byte {header_at}: entry type {} is not a regular file, directory or symbolic link, the only types PostgreSQL writes",
        tag_display(*.typeflag)
    )]
    UnsupportedType {
        /// Offset of the header block.
        header_at: u64,
        /// The `typeflag` byte.
        typeflag: u8,
    },
    /// An entry's path could lead outside the directory the archive is extracted into.
    #[error("tar header at byte {header_at}: path {path:?} {problem}; refusing to restore it")]
    UnsafePath {
        /// Offset of the header block.
        header_at: u64,
        /// The path as recorded (prefix and name), lossily decoded.
        path: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// A directory or symbolic link declares contents.
    #[error(
        "tar header at byte {header_at}: a directory or symbolic link declares {size} bytes of contents; the archive is corrupt"
    )]
    SizeOnNonFile {
        /// Offset of the header block.
        header_at: u64,
        /// The declared size.
        size: u64,
    },
    /// A symbolic link without a target.
    #[error(
        "tar header at byte {header_at}: symbolic link without a target; the archive is corrupt"
    )]
    EmptyLinkTarget {
        /// Offset of the header block.
        header_at: u64,
    },
    /// The padding after a file's contents holds a non-zero byte.
    #[error(
        "tar archive byte {at}: non-zero byte in the padding after a file; the archive is corrupt or misaligned"
    )]
    NonZeroPadding {
        /// Offset of the first non-zero byte.
        at: u64,
    },
    /// A zero block was followed by a header instead of the second zero block.
    #[error(
        "tar archive byte {at}: a header follows a single zero block, which should have been the first half of the end-of-archive marker; the archive is corrupt"
    )]
    LoneZeroBlock {
        /// Offset of the block after the zero block.
        at: u64,
    },
    /// Non-zero bytes after the end-of-archive marker.
    #[error(
        "tar archive byte {at}: data after the end-of-archive marker; a new archive needs a new reader"
    )]
    DataAfterEnd {
        /// Offset of the first non-zero byte.
        at: u64,
    },
    /// The input ended before the end-of-archive marker.
    #[error(
        "tar archive truncated at byte {at}, inside {within}; the stream was cut short, take the backup again"
    )]
    Truncated {
        /// How many bytes of the archive were read completely.
        at: u64,
        /// What was being read.
        within: TruncatedIn,
    },
}
