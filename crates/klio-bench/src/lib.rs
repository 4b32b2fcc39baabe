//! The WAL player (`klio wal-player generate/play`, later) and the side-by-side comparison
//! harness.
//!
//! [`sync_commit`] measures pgbench TPS with Klio as the synchronous standby against
//! pg_receivewal `--synchronous`, alternating the two in one run on one machine; [`recovery`]
//! times PostgreSQL's recovery of the same WAL through `klio get-wal` and through `cp`.
#![forbid(unsafe_code)]

pub mod recovery;
pub mod sync_commit;
