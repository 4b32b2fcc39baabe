//! Reading a backup's contents over a catalog session: `GetBackup` as a stream of files and
//! manifest chunks, so a backup's file list is never held whole. (Listing is
//! [`crate::backup::catalog::CatalogClient::list`].)

use bytes::Bytes;
use klio_crypto::BlockHashKey;
use klio_proto::klio::{BackupInfo, BlockDictionary, ErrorCode, FileEntry, Message};

use crate::server_link::{
    FramedRecv, FramedSend, ServerConnection, ServerLinkError, block_hash_key,
};

use super::RestoreError;

/// The catalog entry in a `BackupEntry` message.
fn entry_of(json: &[u8]) -> Result<BackupInfo, RestoreError> {
    BackupInfo::from_json(json).map_err(RestoreError::CatalogEntry)
}

fn unexpected(during: &str, msg: &Message) -> RestoreError {
    RestoreError::Catalog(ServerLinkError::Unexpected(format!(
        "during {during}: message {:#04x}",
        msg.tag()
    )))
}

/// One item of a backup's contents, in the server's order.
#[derive(Debug)]
pub(super) enum ContentItem {
    /// A file, directory or symlink, with all its block hashes.
    File(FileEntry),
    /// The next bytes of `backup_manifest`.
    Manifest(Bytes),
}

/// The contents of one backup, read as they arrive.
#[derive(Debug)]
pub(super) struct BackupContents {
    recv: FramedRecv,
    // Kept open until the end: finishing it early is fine, but dropping it resets the stream.
    _send: FramedSend,
    /// A file whose `FileBlocks` continuations may still follow.
    pending: Option<FileEntry>,
    /// The message read after `pending`, to hand out next.
    lookahead: Option<Message>,
    ended: bool,
}

impl BackupContents {
    /// Asks for backup `id`; returns its entry, the cluster's block-hash key and dictionary,
    /// and its contents.
    pub(super) async fn open(
        conn: &ServerConnection,
        id: &str,
    ) -> Result<(BackupInfo, BlockHashKey, Option<BlockDictionary>, Self), RestoreError> {
        let (mut send, mut recv) = conn.open_stream().await.map_err(RestoreError::Catalog)?;
        send.send(&Message::GetBackup { id: id.to_owned() })
            .await
            .map_err(RestoreError::Catalog)?;
        send.finish();
        let read = |r: Result<Option<Message>, ServerLinkError>| match r {
            Err(ServerLinkError::Refused {
                code: ErrorCode::NoSuchBackup,
                ..
            }) => Err(RestoreError::NoSuchBackup { id: id.to_owned() }),
            Err(e) => Err(RestoreError::Catalog(e)),
            Ok(None) => Err(RestoreError::Catalog(ServerLinkError::Closed)),
            Ok(Some(m)) => Ok(m),
        };
        let info = match read(recv.recv().await)? {
            Message::BackupEntry { json } => entry_of(&json)?,
            other => return Err(unexpected("GetBackup", &other)),
        };
        if info.id != id {
            return Err(RestoreError::Catalog(ServerLinkError::Unexpected(format!(
                "the server sent backup {} for GetBackup {id}",
                info.id
            ))));
        }
        let (key, dictionary) = match read(recv.recv().await)? {
            Message::HashKey {
                key,
                algorithm,
                dictionary,
            } => (
                block_hash_key(key, algorithm).map_err(RestoreError::Catalog)?,
                dictionary,
            ),
            other => return Err(unexpected("GetBackup", &other)),
        };
        Ok((
            info,
            key,
            dictionary,
            Self {
                recv,
                _send: send,
                pending: None,
                lookahead: None,
                ended: false,
            },
        ))
    }

    /// The next item; `None` after `CatalogEnd`.
    pub(super) async fn next(&mut self) -> Result<Option<ContentItem>, RestoreError> {
        loop {
            if self.ended {
                return Ok(self.pending.take().map(ContentItem::File));
            }
            let msg = match self.lookahead.take() {
                Some(m) => m,
                None => match self.recv.recv().await.map_err(RestoreError::Catalog)? {
                    Some(m) => m,
                    None => return Err(RestoreError::Catalog(ServerLinkError::Closed)),
                },
            };
            match msg {
                Message::FileBlocks { blocks } => match &mut self.pending {
                    Some(entry) => entry.blocks.extend(blocks),
                    None => {
                        return Err(unexpected(
                            "GetBackup (FileBlocks without a file)",
                            &Message::FileBlocks { blocks },
                        ));
                    }
                },
                other if self.pending.is_some() => {
                    self.lookahead = Some(other);
                    return Ok(self.pending.take().map(ContentItem::File));
                }
                Message::FileEntry { entry } => self.pending = Some(entry),
                Message::ManifestData { data } => return Ok(Some(ContentItem::Manifest(data))),
                Message::CatalogEnd => self.ended = true,
                other => return Err(unexpected("GetBackup", &other)),
            }
        }
    }
}
