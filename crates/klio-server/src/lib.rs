//! The Klio server library (`klio server start`).
//!
//! This crate will own the QUIC listener with mutual TLS, cluster identity taken from client
//! certificates, WAL ingest with group fsync and durable acknowledgements, the backup catalog,
//! restore serving, the Tier 2 relay and retention workers. The binary only parses flags and
//! calls in here.
#![forbid(unsafe_code)]

pub use klio_store::SegmentSize;
