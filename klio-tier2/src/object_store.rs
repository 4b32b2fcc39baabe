//! [`ObjectStore`]: put, get, head and delete of whole objects under the configured prefix,
//! each object carrying its CRC32C.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_sdk_s3::types::ObjectLockMode as SdkObjectLockMode;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use bytes::Bytes;

use crate::checksum;
use crate::config::{Credentials, MIN_PART_SIZE, MultipartConfig, Tier2Config};
use crate::error::{ConfigurationError, IntegrityFailure, Operation, Target, Tier2Error};

/// Attempts per request, the first included; the SDK backs off exponentially with jitter
/// between them (from 1 s, at most [`MAX_BACKOFF`]), so an unreachable server fails in
/// about 15 s at most rather than hanging.
const MAX_ATTEMPTS: u32 = 5;
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// How long a TCP (and TLS) connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response may stall between two reads.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An S3 bucket (or a prefix of one) holding Tier 2's objects.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    client: Client,
    bucket: String,
    /// The key prefix with its trailing `/`, or empty.
    prefix: String,
    multipart: MultipartConfig,
}

/// How [`ObjectStore::put`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Create only (`If-None-Match: *`): an existing object is left alone and the put answers
    /// [`Put::AlreadyExists`].
    pub if_none_match: bool,
    /// Object Lock retention to set on the new object (the bucket must have Object Lock on).
    pub object_lock: Option<ObjectLock>,
}

/// Object Lock retention for a new object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    /// Who may shorten or lift the retention.
    pub mode: ObjectLockMode,
    /// Until when the object version cannot be deleted or overwritten.
    pub retain_until: SystemTime,
}

/// S3's Object Lock retention modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectLockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete.
    Governance,
    /// Nobody may delete before the date, not even the account's root.
    Compliance,
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Put {
    /// The object is stored; the server verified its CRC32C.
    Stored,
    /// A create-only put found an object under the key and left it as it was.
    AlreadyExists,
}

/// What the server knows of an object without its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's length in bytes.
    pub size: u64,
    /// The CRC32C Klio stored with it, when it has a readable one.
    pub crc32c: Option<u32>,
}

impl ObjectStore {
    /// Checks `config` and builds the client; nothing is sent until the first request.
    pub async fn connect(config: &Tier2Config) -> Result<Self, Tier2Error> {
        validate(config)?;
        let mut tls_context = TlsContext::builder();
        if let Some(path) = &config.ca_file {
            tls_context = tls_context
                .with_trust_store(TrustStore::empty().with_pem_certificate(read_ca_file(path)?));
        }
        let tls_context = tls_context
            .build()
            .map_err(|error| ConfigurationError::BadCaFile {
                path: config.ca_file.clone().unwrap_or_default(),
                source: Some(Box::new(error)),
            })?;
        // rustls on ring, chosen explicitly: no process-wide CryptoProvider is needed, and the
        // SDK's default client (aws-lc) is never built.
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(tls_context)
            .build_https();

        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(config.region.clone()))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_max_backoff(MAX_BACKOFF),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            );
        match &config.credentials {
            Credentials::Static {
                access_key_id,
                secret_access_key,
            } => {
                loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                    access_key_id,
                    secret_access_key,
                    None,
                    None,
                    "klio-tier2-config",
                ));
            }
            Credentials::Profile(name) => loader = loader.profile_name(name),
            Credentials::StandardChain => {}
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk_config = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(config.uses_path_style())
            // Checksums only where S3 requires them: Klio sends its own CRC32C header on
            // in-memory bodies, which every S3-compatible server accepts, instead of the
            // SDK's aws-chunked trailers, which many do not.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();

        Ok(Self {
            client: Client::from_conf(s3_config),
            bucket: config.bucket.clone(),
            prefix: normalized_prefix(&config.key_prefix),
            multipart: config.multipart,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full object key of `key`: the prefix, then `key`.
    pub fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Stores `bytes` under `key`, with their CRC32C sent for the server to verify and kept
    /// as metadata for [`get`](Self::get) to verify. Objects above the multipart threshold go
    /// up in parts.
    pub async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        options: PutOptions,
    ) -> Result<Put, Tier2Error> {
        let full_key = self.full_key(key);
        if bytes.len() > self.multipart.threshold {
            return crate::multipart::upload(self, &full_key, bytes, options).await;
        }
        let crc = checksum::crc32c_base64(&bytes);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .checksum_crc32_c(&crc)
            .metadata(checksum::METADATA_KEY, &crc)
            .body(ByteStream::from(bytes));
        if options.if_none_match {
            request = request.if_none_match("*");
        }
        if let Some(lock) = options.object_lock {
            // S3 takes a locked object only with a named checksum algorithm (or Content-MD5);
            // the value is the CRC32C header already set, so the SDK computes nothing.
            request = request
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .object_lock_mode(lock.mode.into())
                .object_lock_retain_until_date(DateTime::from(lock.retain_until));
        }
        let target = self.target(Operation::Put, &full_key);
        match request.send().await {
            Ok(_) => Ok(Put::Stored),
            Err(error) => created_or(target.classify(error), options),
        }
    }

    /// The bytes under `key`, or `None` when there is no such object; checked against the
    /// CRC32C stored with them.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, Tier2Error> {
        let Some((stored, bytes)) = self.fetch(key).await? else {
            return Ok(None);
        };
        let full_key = self.full_key(key);
        let computed = crc32c::crc32c(&bytes);
        match stored {
            Ok(stored) if stored == computed => Ok(Some(bytes)),
            Ok(stored) => {
                Err(self.integrity(full_key, IntegrityFailure::Mismatch { stored, computed }))
            }
            Err(failure) => Err(self.integrity(full_key, failure)),
        }
    }

    /// The bytes under `key` whatever CRC32C they carry, or `None` when there is no such
    /// object: for a caller that compares them with bytes of its own.
    pub async fn get_unchecked(&self, key: &str) -> Result<Option<Bytes>, Tier2Error> {
        Ok(self.fetch(key).await?.map(|(_, bytes)| bytes))
    }

    /// The CRC32C stored with the object under `key` (or why there is none) and its bytes.
    async fn fetch(
        &self,
        key: &str,
    ) -> Result<Option<(Result<u32, IntegrityFailure>, Bytes)>, Tier2Error> {
        let full_key = self.full_key(key);
        let target = self.target(Operation::Get, &full_key);
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) => {
                if error
                    .as_service_error()
                    .is_some_and(|error| error.is_no_such_key())
                {
                    return Ok(None);
                }
                return Err(target.classify(error));
            }
        };
        let stored = output
            .metadata()
            .and_then(|metadata| metadata.get(checksum::METADATA_KEY))
            .map(|text| checksum::decode(text).ok_or(IntegrityFailure::UnreadableChecksum))
            .unwrap_or(Err(IntegrityFailure::MissingChecksum));
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|error| Tier2Error::Transport {
                request: target.request(),
                source: Box::new(error),
            })?
            .into_bytes();
        Ok(Some((stored, bytes)))
    }

    /// The size and stored CRC32C of the object under `key`, or `None` when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, Tier2Error> {
        let full_key = self.full_key(key);
        let target = self.target(Operation::Head, &full_key);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(ObjectInfo {
                size: output
                    .content_length()
                    .and_then(|length| u64::try_from(length).ok())
                    .unwrap_or(0),
                crc32c: output
                    .metadata()
                    .and_then(|metadata| metadata.get(checksum::METADATA_KEY))
                    .and_then(|text| checksum::decode(text)),
            })),
            Err(error) => {
                // A HEAD answer has no body, so a 404 cannot say whether the key or the
                // bucket is missing; a missing bucket shows on the first put or get.
                if error
                    .as_service_error()
                    .is_some_and(|error| error.is_not_found())
                {
                    return Ok(None);
                }
                Err(target.classify(error))
            }
        }
    }

    /// Deletes the object under `key`; deleting a missing object succeeds, as in S3.
    pub async fn delete(&self, key: &str) -> Result<(), Tier2Error> {
        let full_key = self.full_key(key);
        let target = self.target(Operation::Delete, &full_key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
            .map_err(|error| target.classify(error))?;
        Ok(())
    }

    /// The keys under `prefix` (relative to the store's prefix, as [`put`](Self::put) takes
    /// them), sorted, with their sizes. One `ListObjectsV2` request per 1,000 keys: for
    /// catalog listings and retention, never for serving a single file.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, Tier2Error> {
        let full_prefix = self.full_key(prefix);
        let target = self.target(Operation::List, &full_prefix);
        let mut keys = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(continuation.take())
                .send()
                .await
                .map_err(|error| target.classify(error))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                let size = object
                    .size()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0);
                keys.push((key.to_owned(), size));
            }
            match page.next_continuation_token() {
                Some(token) if page.is_truncated() == Some(true) => {
                    continuation = Some(token.to_owned());
                }
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Deletes every version of the object under `key` (and its delete markers), so that a
    /// versioned bucket (every Object Lock bucket is one) frees its space; on an unversioned
    /// bucket (or a server that does not implement versions) it is [`delete`](Self::delete).
    /// A version still under Object Lock retention is refused by the server:
    /// [`Tier2Error::AccessDenied`], and that version stays.
    pub async fn purge(&self, key: &str) -> Result<(), Tier2Error> {
        let full_key = self.full_key(key);
        let list_target = self.target(Operation::List, &full_key);
        let delete_target = self.target(Operation::Delete, &full_key);
        let listing = match self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(&full_key)
            .send()
            .await
        {
            Ok(listing) => listing,
            Err(error) => match list_target.classify(error) {
                // A server without versioning (s3s-fs, some S3-compatible stores) keeps one
                // version of each object: deleting it is purging it.
                Tier2Error::Rejected { status: 501, .. } => return self.delete(key).await,
                other => return Err(other),
            },
        };
        let versions = listing
            .versions()
            .iter()
            .filter(|v| v.key() == Some(full_key.as_str()))
            .filter_map(|v| v.version_id())
            .chain(
                listing
                    .delete_markers()
                    .iter()
                    .filter(|m| m.key() == Some(full_key.as_str()))
                    .filter_map(|m| m.version_id()),
            )
            .filter(|id| *id != "null")
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if versions.is_empty() {
            // An unversioned bucket lists its objects with version id "null", or not at all.
            return self.delete(key).await;
        }
        for version in versions {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full_key)
                .version_id(version)
                .send()
                .await
                .map_err(|error| delete_target.classify(error))?;
        }
        Ok(())
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn part_size(&self) -> usize {
        self.multipart.part_size
    }

    pub(crate) fn target<'a>(&'a self, operation: Operation, full_key: &'a str) -> Target<'a> {
        Target {
            operation,
            bucket: &self.bucket,
            key: full_key,
        }
    }

    fn integrity(&self, full_key: String, failure: IntegrityFailure) -> Tier2Error {
        Tier2Error::Integrity {
            bucket: self.bucket.clone(),
            key: full_key,
            failure,
        }
    }
}

/// A failed precondition on a create-only put means the object exists: not an error.
pub(crate) fn created_or(error: Tier2Error, options: PutOptions) -> Result<Put, Tier2Error> {
    match error {
        Tier2Error::PreconditionFailed { .. } if options.if_none_match => Ok(Put::AlreadyExists),
        other => Err(other),
    }
}

impl From<ObjectLockMode> for aws_sdk_s3::types::ObjectLockRetentionMode {
    fn from(mode: ObjectLockMode) -> Self {
        match mode {
            ObjectLockMode::Governance => Self::Governance,
            ObjectLockMode::Compliance => Self::Compliance,
        }
    }
}

impl From<ObjectLockMode> for SdkObjectLockMode {
    fn from(mode: ObjectLockMode) -> Self {
        match mode {
            ObjectLockMode::Governance => Self::Governance,
            ObjectLockMode::Compliance => Self::Compliance,
        }
    }
}

/// `prefix` with exactly one trailing `/`, or empty.
fn normalized_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// Rejects what would fail later in a less helpful way (or make the SDK panic).
fn validate(config: &Tier2Config) -> Result<(), ConfigurationError> {
    if config.bucket.is_empty() {
        return Err(ConfigurationError::Missing { setting: "bucket" });
    }
    if config.region.is_empty() {
        return Err(ConfigurationError::Missing { setting: "region" });
    }
    if let Some(endpoint) = &config.endpoint {
        let host = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
        if host.is_none_or(str::is_empty) {
            return Err(ConfigurationError::BadEndpoint {
                endpoint: endpoint.clone(),
            });
        }
        if config.ca_file.is_some() && endpoint.starts_with("http://") {
            return Err(ConfigurationError::CaFileWithoutTls {
                endpoint: endpoint.clone(),
            });
        }
    }
    let MultipartConfig {
        threshold,
        part_size,
    } = config.multipart;
    if part_size < MIN_PART_SIZE || part_size > threshold {
        return Err(ConfigurationError::BadMultipartSizes {
            part_size,
            threshold,
            min: MIN_PART_SIZE,
        });
    }
    Ok(())
}

/// The CA file's bytes, after checking that every PEM certificate in it parses as a trust
/// anchor: the SDK's TLS layer panics on one that does not.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>, ConfigurationError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let pem = std::fs::read(path).map_err(|source| ConfigurationError::UnreadableCaFile {
        path: path.to_owned(),
        source,
    })?;
    let bad_file = |source: Option<crate::error::BoxError>| ConfigurationError::BadCaFile {
        path: path.to_owned(),
        source,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad_file(Some(Box::new(error))))?;
    if certificates.is_empty() {
        return Err(bad_file(None));
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|error| bad_file(Some(Box::new(error))))?;
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_gets_exactly_one_slash() {
        assert_eq!(normalized_prefix(""), "");
        assert_eq!(normalized_prefix("/"), "");
        assert_eq!(normalized_prefix("klio"), "klio/");
        assert_eq!(normalized_prefix("/klio/prod//"), "klio/prod/");
    }

    fn with_endpoint(endpoint: &str) -> Tier2Config {
        let mut config = Tier2Config::new("us-east-1", "wal");
        config.endpoint = Some(endpoint.into());
        config
    }

    #[test]
    fn an_endpoint_without_scheme_or_host_is_a_configuration_error() {
        for endpoint in ["127.0.0.1:9000", "ftp://host", "https://", "http:///bucket"] {
            let error = validate(&with_endpoint(endpoint)).unwrap_err();
            assert!(
                matches!(error, ConfigurationError::BadEndpoint { .. }),
                "{endpoint}: {error}"
            );
        }
        assert!(validate(&with_endpoint("http://127.0.0.1:9000")).is_ok());
        assert!(validate(&with_endpoint("https://s3.example.com/")).is_ok());
    }

    #[test]
    fn a_ca_file_for_plain_http_is_a_configuration_error() {
        let mut config = with_endpoint("http://127.0.0.1:9000");
        config.ca_file = Some("/etc/klio/ca.pem".into());
        assert!(matches!(
            validate(&config),
            Err(ConfigurationError::CaFileWithoutTls { .. })
        ));
    }

    #[test]
    fn parts_below_s3s_minimum_are_a_configuration_error() {
        let mut config = Tier2Config::new("us-east-1", "wal");
        config.multipart.part_size = MIN_PART_SIZE - 1;
        assert!(matches!(
            validate(&config),
            Err(ConfigurationError::BadMultipartSizes { .. })
        ));
    }

    #[test]
    fn a_ca_file_without_certificates_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        assert!(matches!(
            read_ca_file(&path),
            Err(ConfigurationError::BadCaFile { .. })
        ));
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(
            read_ca_file(&path),
            Err(ConfigurationError::BadCaFile { .. })
        ));
        assert!(matches!(
            read_ca_file(&dir.path().join("missing.pem")),
            Err(ConfigurationError::UnreadableCaFile { .. })
        ));
    }
}
