//! Sans-IO codecs for the PostgreSQL frontend/backend and replication protocols.
//!
//! Bytes in, messages and bytes out: nothing here opens a socket or reads a clock, so every
//! decoder can be unit-tested with byte vectors and fuzzed. The [`klio`] module holds Klio's own
//! framed client/server protocol.
//!
//! A replication connection goes: [`frontend::startup`] → [`Startup`] until
//! [`StartupStatus::Ready`] → commands with [`frontend::query`] collected by [`SimpleQuery`] and
//! parsed with the [`replication`] types → `START_REPLICATION` and
//! [`replication::ReplicationMessage`]s in `CopyData`, answered with
//! [`replication::StandbyStatusUpdate`]s. A base backup is `BASE_BACKUP` from [`base_backup`]:
//! result sets, then a COPY stream decoded by [`base_backup::CopyStreamDecoder`], whose
//! archives the [`tar`] module reads.
#![warn(missing_docs)]

mod backend;
pub mod base_backup;
mod error;
pub mod frontend;
pub mod klio;
pub mod page;
mod query;
pub mod replication;
mod startup;
pub mod tar;

pub use backend::{
    BackendDecoder, BackendMessage, DEFAULT_MAX_MESSAGE_LEN, FieldDescription, SslResponse,
};
pub use error::{ProtocolError, ServerError};
pub use query::{QueryResult, ResultSet, SimpleQuery};
pub use startup::{AuthMethod, Startup, StartupStatus};

#[cfg(test)]
mod tests;

/// The examples of the crate's README, compiled and run as doctests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
