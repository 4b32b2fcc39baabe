//! What an [`ObjectStore`](crate::ObjectStore) connects to: endpoint, bucket, prefix,
//! addressing, credentials and trust. A plain value; reading it from YAML is the caller's job.

use std::fmt;
use std::path::PathBuf;

/// S3's smallest part of a multipart upload (every part but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// Where Tier 2 stores its objects and how to reach them.
#[derive(Clone, Debug)]
pub struct Tier2Config {
    /// The S3 endpoint (`http://host:port` or `https://host`); `None` means AWS's own endpoint
    /// for [`region`](Self::region).
    pub endpoint: Option<String>,
    /// The region requests are signed for (`us-east-1` for most S3-compatible servers).
    pub region: String,
    /// The bucket, which must exist.
    pub bucket: String,
    /// Prepended to every key with a `/` between; empty for the bucket's root.
    pub key_prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual hosts
    /// (`bucket.endpoint/key`); `None` means path style exactly when an endpoint is set, as
    /// S3-compatible servers rarely have per-bucket DNS names.
    pub path_style: Option<bool>,
    /// Which credentials sign the requests.
    pub credentials: Credentials,
    /// A PEM file of the certificates that an `https` endpoint's chain must lead to; it replaces
    /// the system's trusted roots. `None` trusts the system's roots.
    pub ca_file: Option<PathBuf>,
    /// When objects go up in parts instead of one `PutObject`.
    pub multipart: MultipartConfig,
}

impl Tier2Config {
    /// A configuration for `bucket` with the defaults: AWS's endpoint in `region`, no prefix,
    /// the SDK's standard credential chain, the system's roots, default multipart sizes.
    pub fn new(region: impl Into<String>, bucket: impl Into<String>) -> Self {
        Self {
            endpoint: None,
            region: region.into(),
            bucket: bucket.into(),
            key_prefix: String::new(),
            path_style: None,
            credentials: Credentials::StandardChain,
            ca_file: None,
            multipart: MultipartConfig::default(),
        }
    }

    /// Whether requests use path-style addressing, after the default for custom endpoints.
    pub fn uses_path_style(&self) -> bool {
        self.path_style.unwrap_or(self.endpoint.is_some())
    }
}

/// Which credentials sign requests.
#[derive(Clone)]
pub enum Credentials {
    /// An access key and its secret, from Klio's configuration.
    Static {
        /// The access key id (not a secret; it names the key in logs and errors).
        access_key_id: String,
        /// The secret access key; never printed.
        secret_access_key: String,
    },
    /// The SDK's standard chain: the `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` variables, the
    /// shared profile (`AWS_PROFILE`), web identity, then the instance metadata service.
    StandardChain,
    /// The standard chain with this named profile of the shared config and credentials files
    /// (`~/.aws/config`, `~/.aws/credentials`) instead of `AWS_PROFILE`.
    Profile(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static { access_key_id, .. } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"<redacted>")
                .finish(),
            Self::StandardChain => f.write_str("StandardChain"),
            Self::Profile(name) => f.debug_tuple("Profile").field(name).finish(),
        }
    }
}

/// When and how objects go up as multipart uploads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultipartConfig {
    /// Objects larger than this many bytes go up in parts.
    pub threshold: usize,
    /// The size of every part but the last; at least [`MIN_PART_SIZE`].
    pub part_size: usize,
}

impl Default for MultipartConfig {
    /// Objects above 24 MiB in 16 MiB parts: a WAL segment (16 MiB plus encryption overhead) is
    /// always a single `PutObject`; a base-backup pack (closed at 32 MiB) goes up in parts, so a
    /// failure costs one part's retry, not the whole pack's.
    fn default() -> Self {
        Self {
            threshold: 24 * 1024 * 1024,
            part_size: 16 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret_key() {
        let mut config = Tier2Config::new("us-east-1", "wal");
        config.credentials = Credentials::Static {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI-secret".into(),
        };
        let printed = format!("{config:?}");
        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
        assert!(!printed.contains("wJalrXUtnFEMI-secret"), "{printed}");
    }

    #[test]
    fn path_style_is_the_default_exactly_when_an_endpoint_is_set() {
        let mut config = Tier2Config::new("us-east-1", "wal");
        assert!(!config.uses_path_style());
        config.endpoint = Some("http://127.0.0.1:9000".into());
        assert!(config.uses_path_style());
        config.path_style = Some(false);
        assert!(!config.uses_path_style());
    }
}
