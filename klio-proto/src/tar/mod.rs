//! A sans-IO reader for the tar archives in `BASE_BACKUP`'s COPY stream.
//!
//! [`TarReader`] turns an archive, fed in pieces that may end anywhere (a `CopyData` message
//! can stop inside a header or a file), into [`TarEvent`]s: an [`TarEvent::Entry`] per
//! member, its contents as [`TarEvent::Data`] slices, [`TarEvent::EntryEnd`], and
//! [`TarEvent::End`] for the end-of-archive marker. It never holds a whole file: contents are
//! split off the caller's buffer as they arrive.
//!
//! ```
//! use bytes::BytesMut;
//! use klio_proto::tar::{TarEvent, TarReader};
//!
//! // The smallest archive, its end marker, arriving in two pieces.
//! let mut reader = TarReader::new();
//! let mut buf = BytesMut::new();
//! let mut ended = false;
//! for piece in [&[0u8; 700][..], &[0u8; 324][..]] {
//!     buf.extend_from_slice(piece);
//!     while let Some(event) = reader.decode(&mut buf)? {
//!         match event {
//!             TarEvent::Entry(entry) => println!("{}", entry.path),
//!             TarEvent::Data(contents) => drop(contents), // the next slice of the file
//!             TarEvent::EntryEnd => {}
//!             TarEvent::End => ended = true,
//!         }
//!     }
//! }
//! reader.finish()?; // the input ended: was the archive complete?
//! assert!(ended);
//! # Ok::<(), klio_proto::tar::TarError>(())
//! ```
//!
//! # What PostgreSQL writes
//!
//! PostgreSQL 15's server builds every header with `tarCreateHeader` (`src/port/tar.c`), from
//! `basebackup.c`:
//! - POSIX ustar only: magic `ustar\0`, version `00`, uname and gname `postgres`, the prefix
//!   field left empty. A name longer than 99 bytes, or a link target longer than 99, makes
//!   the server fail the backup ("file name too long for tar format"): it never writes pax
//!   (`x`, `g`) or GNU long-name (`L`, `K`) headers, so this reader refuses them. It reads the
//!   prefix field anyway, as other ustar writers (GNU tar) use it for paths up to 255 bytes.
//! - Three entry types: regular files (`0`), directories (`5`) and symbolic links (`2`),
//!   the last only for tablespaces in `pg_tblspc` with an absolute target, and only when the
//!   client did not ask for `TABLESPACE_MAP` (with it, the `tablespace_map` file replaces
//!   them). Directory and link names end with `/`; their size is 0. Other files are skipped by the server with a
//!   warning, so hard links, devices and FIFOs are refused here.
//! - Numbers in octal, ended by a space; values too large for octal (files of 8 GiB and more)
//!   in GNU base-256 (a 0x80 byte, then the value big-endian). Mode is `st_mode & 0o7777`.
//! - Names relative to the archive root (`base/1/1259`, `PG_15_202209061/16384/16385` in a
//!   tablespace's archive), except `./pg_wal/archive_status/`, written with a leading `./`.
//! - Contents padded with zeros to a multiple of 512 bytes; the archive ends with two zero
//!   blocks, sent by the server itself since PostgreSQL 15.
//!
//! # Header format
//!
//! A 512-byte block; the fields this reader uses or checks:
//!
//! | bytes   | field      | use                                                          |
//! |---------|------------|--------------------------------------------------------------|
//! | 0..100  | `name`     | path, NUL-terminated unless it fills the field               |
//! | 100..108| `mode`     | octal permission bits, at most `0o7777`                      |
//! | 108..116| `uid`      | octal (or base-256) owner id, at most `u32::MAX`             |
//! | 116..124| `gid`      | octal (or base-256) group id, at most `u32::MAX`             |
//! | 124..136| `size`     | octal or base-256 length of the contents; 0 unless a file    |
//! | 136..148| `mtime`    | octal or base-256 seconds since the epoch                    |
//! | 148..156| `chksum`   | octal unsigned sum of the 512 bytes, this field as 8 spaces  |
//! | 156     | `typeflag` | `0` or NUL file, `5` directory, `2` symbolic link            |
//! | 157..257| `linkname` | symbolic link target, NUL-terminated unless it fills it      |
//! | 257..263| `magic`    | `ustar\0`                                                    |
//! | 263..265| `version`  | `00`                                                         |
//! | 329..337| `devmajor` | blank or octal (checked, unused)                             |
//! | 337..345| `devminor` | blank or octal (checked, unused)                             |
//! | 345..500| `prefix`   | when not empty, the path is `prefix/name`                    |
//!
//! `uname`, `gname` and bytes 500..512 are ignored. An octal field is optional leading
//! spaces, at least one digit, then only NULs or spaces to its end.
//!
//! # Contract
//!
//! - Every header is checked (checksum, magic, every numeric field, type, size of
//!   non-files), and so are the padding after contents and the end marker. Malformed input is
//!   a [`TarError`] naming what was wrong and the byte offset where, never a panic and never
//!   an event with wrong data.
//! - Paths are normalized [`EntryPath`]s: absolute paths and `..` components are refused, so
//!   a restore that joins them to the data directory never writes outside it. Symbolic link
//!   targets are given as recorded: they are not paths to write to.
//! - Events are the same whatever the pieces the input arrives in (only the boundaries of
//!   [`TarEvent::Data`] slices follow the pieces).
//! - An archive is complete only when [`TarEvent::End`] was returned; [`TarReader::finish`]
//!   says so, or how the input was cut short. After the end marker only zero bytes (tar's
//!   record padding) are accepted.

mod entry;
mod error;
mod header;
mod path;
mod reader;

pub use entry::{EntryKind, TarEntry, TarEvent};
pub use error::{HeaderField, NumberProblem, PathProblem, TarError, TruncatedIn};
pub use path::EntryPath;
pub use reader::TarReader;

#[cfg(test)]
mod tests;
