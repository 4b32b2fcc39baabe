//! The archives of a `BASE_BACKUP` stream, one after the other, through the tar reader into
//! the [`Cutter`]: sans-IO, so the capture and its tests share every step but the network.

use bytes::BytesMut;
use klio_crypto::BlockHashKey;
use klio_proto::tar::TarReader;

use super::batch::{Batch, BatchLimits};
use super::capture::BackupError;
use super::cutter::{ArchiveRoot, CutTotals, Cutter};

/// The archive being read: its name and the tar reader with the bytes it has not consumed.
#[derive(Debug)]
struct OpenArchive {
    name: String,
    reader: TarReader,
    buf: BytesMut,
}

impl OpenArchive {
    /// Checks that the archive ended with its end marker.
    fn finish(self) -> Result<(), BackupError> {
        self.reader.finish().map_err(|source| BackupError::Archive {
            archive: self.name,
            source,
        })
    }
}

/// Where the entries of the archive `name` go: `base.tar` (no tablespace) is the data
/// directory, `<oid>.tar` a tablespace.
fn archive_root(name: &str, tablespace: Option<&str>) -> Result<ArchiveRoot, BackupError> {
    if tablespace.is_none() {
        return Ok(ArchiveRoot::DataDirectory);
    }
    name.strip_suffix(".tar")
        .and_then(|oid| oid.parse().ok())
        .map(|oid| ArchiveRoot::Tablespace { oid })
        .ok_or_else(|| BackupError::ArchiveName(name.to_owned()))
}

/// Turns the archives' bytes into batches of blocks and files.
#[derive(Debug)]
pub(crate) struct ArchiveStream {
    cutter: Cutter,
    archive: Option<OpenArchive>,
}

impl ArchiveStream {
    /// A stream hashing with `key`, ending batches at `limits`.
    pub(crate) fn new(key: BlockHashKey, limits: BatchLimits) -> Self {
        Self {
            cutter: Cutter::new(key, limits),
            archive: None,
        }
    }

    /// A new archive starts (`n` message): the previous one must be complete.
    pub(crate) fn new_archive(
        &mut self,
        name: String,
        tablespace: Option<&str>,
    ) -> Result<(), BackupError> {
        if let Some(previous) = self.archive.take() {
            previous.finish()?;
        }
        self.cutter
            .start_archive(archive_root(&name, tablespace)?)?;
        self.archive = Some(OpenArchive {
            name,
            reader: TarReader::new(),
            buf: BytesMut::new(),
        });
        Ok(())
    }

    /// The next bytes of the current archive; returns the batches that became full, to be
    /// exchanged in order before more data is fed (a piece of a `CopyData` message fills one
    /// or two at most).
    pub(crate) fn data(&mut self, data: &[u8]) -> Result<Vec<Batch>, BackupError> {
        let mut full = Vec::new();
        // The copystream decoder allows data only inside an archive.
        let Some(open) = self.archive.as_mut() else {
            return Ok(full);
        };
        open.buf.extend_from_slice(data);
        loop {
            let event = match open.reader.decode(&mut open.buf) {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(full),
                Err(source) => {
                    return Err(BackupError::Archive {
                        archive: open.name.clone(),
                        source,
                    });
                }
            };
            self.cutter.push(event)?;
            if self.cutter.batch_is_full() {
                full.push(self.cutter.take_batch());
            }
        }
    }

    /// The archives are over (the manifest starts): checks the last one and returns the last
    /// batch.
    pub(crate) fn finish(&mut self) -> Result<Batch, BackupError> {
        if let Some(last) = self.archive.take() {
            last.finish()?;
        }
        Ok(self.cutter.finish()?)
    }

    /// What was cut so far.
    pub(crate) fn totals(&self) -> CutTotals {
        self.cutter.totals()
    }
}
