//! Fetching one file from the Klio server over its own QUIC stream.

use klio_proto::klio::Message;

use crate::server_link::{ServerConnection, ServerLinkError};

/// A file as the server sent it, checked against the server's size and CRC-32C.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedFile {
    /// The bytes (a partial segment is zero-padded to full size).
    pub content: Vec<u8>,
    /// CRC-32C of `content`, as computed by the server.
    pub crc32c: u32,
    /// The segment is still being streamed: do not keep this copy.
    pub partial: bool,
}

impl std::fmt::Debug for FetchedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedFile")
            .field("len", &self.content.len())
            .field("crc32c", &format_args!("{:08x}", self.crc32c))
            .field("partial", &self.partial)
            .finish()
    }
}

/// Largest file accepted: the largest WAL segment PostgreSQL allows (1 GiB). History files
/// are small.
const MAX_FILE_LEN: usize = 1 << 30;

/// Asks for `name` on a new stream of `conn`; `None` if the archive has no such file.
pub async fn fetch_file(
    conn: &ServerConnection,
    name: &str,
) -> Result<Option<FetchedFile>, ServerLinkError> {
    let (mut send, mut recv) = conn.open_stream().await?;
    send.send(&Message::GetFile {
        name: name.to_owned(),
    })
    .await?;
    send.finish();
    let mut content = Vec::new();
    let bad = |what: String| ServerLinkError::Unexpected(format!("while fetching {name}: {what}"));
    loop {
        match recv.recv().await? {
            Some(Message::FileData { data }) => {
                if content.len() + data.len() > MAX_FILE_LEN {
                    return Err(bad(format!("more than {MAX_FILE_LEN} bytes")));
                }
                content.extend_from_slice(&data);
            }
            Some(Message::FileEnd {
                size,
                crc32c,
                partial,
            }) => {
                if size != content.len() as u64 {
                    return Err(bad(format!(
                        "the server announced {size} bytes but sent {}",
                        content.len()
                    )));
                }
                let got = crc32c::crc32c(&content);
                if got != crc32c {
                    return Err(bad(format!(
                        "CRC-32C {got:08x} of the received bytes differs from the server's \
                         {crc32c:08x}"
                    )));
                }
                return Ok(Some(FetchedFile {
                    content,
                    crc32c,
                    partial,
                }));
            }
            Some(Message::NoSuchFile { .. }) => return Ok(None),
            Some(other) => {
                return Err(bad(format!("unexpected message {:#04x}", other.tag())));
            }
            None => return Err(ServerLinkError::Closed),
        }
    }
}
