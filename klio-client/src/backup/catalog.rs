//! The backup catalog on the Klio server: list, show, verify, delete and pin backups, and run
//! retention.
//!
//! Each request runs on a stream of its own ([`CatalogClient`] on an open connection, or the
//! functions [`list`], [`get_entry`], [`verify`], [`delete`], [`set_pinned`] and
//! [`run_retention`], which connect for one request). The server answers only for the cluster of the client's certificate.
//!
//! `latest` ([`BackupRef::Latest`]) is the backup with the greatest
//! [`BackupInfo::order_key`] (end position, then completion time), never the greatest id.

use std::fmt;
use std::str::FromStr;

use klio_proto::klio::{
    BackupInfo, CatalogEntryError, ErrorCode, ListedBackup, Message, RetentionReport,
    RetentionReportError,
};

use super::progress::VerifyProgress;
use crate::client_config::ClientConfig;
use crate::server_link::{FramedRecv, ServerConnection, ServerLinkError};

/// A backup named on the command line: an id, or `latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupRef {
    /// The backup of this id.
    Id(String),
    /// The backup with the greatest [`BackupInfo::order_key`].
    Latest,
}

impl FromStr for BackupRef {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "latest" {
            Self::Latest
        } else {
            Self::Id(s.to_owned())
        })
    }
}

impl fmt::Display for BackupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => f.write_str(id),
            Self::Latest => f.write_str("latest"),
        }
    }
}

/// A catalog request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The server could not be reached, refused, or broke off.
    #[error("the Klio server's backup catalog could not be read")]
    Server(#[source] ServerLinkError),
    /// No backup of that id.
    #[error("the catalog has no backup {id}; `klio backup list` shows the backups there are")]
    NoSuchBackup {
        /// The id asked for.
        id: String,
    },
    /// `latest` was asked for, but there is no backup.
    #[error("the catalog has no backup of this cluster yet; take one with `klio backup run`")]
    NoBackups,
    /// Verification found a block that cannot be read, or WAL missing from the archive.
    #[error(
        "backup {id} failed verification, so a restore of it would fail; take a new backup with `klio backup run`"
    )]
    VerificationFailed {
        /// The backup verified.
        id: String,
        /// What the server found.
        #[source]
        source: ServerLinkError,
    },
    /// The server answered with a message that does not belong there.
    #[error(
        "the Klio server answered message {got:#04x} where {expected} was due; check that client and server run the same Klio version"
    )]
    Unexpected {
        /// What was due.
        expected: &'static str,
        /// The tag of what came.
        got: u8,
    },
    /// A catalog entry cannot be read.
    #[error("the Klio server sent a backup catalog entry that cannot be read")]
    Entry(#[source] CatalogEntryError),
    /// The backup is pinned, so it cannot be deleted.
    #[error("backup {id} is pinned: unpin it with `klio backup unpin {id}` first, then delete it")]
    Pinned {
        /// The backup.
        id: String,
    },
    /// A retention report cannot be read.
    #[error("the Klio server sent a retention report that cannot be read")]
    Report(#[source] RetentionReportError),
}

impl From<ServerLinkError> for CatalogError {
    fn from(e: ServerLinkError) -> Self {
        Self::Server(e)
    }
}

fn unexpected(expected: &'static str, got: Option<Message>) -> CatalogError {
    match got {
        Some(m) => CatalogError::Unexpected {
            expected,
            got: m.tag(),
        },
        None => CatalogError::Server(ServerLinkError::Closed),
    }
}

impl CatalogError {
    /// The server's `NoSuchBackup` refusal, for a request about backup `id`, as
    /// [`CatalogError::NoSuchBackup`]; and, when `verifying`, its `DamagedFile` and
    /// `WalNotArchived` as [`CatalogError::VerificationFailed`].
    fn about_backup(self, id: &str, verifying: bool) -> Self {
        match self {
            Self::Server(ServerLinkError::Refused {
                code: ErrorCode::NoSuchBackup,
                ..
            }) => Self::NoSuchBackup { id: id.to_owned() },
            Self::Server(ServerLinkError::Refused {
                code: ErrorCode::BackupPinned,
                ..
            }) => Self::Pinned { id: id.to_owned() },
            Self::Server(
                source @ ServerLinkError::Refused {
                    code: ErrorCode::DamagedFile | ErrorCode::WalNotArchived,
                    ..
                },
            ) if verifying => Self::VerificationFailed {
                id: id.to_owned(),
                source,
            },
            other => other,
        }
    }
}

/// Reads a `BackupEntry`.
async fn entry(recv: &mut FramedRecv) -> Result<BackupInfo, CatalogError> {
    match recv.recv().await? {
        Some(Message::BackupEntry { json }) => {
            BackupInfo::from_json(&json).map_err(CatalogError::Entry)
        }
        other => Err(unexpected("BackupEntry", other)),
    }
}

/// Reads the `CatalogEnd` that closes an answer.
async fn catalog_end(recv: &mut FramedRecv) -> Result<(), CatalogError> {
    match recv.recv().await? {
        Some(Message::CatalogEnd) => Ok(()),
        other => Err(unexpected("CatalogEnd", other)),
    }
}

/// The backup `which` names, among `backups`.
pub fn pick<'b>(
    backups: &'b [BackupInfo],
    which: &BackupRef,
) -> Result<&'b BackupInfo, CatalogError> {
    match which {
        BackupRef::Latest => backups
            .iter()
            .max_by(|a, b| a.order_key().cmp(&b.order_key()))
            .ok_or(CatalogError::NoBackups),
        BackupRef::Id(id) => backups
            .iter()
            .find(|b| &b.id == id)
            .ok_or_else(|| CatalogError::NoSuchBackup { id: id.clone() }),
    }
}

/// Catalog requests over an open connection to the Klio server.
#[derive(Debug, Clone, Copy)]
pub struct CatalogClient<'c> {
    conn: &'c ServerConnection,
}

impl<'c> CatalogClient<'c> {
    /// Requests on `conn`.
    pub fn new(conn: &'c ServerConnection) -> Self {
        Self { conn }
    }

    /// Every complete backup of the cluster, in catalog order ([`BackupInfo::order_key`]).
    pub async fn list(&self) -> Result<Vec<BackupInfo>, CatalogError> {
        Ok(self
            .list_with_tiers()
            .await?
            .into_iter()
            .map(|listed| listed.info)
            .collect())
    }

    /// Every complete backup of the cluster, in catalog order, with the tiers holding each
    /// (`None` from servers that do not tell).
    pub async fn list_with_tiers(&self) -> Result<Vec<ListedBackup>, CatalogError> {
        let (mut send, mut recv) = self.conn.open_stream().await?;
        send.send(&Message::ListBackups).await?;
        send.finish();
        let mut backups = Vec::new();
        loop {
            match recv.recv().await? {
                Some(Message::BackupEntry { json }) => {
                    backups.push(ListedBackup::from_json(&json).map_err(CatalogError::Entry)?);
                }
                Some(Message::CatalogEnd) => break,
                other => return Err(unexpected("BackupEntry or CatalogEnd", other)),
            }
        }
        // The server sends them in order already; sorting again costs nothing and makes the
        // order this function's promise.
        backups.sort_by(|a, b| a.info.order_key().cmp(&b.info.order_key()));
        Ok(backups)
    }

    /// The catalog entry of the backup `which` names.
    pub async fn entry(&self, which: &BackupRef) -> Result<BackupInfo, CatalogError> {
        let backups = self.list().await?;
        pick(&backups, which).cloned()
    }

    /// The id of the backup `which` names (for `latest`, asks the catalog).
    pub async fn id(&self, which: &BackupRef) -> Result<String, CatalogError> {
        match which {
            BackupRef::Id(id) => Ok(id.clone()),
            BackupRef::Latest => Ok(self.entry(which).await?.id),
        }
    }

    /// Has the server read every block of the backup through its checks and check that its
    /// WAL range is archived; `progress` gets the server's reports. Returns its entry.
    pub async fn verify(
        &self,
        which: &BackupRef,
        progress: &mut dyn FnMut(VerifyProgress),
    ) -> Result<BackupInfo, CatalogError> {
        let id = self.id(which).await?;
        self.verify_id(&id, progress)
            .await
            .map_err(|e| e.about_backup(&id, true))
    }

    async fn verify_id(
        &self,
        id: &str,
        progress: &mut dyn FnMut(VerifyProgress),
    ) -> Result<BackupInfo, CatalogError> {
        let (mut send, mut recv) = self.conn.open_stream().await?;
        send.send(&Message::VerifyBackup { id: id.to_owned() })
            .await?;
        send.finish();
        let info = loop {
            match recv.recv().await? {
                Some(Message::Progress { done, total }) => progress(VerifyProgress { done, total }),
                Some(Message::BackupEntry { json }) => {
                    break BackupInfo::from_json(&json).map_err(CatalogError::Entry)?;
                }
                other => return Err(unexpected("Progress or BackupEntry", other)),
            }
        };
        catalog_end(&mut recv).await?;
        Ok(info)
    }

    /// Removes the backup's catalog entry (its blocks stay until retention reclaims them);
    /// returns the entry removed.
    pub async fn delete(&self, id: &str) -> Result<BackupInfo, CatalogError> {
        async {
            let (mut send, mut recv) = self.conn.open_stream().await?;
            send.send(&Message::DeleteBackup { id: id.to_owned() })
                .await?;
            send.finish();
            let info = entry(&mut recv).await?;
            catalog_end(&mut recv).await?;
            Ok(info)
        }
        .await
        .map_err(|e: CatalogError| e.about_backup(id, false))
    }

    /// Pins (`pinned`) or unpins the backup: a pinned backup is never removed by a retention
    /// policy. Returns its entry afterwards.
    pub async fn set_pinned(&self, id: &str, pinned: bool) -> Result<BackupInfo, CatalogError> {
        async {
            let (mut send, mut recv) = self.conn.open_stream().await?;
            send.send(&Message::PinBackup {
                id: id.to_owned(),
                pinned,
            })
            .await?;
            send.finish();
            let info = entry(&mut recv).await?;
            catalog_end(&mut recv).await?;
            Ok(info)
        }
        .await
        .map_err(|e: CatalogError| e.about_backup(id, false))
    }

    /// Has the server enforce the cluster's retention policy now (`dry_run`: only report what
    /// would go); its report.
    pub async fn run_retention(&self, dry_run: bool) -> Result<RetentionReport, CatalogError> {
        let (mut send, mut recv) = self.conn.open_stream().await?;
        send.send(&Message::RunRetention { dry_run }).await?;
        send.finish();
        let report = match recv.recv().await? {
            Some(Message::RetentionReport { json }) => {
                RetentionReport::from_json(&json).map_err(CatalogError::Report)?
            }
            other => return Err(unexpected("RetentionReport", other)),
        };
        catalog_end(&mut recv).await?;
        Ok(report)
    }
}

/// Runs `request` on a fresh connection to the server of `config`, closing it afterwards.
async fn with_connection<T>(
    config: &ClientConfig,
    request: impl AsyncFnOnce(CatalogClient<'_>) -> Result<T, CatalogError>,
) -> Result<T, CatalogError> {
    let conn = ServerConnection::connect(&config.server).await?;
    let result = request(CatalogClient::new(&conn)).await;
    conn.close().await;
    result
}

/// Every complete backup of the cluster, in catalog order.
pub async fn list(config: &ClientConfig) -> Result<Vec<BackupInfo>, CatalogError> {
    with_connection(config, async |c| c.list().await).await
}

/// Every complete backup of the cluster, in catalog order, with the tiers holding each.
pub async fn list_with_tiers(config: &ClientConfig) -> Result<Vec<ListedBackup>, CatalogError> {
    with_connection(config, async |c| c.list_with_tiers().await).await
}

/// The catalog entry of the backup `which` names.
pub async fn get_entry(
    config: &ClientConfig,
    which: &BackupRef,
) -> Result<BackupInfo, CatalogError> {
    with_connection(config, async |c| c.entry(which).await).await
}

/// Verifies the backup `which` names on the server (see [`CatalogClient::verify`]).
pub async fn verify(
    config: &ClientConfig,
    which: &BackupRef,
    progress: &mut dyn FnMut(VerifyProgress),
) -> Result<BackupInfo, CatalogError> {
    with_connection(config, async |c| c.verify(which, progress).await).await
}

/// Removes the catalog entry of backup `id` (see [`CatalogClient::delete`]).
pub async fn delete(config: &ClientConfig, id: &str) -> Result<BackupInfo, CatalogError> {
    with_connection(config, async |c| c.delete(id).await).await
}

/// Pins or unpins backup `id` (see [`CatalogClient::set_pinned`]).
pub async fn set_pinned(
    config: &ClientConfig,
    id: &str,
    pinned: bool,
) -> Result<BackupInfo, CatalogError> {
    with_connection(config, async |c| c.set_pinned(id, pinned).await).await
}

/// Runs retention on the server (see [`CatalogClient::run_retention`]).
pub async fn run_retention(
    config: &ClientConfig,
    dry_run: bool,
) -> Result<RetentionReport, CatalogError> {
    with_connection(config, async |c| c.run_retention(dry_run).await).await
}
