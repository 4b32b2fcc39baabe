//! The Klio client library: everything that runs next to PostgreSQL.
//!
//! - [`connection`]: an async replication connection (TCP, TLS via rustls, Unix socket) on top
//!   of the sans-IO codecs of `klio-proto`.
//! - [`conn_string`]: libpq-style connection strings and `PG*` environment variables.
//! - [`receive`]: `klio receive-wal`, a pg_receivewal-compatible receiver into a directory.
//! - [`restore_wal`]: a `restore_command` that serves a local directory, `.partial` included.
//!
//! Later: `send-wal` to a Klio server, `get-wal`, backup and restore.
#![forbid(unsafe_code)]

pub mod conn_string;
pub mod connection;
mod error;
pub mod receive;
pub mod restore_wal;
mod shutdown;
mod tls;

pub use conn_string::{ConnConfig, ConnParams, ConnStringError, Host, SslMode};
pub use connection::{CopyEvent, ReplicationConnection};
pub use error::ConnectionError;
pub use shutdown::{Shutdown, ShutdownTrigger, shutdown_channel};
