//! PostgreSQL write-ahead-log primitives for Klio and for any Rust tool that handles WAL.
//!
//! Synchronous and small on purpose: LSN and segment arithmetic, WAL file names, page header
//! validation, a record walker that checks WAL byte for byte, a synthetic WAL generator, a
//! segment directory writer that follows pg_receivewal's durability rules exactly, and the
//! crash-safe file writes ([`durable`]) every Klio crate uses.
#![warn(missing_docs)]

mod byte_size;
pub mod durable;
mod error_chain;
mod file_name;
mod fs_error;
mod lsn;
pub mod page;
mod position;
pub mod record_walk;
mod segment;
pub mod segment_dir;
pub mod synth;
mod timeline;
pub mod timeline_history;

pub use byte_size::ByteSize;
pub use error_chain::ErrorChain;
pub use file_name::{ParseWalFileNameError, WalFileName, WalFileNameDisplay};
pub use fs_error::{FsAction, FsError};
pub use lsn::{Lsn, ParseLsnError};
pub use page::{LongPageHeader, PageHeader, PageHeaderError, WalMagic};
pub use position::WalPosition;
pub use segment::{InvalidSegmentSize, SegmentNo, SegmentPiece, SegmentSize, SegmentSplit};
pub use synth::{SynthConfig, SynthConfigError, SynthStats, SyntheticSegment, SyntheticWal};
pub use timeline::{InvalidTimeline, TimelineId};
pub use timeline_history::{HistoryEntry, HistoryParseError, parse_history};

/// The examples of the crate's README, compiled and run as doctests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
