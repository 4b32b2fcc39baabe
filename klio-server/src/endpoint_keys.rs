//! QUIC endpoint keys kept in the data directory across restarts.
//!
//! After a crash and restart, packets of a client's old connection reach a server that no
//! longer knows it. With the same stateless-reset key and connection-id key as before, the
//! server recognises its own connection ids and answers with a valid stateless reset, so the
//! client reconnects at once instead of waiting for its idle timeout.

use std::path::Path;
use std::sync::Arc;

use klio_wal::{FsAction, FsError, durable};
use ring::rand::SecureRandom;

use crate::server::ServerError;

const FILE: &str = "quic-reset-key";
const LEN: usize = 32;

/// The endpoint configuration with keys that survive restarts.
pub(crate) fn endpoint_config(data_dir: &Path) -> Result<quinn::EndpointConfig, ServerError> {
    let secret = load_or_create(data_dir)?;
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    // The connection-id validation key is derived from the same secret.
    let tag = ring::hmac::sign(&reset_key, b"klio connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// Reads the secret, creating it on first start.
fn load_or_create(data_dir: &Path) -> Result<Vec<u8>, ServerError> {
    let path = data_dir.join(FILE);
    let secret = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == LEN => bytes,
        Ok(_) => {
            tracing::warn!("{} has the wrong size; creating a new key", path.display());
            create(&path)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path)?,
        Err(e) => return Err(FsError::new(FsAction::Read, &path, e).into()),
    };
    Ok(secret)
}

fn create(path: &Path) -> Result<Vec<u8>, ServerError> {
    let mut secret = vec![0u8; LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| ServerError::Randomness)?;
    // Without the key on disk, a restarted server could not reset old connections: replace
    // fsyncs it, renames it into place and makes the rename durable too.
    durable::replace(path, &secret)?;
    Ok(secret)
}
