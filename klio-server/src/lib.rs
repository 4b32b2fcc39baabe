//! The Klio server library (`klio server start`).
//!
//! - [`server`]: the QUIC listener (mutual TLS 1.3, [`tls`]); a client's cluster is the one its
//!   certificate names, and a client can reach no other cluster's data.
//! - WAL ingest: one writer per cluster, batches of frames applied to the cluster's
//!   `klio_store::wal_archive::WalArchive` with one fsync each, durable positions acknowledged.
//! - [`config`]: the YAML file with environment and flag overrides; [`certs`]: `klio certs`;
//!   [`keys`]: key files for encryption at rest (`klio keys`); [`verify`]: `klio verify`.
//! - Observability: Prometheus metrics, `/healthz` and `/status` on an HTTP listener
//!   (`telemetry`, served by `klio_metrics`); [`status`]: the status document and
//!   `klio status`.
//!
//! - Base backups: a backup session per cluster at a time stores deduplicated blocks and a
//!   file list into the cluster's `klio_store::backup::BackupStore`; catalog sessions list,
//!   read, verify and delete its backups.
//!
//! - [`retention`]: each cluster's policy enforced on its backups, WAL and blocks, on a
//!   schedule, after backups and on request, safe against running backups.
//!
//! - [`tier2`]: the relay to S3-compatible object storage, fallback reads from it, and the
//!   read-only mode that serves restores from it alone.
//!
//! The binary only parses flags and calls in here.
#![warn(missing_docs)]

mod backup_registry;
pub mod certificates;
pub mod certs;
pub mod config;
mod data_dir_lock;
mod data_dir_mode;
mod endpoint_keys;
pub mod ingest_budget;
pub mod keys;
mod registry;
pub mod retention;
pub mod server;
mod session;
pub mod status;
mod telemetry;
pub mod tier2;
pub mod tls;
pub mod verify;

pub use config::{ConfigError, ServerConfig, ServerOverrides};
pub use server::{Server, ServerError};
