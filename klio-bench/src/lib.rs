//! The side-by-side comparison harness (`klio-bench`): Klio against the machine's limits and
//! against its peers, contenders taking turns in one run, results as ratios.
//!
//! - [`ingest`]: `klio wal-player play` against fsync'd disk writes and pgBackRest
//!   `archive-push`.
//! - [`streaming`]: CPU per GB and flush lag of `klio send-wal` and `pg_receivewal`.
//! - [`sync_commit`]: pgbench TPS with Klio as synchronous standby against
//!   `pg_receivewal --synchronous`.
//! - [`recovery`]: PostgreSQL recovering the same WAL through `klio get-wal` and through `cp`.
//! - [`backup`]: `klio backup run` (local and streamed) and `klio restore` (plain and
//!   `--delta`) against `pg_basebackup`, `tar -x` and pgBackRest (full, incremental, restore,
//!   delta restore).
//! - [`backup_files`]: a local backup of a data directory with a million small files, and the
//!   client's and server's peak memory.
//! - [`block_size`]: the study behind the backup block size (stored bytes, reference overhead
//!   and round trips per block size, on two pgbench backups).
//! - [`streams`]: many clusters on one server: 1 to 256 concurrent wal-player streams, the
//!   server's resident memory, throughput and per-cluster ack latency.
//! - [`tier2`]: the relay's upload rate against the disk's write rate, and restores (WAL
//!   recovery, `klio restore`) from Tier 2 alone against from Tier 1.
//! - [`archive_scale`]: server start, `GetPosition` and `GetFile` with 10,000 and 1,000,000
//!   segments in one archive, side by side (the ratio should be about 1).
//! - [`compare`]: all of them, with [`machine`] figures, as markdown and JSON.
//!
//! The WAL Player itself is `klio wal-player` (library: `klio_client::wal_player`).
#![warn(missing_docs)]

pub mod archive_scale;
pub mod backup;
pub mod backup_files;
pub mod block_size;
pub mod compare;
pub mod ingest;
pub mod layout;
pub mod machine;
pub mod recovery;
mod setup;
pub mod streaming;
pub mod streams;
pub mod sync_commit;
pub mod tier2;
