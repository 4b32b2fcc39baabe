//! Storage for Klio servers.
//!
//! This crate will own Tier 1 (local filesystem) and Tier 2 (S3-compatible object storage) behind
//! one trait: the per-cluster WAL archive, the base-backup catalog and chunk store, the relay
//! queue, retention and verification, and read-only mode. The segment-level durability rules it
//! builds on live in [`klio_wal::segment_dir`].
#![forbid(unsafe_code)]

pub use klio_wal::SegmentSize;
