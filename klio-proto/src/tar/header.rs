//! Parsing one 512-byte header block: every field the reader relies on is checked.

use super::entry::{EntryKind, TarEntry};
use super::error::{HeaderField, NumberProblem, PathProblem, TarError};
use super::path::EntryPath;

/// The size of a tar block: headers, padded contents and end marker are counted in them.
pub(crate) const BLOCK_LEN: usize = 512;

const NAME: std::ops::Range<usize> = 0..100;
const TYPEFLAG: usize = 156;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MAGIC: std::ops::Range<usize> = 257..265;
const PREFIX: std::ops::Range<usize> = 345..500;

/// `magic` ("ustar" NUL) and `version` ("00") of a POSIX ustar header.
const USTAR_MAGIC: &[u8; 8] = b"ustar\x0000";

/// What a header block holds.
#[derive(Debug)]
pub(crate) enum Block {
    /// 512 zero bytes: one half of the end-of-archive marker.
    Zero,
    /// An entry's header.
    Entry(TarEntry),
}

/// Parses the header block that starts at archive offset `header_at`.
pub(crate) fn parse_header(h: &[u8; BLOCK_LEN], header_at: u64) -> Result<Block, TarError> {
    if h.iter().all(|&b| b == 0) {
        return Ok(Block::Zero);
    }
    let recorded = number(h, HeaderField::Checksum, header_at)?;
    let computed = checksum(h);
    if recorded != computed {
        return Err(TarError::ChecksumMismatch {
            header_at,
            recorded,
            computed,
        });
    }
    if h[MAGIC] != USTAR_MAGIC[..] {
        let mut magic = [0; 8];
        magic.copy_from_slice(&h[MAGIC]);
        return Err(TarError::NotUstar { header_at, magic });
    }
    let size = number(h, HeaderField::Size, header_at)?;
    let mode = number(h, HeaderField::Mode, header_at)?;
    let mode = u32::try_from(mode)
        .ok()
        .filter(|m| m & !0o7777 == 0)
        .ok_or(TarError::InvalidNumber {
            header_at,
            field: HeaderField::Mode,
            problem: NumberProblem::OutOfRange,
        })?;
    let uid = id(h, HeaderField::Uid, header_at)?;
    let gid = id(h, HeaderField::Gid, header_at)?;
    let mtime = number(h, HeaderField::Mtime, header_at)?;
    // Only devices use them, and devices are refused; still, garbage there means corruption.
    for field in [HeaderField::DevMajor, HeaderField::DevMinor] {
        if !blank(&h[field.range()]) {
            number(h, field, header_at)?;
        }
    }

    let name = until_nul(&h[NAME]);
    let prefix = until_nul(&h[PREFIX]);
    let mut raw_path = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        raw_path.extend_from_slice(prefix);
        raw_path.push(b'/');
    }
    raw_path.extend_from_slice(name);
    let unsafe_path = |problem| TarError::UnsafePath {
        header_at,
        path: String::from_utf8_lossy(&raw_path).into_owned(),
        problem,
    };

    let kind = match h[TYPEFLAG] {
        // POSIX: NUL is how pre-POSIX archives mark a regular file.
        b'0' | 0 => {
            if raw_path.last() == Some(&b'/') {
                return Err(unsafe_path(PathProblem::TrailingSlashOnFile));
            }
            EntryKind::File { size }
        }
        b'5' => EntryKind::Directory,
        b'2' => {
            let target = until_nul(&h[LINKNAME]);
            if target.is_empty() {
                return Err(TarError::EmptyLinkTarget { header_at });
            }
            EntryKind::Symlink {
                target: target.to_vec(),
            }
        }
        typeflag => {
            return Err(TarError::UnsupportedType {
                header_at,
                typeflag,
            });
        }
    };
    if size != 0 && !matches!(kind, EntryKind::File { .. }) {
        return Err(TarError::SizeOnNonFile { header_at, size });
    }
    let path = EntryPath::parse(&raw_path).map_err(unsafe_path)?;
    if path.is_root() && kind != EntryKind::Directory {
        return Err(unsafe_path(PathProblem::Empty));
    }
    Ok(Block::Entry(TarEntry {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime,
    }))
}

/// The unsigned sum of the header's bytes, the checksum field counted as eight spaces.
fn checksum(h: &[u8; BLOCK_LEN]) -> u64 {
    let checksum_field = HeaderField::Checksum.range();
    h.iter()
        .enumerate()
        .map(|(i, &b)| {
            if checksum_field.contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum()
}

fn number(h: &[u8; BLOCK_LEN], field: HeaderField, header_at: u64) -> Result<u64, TarError> {
    parse_number(&h[field.range()]).map_err(|problem| TarError::InvalidNumber {
        header_at,
        field,
        problem,
    })
}

fn id(h: &[u8; BLOCK_LEN], field: HeaderField, header_at: u64) -> Result<u32, TarError> {
    u32::try_from(number(h, field, header_at)?).map_err(|_| TarError::InvalidNumber {
        header_at,
        field,
        problem: NumberProblem::OutOfRange,
    })
}

/// Reads a numeric field: octal digits (after optional leading spaces) ended by NUL or space
/// up to the end of the field, or GNU base-256 (0x80, then the value big-endian), which
/// PostgreSQL writes for values that do not fit in octal (files of 8 GiB and more).
pub(crate) fn parse_number(field: &[u8]) -> Result<u64, NumberProblem> {
    match field.first() {
        Some(0x80) => field[1..].iter().try_fold(0u64, |value, &b| {
            if value >> 56 != 0 {
                Err(NumberProblem::OutOfRange)
            } else {
                Ok(value << 8 | u64::from(b))
            }
        }),
        Some(0xff) => Err(NumberProblem::Negative),
        _ => {
            let digits_start = field.iter().take_while(|&&b| b == b' ').count();
            let digits = field[digits_start..]
                .iter()
                .take_while(|b| (b'0'..=b'7').contains(b))
                .count();
            let rest = &field[digits_start + digits..];
            if digits == 0 || !rest.iter().all(|&b| b == 0 || b == b' ') {
                return Err(NumberProblem::NotANumber);
            }
            field[digits_start..digits_start + digits]
                .iter()
                .try_fold(0u64, |value, &d| {
                    value
                        .checked_mul(8)
                        .map(|v| v | u64::from(d - b'0'))
                        .ok_or(NumberProblem::OutOfRange)
                })
        }
    }
}

fn blank(field: &[u8]) -> bool {
    field.iter().all(|&b| b == 0 || b == b' ')
}

/// The bytes of a NUL-terminated field; all of it when it fills the field.
fn until_nul(field: &[u8]) -> &[u8] {
    field
        .iter()
        .position(|&b| b == 0)
        .map_or(field, |end| &field[..end])
}
