//! The Klio client library: everything that runs next to PostgreSQL.
//!
//! - [`connection`]: an async replication connection (TCP, TLS via rustls, Unix socket) on top
//!   of the sans-IO codecs of `klio-proto`.
//! - [`conn_string`]: libpq-style connection strings and `PG*` environment variables.
//! - [`receive`]: `klio receive-wal`, a pg_receivewal-compatible receiver into a directory.
//! - [`restore_wal`]: a `restore_command` that serves a local directory, `.partial` included.
//!
//! - [`client_config`]: the server settings of every command that talks to a Klio server,
//!   from `--config`, `KLIO_*` variables and flags, checked before anything connects.
//! - [`server_link`]: QUIC with mutual TLS to a Klio server, framed streams.
//! - [`send_wal`]: `klio send-wal`, streaming WAL to a Klio server with flush = durable acks.
//!
//! - [`get_wal`]: `klio get-wal`, a `restore_command` served by the Klio server, with a
//!   prefetching spool; [`recovery_config`]: a data directory prepared for recovery to a
//!   target.
//!
//! - [`backup`]: `klio backup run`, base backups deduplicated by block against the server's
//!   store, and the catalog client (`list`, `show`, `verify`, `delete`).
//!
//! - [`restore`]: `klio restore`, a base backup from the Klio server rebuilt into an empty
//!   data directory (blocks fetched in parallel and checked), prepared to recover through
//!   `klio get-wal`.
#![warn(missing_docs)]

pub mod backup;
pub mod client_config;
pub mod conn_string;
pub mod connection;
mod error;
pub mod get_wal;
mod passfile;
pub mod receive;
pub mod recovery_config;
pub mod restore;
pub mod restore_wal;
pub mod send_wal;
pub mod server_link;
mod service_file;
mod shutdown;
mod tls;
pub mod wal_player;

pub use conn_string::{
    ConnConfig, ConnParams, ConnStringError, Endpoint, Host, PasswordPrompt, SslMode,
    TargetSessionAttrs,
};
pub use connection::{BaseBackupStream, CopyEvent, ReplicationConnection};
pub use error::{ConnectionError, SessionMismatch, TlsFailure};
pub use shutdown::{Shutdown, ShutdownTrigger, shutdown_channel};
