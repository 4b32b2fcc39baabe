//! Tier 2: the relay of every cluster's sealed files to S3-compatible object storage, the
//! fallback reads from it, and the read-only mode that serves restores from it alone.
//!
//! # Object layout
//!
//! Objects mirror Tier 1 (the [`layout`] module): `clusters/<cluster>/wal/...` and
//! `clusters/<cluster>/backups/...` hold the bytes of the Tier 1 files of the same relative
//! paths, exactly as sealed on Tier 1 (S3 sees no plaintext and no key on an encrypted
//! server). The segment in progress is its journal, `wal/<segment>.klio-journal`, cut after
//! its last valid frame: a journal is authenticated frames (AES-256-GCM on an encrypted
//! server), so the prefix is a valid journal that the Tier 1 reader serves zero-padded.
//!
//! # Reads
//!
//! A file Tier 1 lacks is fetched into a cache directory laid out like a data directory and
//! read there by the Tier 1 readers, with the same checks: the object's CRC32C on the way
//! down, then the file's own format (AEAD tags, CRC-32C frames, name bindings).
//!
//! The cache and its eviction are described in [`fetch`]; the WAL reads in the session's
//! `restore` module, the backup reads in its `tier2_backups` module.
//!
//! # Read-only mode
//!
//! With `mode: read-only` (and a `tier2` section) the server has no Tier 1: its data
//! directory is the cache (marked as such, see the `data_dir_mode` module), beside the data
//! directory lock and the QUIC endpoint keys. It serves `GetFile`, `GetPosition` and the
//! catalog's reads of every cluster in the bucket from Tier 2, a client certificate still
//! reaching only `clusters/<its cluster>/`. It starts neither retention nor the relay, and
//! refuses every write with `ErrorCode::ReadOnly`: WAL streaming, backups, deleting and
//! pinning backups, retention runs, and `klio keys rotate` on its data directory. It writes
//! nothing to the bucket, so any number of read-only servers can serve one bucket.
//!
//! The relay ([`relay`]: what goes up, in which order, and how failures are handled), its
//! frontier ([`frontier`]: what is safely up, and its file format) and Tier 2's retention
//! ([`retention`]) are described in their modules.

pub mod config;
pub(crate) mod fetch;
pub(crate) mod frontier;
pub(crate) mod layout;
pub(crate) mod relay;
pub(crate) mod retention;

use klio_tier2::{ObjectStore, Tier2Error};

pub use config::{ServerMode, Tier2Settings};

/// A server's Tier 2: the bucket and its settings.
#[derive(Debug)]
pub(crate) struct Tier2 {
    /// The bucket (or prefix of one) the objects live in.
    pub(crate) store: ObjectStore,
    /// The `tier2` section.
    pub(crate) settings: Tier2Settings,
    /// Held by Tier 2's retention runs: one at a time on the server, whatever asked for it.
    pub(crate) retention_runs: tokio::sync::Mutex<()>,
}

impl Tier2 {
    /// Builds the client; nothing is sent until the first request.
    pub(crate) async fn connect(settings: Tier2Settings) -> Result<Self, Tier2Error> {
        Ok(Self {
            store: ObjectStore::connect(&settings.s3).await?,
            settings,
            retention_runs: tokio::sync::Mutex::new(()),
        })
    }
}
