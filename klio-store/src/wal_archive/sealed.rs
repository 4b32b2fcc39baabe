//! Completed segments and history files sealed at rest: compressed, then encrypted with
//! klio-crypto.
//!
//! With a keyring, a completed segment is stored as `<segment name>.klio` instead of the plain
//! `<segment name>`. The file is one klio-crypto sealed object (format in
//! `klio_crypto::format`: a 124-byte header naming the key and compression, then AES-256-GCM
//! chunks of the archive's chunk size, each compressed with lz4 or zstd) whose plaintext is a
//! 32-byte *binding block* followed by the segment's bytes, exactly as PostgreSQL wrote them
//! (integers little-endian):
//!
//! | bytes  | field                          |
//! |--------|--------------------------------|
//! | 0..8   | magic `KLWSEG01`               |
//! | 8..16  | the cluster's system id        |
//! | 16..20 | timeline                       |
//! | 20..28 | segment number                 |
//! | 28..32 | segment size in bytes          |
//!
//! The binding block is inside the authenticated plaintext, so a sealed file renamed, swapped
//! for another segment's, or copied from another cluster's archive is refused on reading, even
//! when the same key sealed both; and because the object authenticates every chunk, a flipped
//! byte or a truncated file never yields bytes. The file is written as `<name>.klio.klio-tmp`,
//! fsynced, renamed and the directory fsynced, like a plain segment. Key rotation rewrites only
//! the object's key slot (bytes 48..124) in place.
//!
//! A timeline history file is sealed the same way as `<name>.history.klio`, its binding block
//! holding the magic `KLWHIS01`, the system id and the timeline (segment number and size zero),
//! followed by the history file's bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use klio_crypto::{CryptoError, Sealer};
use klio_wal::durable::TempFile;
use klio_wal::{SegmentNo, SegmentSize, TimelineId, WalFileName};

use super::{Ctx, WalArchiveError, optional_file};

/// Suffix of a sealed segment's file name.
pub(super) const SEALED_SUFFIX: &str = ".klio";

const BINDING_MAGIC: [u8; 8] = *b"KLWSEG01";
const HISTORY_BINDING_MAGIC: [u8; 8] = *b"KLWHIS01";
/// Length of the binding block in front of the segment's bytes.
pub(super) const BINDING_LEN: usize = 32;

/// The file name of a sealed segment.
pub(super) fn sealed_name(timeline: TimelineId, segno: SegmentNo, size: SegmentSize) -> String {
    let base = WalFileName::Segment { timeline, segno }.to_string_with(size);
    format!("{base}{SEALED_SUFFIX}")
}

/// The file name of a sealed history file.
pub(super) fn sealed_history_name(timeline: TimelineId, size: SegmentSize) -> String {
    let base = WalFileName::History { timeline }.to_string_with(size);
    format!("{base}{SEALED_SUFFIX}")
}

fn binding(ctx: &Ctx<'_>, timeline: TimelineId, segno: SegmentNo) -> [u8; BINDING_LEN] {
    let mut b = [0u8; BINDING_LEN];
    b[0..8].copy_from_slice(&BINDING_MAGIC);
    b[8..16].copy_from_slice(&ctx.system_id.to_le_bytes());
    b[16..20].copy_from_slice(&timeline.get().to_le_bytes());
    b[20..28].copy_from_slice(&segno.0.to_le_bytes());
    b[28..32].copy_from_slice(&(ctx.size.bytes_u64() as u32).to_le_bytes());
    b
}

fn history_binding(ctx: &Ctx<'_>, timeline: TimelineId) -> [u8; BINDING_LEN] {
    let mut b = [0u8; BINDING_LEN];
    b[0..8].copy_from_slice(&HISTORY_BINDING_MAGIC);
    b[8..16].copy_from_slice(&ctx.system_id.to_le_bytes());
    b[16..20].copy_from_slice(&timeline.get().to_le_bytes());
    b
}

/// The key id named by the header of the sealed file at `path`, if it can be read.
pub(super) fn key_id_of(path: &Path) -> Option<klio_crypto::KeyId> {
    let file = File::open(path).ok()?;
    let mut header = [0u8; klio_crypto::HEADER_LEN];
    file.read_exact_at(&mut header, 0).ok()?;
    klio_crypto::object_key_id(&header).ok()
}

/// Writes a completed segment, plain or sealed, into a temporary file and publishes it.
pub(super) struct SegmentWriter {
    temp: TempFile,
    at: u64,
    sealer: Option<(Sealer, Vec<u8>)>,
}

impl SegmentWriter {
    /// Starts the final file of `timeline`/`segno`: sealed when `ctx` has a keyring.
    pub(super) fn create(
        dir: &Path,
        timeline: TimelineId,
        segno: SegmentNo,
        ctx: &Ctx<'_>,
    ) -> Result<Self, WalArchiveError> {
        let Some(keyring) = ctx.keyring else {
            let name = WalFileName::Segment { timeline, segno }.to_string_with(ctx.size);
            return Ok(Self {
                temp: TempFile::create(&dir.join(name))?,
                at: 0,
                sealer: None,
            });
        };
        let temp = TempFile::create(&dir.join(sealed_name(timeline, segno, ctx.size)))?;
        let crypto = |source| WalArchiveError::Crypto {
            action: "seal WAL segment",
            path: temp.path().to_owned(),
            source,
        };
        let (mut sealer, mut buf) = Sealer::new(keyring, &ctx.seal, ctx.rng).map_err(crypto)?;
        sealer
            .update_into(&binding(ctx, timeline, segno), &mut buf)
            .map_err(crypto)?;
        let mut w = Self {
            temp,
            at: 0,
            sealer: None,
        };
        w.write_raw(&buf)?;
        buf.clear();
        w.sealer = Some((sealer, buf));
        Ok(w)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), WalArchiveError> {
        self.temp.write_all_at(bytes, self.at)?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    fn crypto(&self, source: CryptoError) -> WalArchiveError {
        WalArchiveError::Crypto {
            action: "seal WAL segment",
            path: self.temp.path().to_owned(),
            source,
        }
    }

    /// Appends the segment's next bytes.
    pub(super) fn write(&mut self, data: &[u8]) -> Result<(), WalArchiveError> {
        let Some((mut sealer, mut buf)) = self.sealer.take() else {
            return self.write_raw(data);
        };
        sealer
            .update_into(data, &mut buf)
            .map_err(|e| self.crypto(e))?;
        self.write_raw(&buf)?;
        buf.clear();
        self.sealer = Some((sealer, buf));
        Ok(())
    }

    /// Finishes the file and gives it its final name, atomically and durably.
    pub(super) fn publish(mut self) -> Result<(), WalArchiveError> {
        if let Some((sealer, mut buf)) = self.sealer.take() {
            sealer.finish_into(&mut buf).map_err(|e| self.crypto(e))?;
            self.write_raw(&buf)?;
        }
        // The rename lives in the directory: without its fsync a crash could undo it, and a
        // segment acknowledged as complete would be missing. publish fsyncs the directory.
        Ok(self.temp.publish()?)
    }
}

/// Decrypts and authenticates the sealed object read from `path` (binding not yet checked).
fn open_object(
    path: &Path,
    bytes: &[u8],
    action: &'static str,
    ctx: &Ctx<'_>,
) -> Result<Vec<u8>, WalArchiveError> {
    let Some(keyring) = ctx.keyring else {
        return Err(WalArchiveError::Encrypted {
            path: path.to_owned(),
            key_id: klio_crypto::object_key_id(bytes).ok(),
        });
    };
    klio_crypto::open(keyring, bytes).map_err(|source| WalArchiveError::Crypto {
        action,
        path: path.to_owned(),
        source,
    })
}

/// Opens the bytes of the sealed segment `timeline`/`segno` read from `path`: the segment, or
/// why it cannot be trusted.
pub(super) fn open_sealed(
    path: &Path,
    bytes: &[u8],
    timeline: TimelineId,
    segno: SegmentNo,
    ctx: &Ctx<'_>,
) -> Result<Vec<u8>, WalArchiveError> {
    let mut plain = open_object(path, bytes, "decrypt WAL segment", ctx)?;
    let expected_len = BINDING_LEN as u64 + ctx.size.bytes_u64();
    if plain.len() as u64 != expected_len {
        return Err(WalArchiveError::DamagedSegment {
            path: path.to_owned(),
            reason: format!(
                "it decrypts to {} bytes, expected {expected_len} (a {} segment and its \
                 {BINDING_LEN}-byte binding block)",
                plain.len(),
                ctx.size
            ),
        });
    }
    check_binding(
        path,
        &plain[..BINDING_LEN],
        &binding(ctx, timeline, segno),
        ctx,
    )?;
    plain.drain(..BINDING_LEN);
    Ok(plain)
}

/// Refuses a file whose binding block is not the one its name and archive call for.
fn check_binding(
    path: &Path,
    found: &[u8],
    expected: &[u8; BINDING_LEN],
    ctx: &Ctx<'_>,
) -> Result<(), WalArchiveError> {
    if found == expected {
        return Ok(());
    }
    let le = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&found[r]);
        u64::from_le_bytes(b)
    };
    let reason = if found[0..8] == BINDING_MAGIC {
        format!(
            "it holds timeline {} segment {} of the cluster with system id {} (segment size {}), \
             not this file's contents of system id {}: the file was swapped, renamed or copied \
             from another archive",
            le(16..20),
            le(20..28),
            le(8..16),
            le(28..32),
            ctx.system_id
        )
    } else if found[0..8] == HISTORY_BINDING_MAGIC {
        format!(
            "it holds the history file of timeline {} of the cluster with system id {}, not \
             this file's contents of system id {}: the file was swapped, renamed or copied from \
             another archive",
            le(16..20),
            le(8..16),
            ctx.system_id
        )
    } else {
        "it does not hold a sealed WAL file (no binding block)".to_owned()
    };
    Err(WalArchiveError::DamagedSegment {
        path: path.to_owned(),
        reason,
    })
}

/// The sealed form of the history file of `timeline` (`ctx` must have a keyring).
pub(super) fn seal_history(
    path: &Path,
    timeline: TimelineId,
    content: &[u8],
    ctx: &Ctx<'_>,
) -> Result<Vec<u8>, WalArchiveError> {
    let crypto = |source| WalArchiveError::Crypto {
        action: "seal history file",
        path: path.to_owned(),
        source,
    };
    let keyring = ctx.keyring.ok_or(WalArchiveError::Encrypted {
        path: path.to_owned(),
        key_id: None,
    })?;
    let mut plain = Vec::with_capacity(BINDING_LEN + content.len());
    plain.extend_from_slice(&history_binding(ctx, timeline));
    plain.extend_from_slice(content);
    klio_crypto::seal(keyring, &ctx.seal, &plain, ctx.rng).map_err(crypto)
}

/// Reads and opens the sealed history file of `timeline` at `path`; `None` if it does not exist.
pub(super) fn read_sealed_history(
    path: &Path,
    timeline: TimelineId,
    ctx: &Ctx<'_>,
) -> Result<Option<Vec<u8>>, WalArchiveError> {
    let Some(bytes) = optional_file::read_optional(path)? else {
        return Ok(None);
    };
    let mut plain = open_object(path, &bytes, "decrypt history file", ctx)?;
    if plain.len() < BINDING_LEN {
        return Err(WalArchiveError::DamagedSegment {
            path: path.to_owned(),
            reason: format!(
                "it decrypts to {} bytes, less than its {BINDING_LEN}-byte binding block",
                plain.len()
            ),
        });
    }
    check_binding(
        path,
        &plain[..BINDING_LEN],
        &history_binding(ctx, timeline),
        ctx,
    )?;
    plain.drain(..BINDING_LEN);
    Ok(Some(plain))
}

/// Reads and opens a sealed segment; `None` if the file does not exist.
pub(super) fn read_sealed(
    path: &Path,
    timeline: TimelineId,
    segno: SegmentNo,
    ctx: &Ctx<'_>,
) -> Result<Option<Vec<u8>>, WalArchiveError> {
    match optional_file::read_optional(path)? {
        None => Ok(None),
        Some(bytes) => open_sealed(path, &bytes, timeline, segno, ctx).map(Some),
    }
}
