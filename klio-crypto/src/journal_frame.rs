//! The AEAD of encrypted journal frames: AES-256-GCM under a per-journal frame key.
//!
//! A journal (the segment in progress of klio-store's WAL archive) keeps its frame key in a
//! sealed object at its start; this module only seals and opens one frame at a time, bytes in,
//! bytes out. The frame layout itself belongs to the journal (see klio-store's `journal`
//! module); here a frame is:
//!
//! - a *header*, authenticated but not encrypted, chosen by the caller;
//! - a 12-byte *nonce* ([`NONCE_LEN`]), random per frame ([`random_nonce`]), which the caller
//!   also stores (normally inside the header);
//! - the data, encrypted in place, followed by a 16-byte tag ([`TAG_LEN`]).
//!
//! The additional data is the key's 16-byte *journal id* followed by the whole header, so a
//! frame cannot be moved to another journal, nor its header altered, undetected.
//!
//! The nonce is random rather than a counter on purpose: after a crash the torn tail of a
//! journal is cleared and a frame at the same position is written again with other data; a
//! counter nonce would then be reused under the same key, which breaks AES-GCM. Random 96-bit
//! nonces make that as unlikely as a collision among the (at most a few million) frames of one
//! journal.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::SecureRandom;

/// Length of a frame key.
pub const KEY_LEN: usize = 32;
/// Length of a journal id.
pub const JOURNAL_ID_LEN: usize = 16;
/// Length of a frame nonce.
pub const NONCE_LEN: usize = 12;
/// Length of a frame's authentication tag.
pub const TAG_LEN: usize = 16;

/// Why sealing or opening a journal frame failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameAeadError {
    /// The system random number generator failed.
    #[error(
        "the system random number generator failed; check that the operating system provides \
         getrandom(2) or /dev/urandom"
    )]
    Random,
    /// The AEAD refused the key (only possible for a key of the wrong length).
    #[error("AES-256-GCM refused the journal frame key; this is a bug in Klio, please report it")]
    KeyRejected,
    /// The AEAD refused to seal (only possible for absurd sizes).
    #[error(
        "AES-256-GCM refused to seal a journal frame of {len} bytes; this is a bug in Klio, \
         please report it"
    )]
    SealRefused {
        /// The data length.
        len: usize,
    },
    /// The tag does not match: the frame was torn, damaged, altered or comes from another
    /// journal.
    #[error(
        "the journal frame does not authenticate: it was torn, damaged, altered or comes from \
         another journal"
    )]
    Unauthentic,
}

/// A fresh random frame key, to be stored sealed in the journal's key header.
pub fn random_key(rng: &dyn SecureRandom) -> Result<[u8; KEY_LEN], FrameAeadError> {
    let mut key = [0u8; KEY_LEN];
    rng.fill(&mut key).map_err(|_| FrameAeadError::Random)?;
    Ok(key)
}

/// A fresh random nonce for one frame.
pub fn random_nonce(rng: &dyn SecureRandom) -> Result<[u8; NONCE_LEN], FrameAeadError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| FrameAeadError::Random)?;
    Ok(nonce)
}

/// The frame key of one journal, bound to its journal id.
pub struct FrameKey {
    aead: LessSafeKey,
    journal_id: [u8; JOURNAL_ID_LEN],
}

impl fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameKey")
            .field("journal_id", &self.journal_id)
            .finish_non_exhaustive()
    }
}

impl FrameKey {
    /// The frame key `key` of the journal `journal_id`.
    pub fn new(
        key: &[u8; KEY_LEN],
        journal_id: [u8; JOURNAL_ID_LEN],
    ) -> Result<Self, FrameAeadError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| FrameAeadError::KeyRejected)?;
        Ok(Self {
            aead: LessSafeKey::new(unbound),
            journal_id,
        })
    }

    /// The journal id the key is bound to.
    pub fn journal_id(&self) -> &[u8; JOURNAL_ID_LEN] {
        &self.journal_id
    }

    /// Encrypts `data` in place under `nonce`, authenticating `header`; returns the tag that
    /// follows the ciphertext.
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        header: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], FrameAeadError> {
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(self.additional_data(header)),
                data,
            )
            .map_err(|_| FrameAeadError::SealRefused { len: data.len() })?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `sealed` (the ciphertext followed by its tag) in place, checking it against
    /// `nonce` and `header`; returns the plaintext, the first `sealed.len() - TAG_LEN` bytes.
    /// On [`FrameAeadError::Unauthentic`] the contents of `sealed` are unspecified.
    pub fn open<'a>(
        &self,
        nonce: &[u8; NONCE_LEN],
        header: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], FrameAeadError> {
        self.aead
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(self.additional_data(header)),
                sealed,
            )
            .map_err(|_| FrameAeadError::Unauthentic)
    }

    /// The journal id followed by the header.
    fn additional_data(&self, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(JOURNAL_ID_LEN + header.len());
        aad.extend_from_slice(&self.journal_id);
        aad.extend_from_slice(header);
        aad
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;

    fn key(journal_id: u8) -> FrameKey {
        FrameKey::new(&[7; KEY_LEN], [journal_id; JOURNAL_ID_LEN]).unwrap()
    }

    fn sealed(key: &FrameKey, nonce: &[u8; NONCE_LEN], header: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        let tag = key.seal(nonce, header, &mut out).unwrap();
        out.extend_from_slice(&tag);
        out
    }

    #[test]
    fn a_sealed_frame_opens_to_its_data() {
        let k = key(1);
        let nonce = random_nonce(&SystemRandom::new()).unwrap();
        let mut frame = sealed(&k, &nonce, b"header", b"some WAL");
        assert_eq!(frame.len(), 8 + TAG_LEN);
        assert_ne!(&frame[..8], b"some WAL");
        assert_eq!(k.open(&nonce, b"header", &mut frame).unwrap(), b"some WAL");
    }

    #[test]
    fn a_frame_with_another_header_nonce_journal_or_a_flipped_bit_is_unauthentic() {
        let k = key(1);
        let nonce = [3; NONCE_LEN];
        let frame = sealed(&k, &nonce, b"header", b"some WAL");
        let open = |k: &FrameKey, nonce: &[u8; NONCE_LEN], header: &[u8], bytes: &[u8]| {
            k.open(nonce, header, &mut bytes.to_vec())
                .map(|p| p.to_vec())
        };
        assert_eq!(
            open(&k, &nonce, b"headex", &frame),
            Err(FrameAeadError::Unauthentic)
        );
        assert_eq!(
            open(&k, &[4; NONCE_LEN], b"header", &frame),
            Err(FrameAeadError::Unauthentic)
        );
        assert_eq!(
            open(&key(2), &nonce, b"header", &frame),
            Err(FrameAeadError::Unauthentic)
        );
        for at in 0..frame.len() {
            let mut bad = frame.clone();
            bad[at] ^= 0x20;
            assert_eq!(
                open(&k, &nonce, b"header", &bad),
                Err(FrameAeadError::Unauthentic),
                "{at}"
            );
        }
    }

    #[test]
    fn the_additional_data_is_the_journal_id_then_the_header() {
        // Byte for byte what existing journals were written with: AES-256-GCM with AAD =
        // journal id ‖ header, so frames already on disk keep opening.
        let k = key(9);
        let nonce = [5; NONCE_LEN];
        let frame = sealed(&k, &nonce, b"h", b"data");
        let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; KEY_LEN]).unwrap());
        let mut aad = vec![9u8; JOURNAL_ID_LEN];
        aad.push(b'h');
        let mut bytes = frame.clone();
        let plain = raw
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut bytes,
            )
            .unwrap();
        assert_eq!(plain, b"data");
    }
}
