//! The WAL player (`klio wal-player generate/play`) and the side-by-side comparison harness.
//!
//! Synthetic segments come from [`klio_wal::synth`]; this crate will own playing them against a
//! server and the harness that runs contenders alternately and reports ratios.
#![forbid(unsafe_code)]

pub use klio_wal::SegmentSize;
