//! Key files on disk for encryption at rest: `klio keys generate` and loading with the
//! permission checks an operator expects (a key readable by others is refused).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use klio_crypto::keys::KdfParams;
pub use klio_crypto::passphrase::DEFAULT_PASSPHRASE_ENV;
use klio_crypto::{CryptoError, Kek, KeyId, Keyring, PassphraseKeyFile, SystemRandom};
use klio_wal::{FsAction, FsError, durable};

/// A key file could not be created or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The file exists already; keys are never overwritten.
    #[error("{0} already exists: keys are never overwritten; choose another file name")]
    Exists(PathBuf),
    /// Group or others may read the file.
    #[error(
        "key file {path} is accessible by group or others (mode {mode:04o}): run `chmod 600 {path}`"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A passphrase key file's environment variable is not set.
    #[error(
        "key file {path} is derived from a passphrase, read from the environment variable \
         {var}, which is not set (or empty): set {var} to the passphrase"
    )]
    PassphraseMissing {
        /// The file.
        path: PathBuf,
        /// The variable it names.
        var: String,
    },
    /// The contents are not a key.
    #[error("key file {path}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: CryptoError,
    },
}

/// Writes a new random key to `path` (mode 0600, never overwriting) and returns its id.
pub fn generate_key_file(path: &Path) -> Result<KeyId, KeyFileError> {
    let (kek, contents) =
        Kek::generate(&SystemRandom::new()).map_err(|source| KeyFileError::Invalid {
            path: path.to_owned(),
            source,
        })?;
    write_new_key_file(path, &contents)?;
    Ok(kek.id())
}

/// Derives a key from the passphrase in the environment variable `passphrase_env` and writes
/// its [`PassphraseKeyFile`] (salt, costs, id) to `path` (mode 0600, never overwriting).
/// Loading the file later reads the passphrase from the same variable.
pub fn generate_passphrase_key_file(
    path: &Path,
    passphrase_env: &str,
    params: KdfParams,
) -> Result<KeyId, KeyFileError> {
    let invalid = |source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    };
    let passphrase = passphrase_from_env(path, passphrase_env)?;
    let (kek, file) = PassphraseKeyFile::create(
        passphrase.as_bytes(),
        params,
        passphrase_env,
        &SystemRandom::new(),
    )
    .map_err(invalid)?;
    write_new_key_file(path, &file.encode())?;
    Ok(kek.id())
}

fn passphrase_from_env(path: &Path, var: &str) -> Result<String, KeyFileError> {
    std::env::var(var)
        .ok()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| KeyFileError::PassphraseMissing {
            path: path.to_owned(),
            var: var.to_owned(),
        })
}

/// Creates `path` with `contents`, mode 0600, durably; refuses to replace an existing file.
fn write_new_key_file(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    // A key that vanishes after a crash would leave data nobody can read: write_new makes it
    // and its directory entry durable before anyone encrypts with it.
    durable::write_new(path, contents, 0o600).map_err(|e| {
        if e.action == FsAction::Create && e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.to_owned())
        } else {
            KeyFileError::Fs(e)
        }
    })
}

/// Reads a key file, refusing one that group or others can access. A passphrase key file
/// takes its passphrase from the environment variable it names, and a wrong passphrase is
/// refused here, before anything is encrypted with the key.
pub fn load_key_file(path: &Path) -> Result<Kek, KeyFileError> {
    let mode = std::fs::metadata(path)
        .map_err(|e| FsError::new(FsAction::Stat, path, e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let contents = std::fs::read(path).map_err(|e| FsError::new(FsAction::Read, path, e))?;
    let invalid = |source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    };
    if PassphraseKeyFile::is_passphrase_key_file(&contents) {
        let file = PassphraseKeyFile::parse(&contents).map_err(invalid)?;
        let passphrase = passphrase_from_env(path, &file.passphrase_env)?;
        return file.derive(passphrase.as_bytes()).map_err(invalid);
    }
    Kek::from_key_file_contents(&contents).map_err(invalid)
}

/// A keyring from the primary key file (used for new objects) and older ones still needed to
/// read existing objects.
pub fn load_keyring(primary: &Path, older: &[PathBuf]) -> Result<Keyring, KeyFileError> {
    let mut ring = Keyring::new(load_key_file(primary)?);
    for p in older {
        ring.add(load_key_file(p)?);
    }
    Ok(ring)
}

/// Why the keys in use could not be listed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysInUseError {
    /// The data directory could not be read.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A cluster's archive could not be read (a key missing from the keyring, damage).
    #[error("cluster {cluster}")]
    Archive {
        /// The cluster.
        cluster: String,
        /// Why.
        #[source]
        source: klio_store::wal_archive::WalArchiveError,
    },
}

/// For every cluster under `data_dir`, the ids of the keys its archive's files still need.
/// Read-only, safe while the server runs; `keyring` must hold every key in use.
pub fn keys_in_use(
    data_dir: &Path,
    keyring: &Keyring,
) -> Result<Vec<(String, std::collections::BTreeSet<KeyId>)>, KeysInUseError> {
    let clusters = data_dir.join("clusters");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&clusters) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(FsError::new(FsAction::ReadDirectory, &clusters, e).into()),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let wal = clusters.join(&name).join("wal");
        if !wal.is_dir() {
            continue;
        }
        let archive =
            klio_store::wal_archive::WalArchiveReader::open_with(&wal, Some(keyring.clone()))
                .and_then(|a| a.key_ids_in_use())
                .map_err(|source| KeysInUseError::Archive {
                    cluster: name.clone(),
                    source,
                })?;
        out.push((name, archive));
    }
    Ok(out)
}

/// `klio keys rotate`: with the server stopped, re-wraps the data keys of every cluster's
/// encrypted files under `keyring`'s primary key (only key slots are rewritten, never data).
/// Returns per cluster how many files were re-wrapped.
pub fn rotate_offline(
    data_dir: &Path,
    keyring: &Keyring,
) -> Result<Vec<(String, usize)>, RotateError> {
    let _lock = crate::data_dir_lock::lock(data_dir).map_err(RotateError::Locked)?;
    if crate::data_dir_mode::is_read_only(data_dir) {
        return Err(RotateError::ReadOnly(data_dir.to_owned()));
    }
    let primary = keyring.primary_id();
    let mut out = Vec::new();
    for (cluster, _) in keys_in_use(data_dir, keyring)? {
        let wal = data_dir.join("clusters").join(&cluster).join("wal");
        let archive_err = |source| {
            RotateError::InUse(KeysInUseError::Archive {
                cluster: cluster.clone(),
                source,
            })
        };
        let identity =
            klio_store::wal_archive::WalArchiveReader::open_with(&wal, Some(keyring.clone()))
                .map_err(archive_err)?
                .identity();
        let mut archive = klio_store::wal_archive::WalArchive::open_with(
            &wal,
            identity,
            klio_store::wal_archive::StorageOptions {
                keyring: Some(keyring.clone()),
                seal: klio_crypto::SealOptions::default(),
                indexes: None,
            },
        )
        .map_err(archive_err)?;
        let summary = archive.rewrap_all(keyring, &primary).map_err(archive_err)?;
        out.push((cluster, summary.rewrapped));
    }
    Ok(out)
}

/// Why an offline rotation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    /// The server is running (or another rotation).
    #[error(
        "cannot lock the data directory; to rotate keys while the server runs, restart the server with --encryption-key NEW --encryption-old-key OLD: it re-wraps each cluster's files itself"
    )]
    Locked(#[source] crate::server::ServerError),
    /// An archive could not be read or rewritten.
    #[error(transparent)]
    InUse(#[from] KeysInUseError),
    /// The data directory is a read-only server's.
    #[error(
        "{0} belongs to a read-only server (mode: read-only), which serves restores from Tier 2 \
         and writes nothing: rotate keys on the primary server's data directory"
    )]
    ReadOnly(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_and_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k1.key");
        let id = generate_key_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_key_file(&path).unwrap().id(), id);
        assert!(matches!(
            generate_key_file(&path),
            Err(KeyFileError::Exists(_))
        ));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key_file(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");

        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, b"not a key").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_key_file(&bad),
            Err(KeyFileError::Invalid { .. })
        ));

        let k2 = dir.path().join("k2.key");
        let id2 = generate_key_file(&k2).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ring = load_keyring(&k2, &[path]).unwrap();
        assert_eq!(ring.primary_id(), id2);
        assert!(ring.contains(&id));
    }

    #[test]
    fn offline_rotation_rewraps_and_respects_the_lock() {
        use klio_store::wal_archive::{ClusterIdentity, StorageOptions, WalArchive};
        use klio_wal::{Lsn, SegmentSize, TimelineId};
        let dir = tempfile::tempdir().unwrap();
        let k1 = dir.path().join("k1.key");
        let k2 = dir.path().join("k2.key");
        let id1 = generate_key_file(&k1).unwrap();
        let id2 = generate_key_file(&k2).unwrap();
        let data = dir.path().join("data");
        let wal = data.join("clusters/pg1/wal");
        let identity = ClusterIdentity {
            system_id: 7,
            segment_size: SegmentSize::new(1 << 20).unwrap(),
        };
        let mut archive = WalArchive::open_with(
            &wal,
            identity,
            StorageOptions {
                keyring: Some(load_keyring(&k1, &[]).unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        archive.begin(TimelineId::FIRST, Lsn(1 << 20)).unwrap();
        archive
            .append(Lsn(1 << 20), &vec![3u8; (1 << 20) + 100])
            .unwrap();
        archive.sync().unwrap();
        drop(archive);

        let both = load_keyring(&k2, std::slice::from_ref(&k1)).unwrap();
        let before = keys_in_use(&data, &both).unwrap();
        assert_eq!(before[0].1.iter().copied().collect::<Vec<_>>(), vec![id1]);

        let lock = crate::data_dir_lock::lock(&data).unwrap();
        let e = rotate_offline(&data, &both).unwrap_err();
        assert!(e.to_string().contains("restart the server"), "{e}");
        drop(lock);

        let done = rotate_offline(&data, &both).unwrap();
        assert_eq!(
            done,
            vec![("pg1".to_owned(), 2)],
            "a sealed segment and a journal"
        );
        let after = keys_in_use(&data, &load_keyring(&k2, &[]).unwrap()).unwrap();
        assert_eq!(after[0].1.iter().copied().collect::<Vec<_>>(), vec![id2]);
    }
}
