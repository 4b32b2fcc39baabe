//! Tier 2's errors, typed by what the caller does about them: retry later (throttled,
//! transport), fix the configuration (access denied, configuration), or treat the object as
//! lost (integrity). A missing object is not an error (`None`), and a create-only put that finds
//! an object is [`Put::AlreadyExists`](crate::Put::AlreadyExists).
//!
//! Messages name the bucket and key, never object bytes or secrets; the SDK's error travels only
//! through `source()`.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// A boxed cause from the SDK or the file system.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An S3 request that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `PutObject`.
    Put,
    /// `GetObject`, including reading its body.
    Get,
    /// `HeadObject`.
    Head,
    /// `DeleteObject`.
    Delete,
    /// `CreateMultipartUpload`.
    CreateMultipartUpload,
    /// `UploadPart`.
    UploadPart,
    /// `CompleteMultipartUpload`.
    CompleteMultipartUpload,
    /// `ListObjectsV2`, one page of it.
    List,
    /// `PutObjectRetention`.
    PutRetention,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Put => "PutObject",
            Self::Get => "GetObject",
            Self::Head => "HeadObject",
            Self::Delete => "DeleteObject",
            Self::CreateMultipartUpload => "CreateMultipartUpload",
            Self::UploadPart => "UploadPart",
            Self::CompleteMultipartUpload => "CompleteMultipartUpload",
            Self::List => "ListObjectsV2",
            Self::PutRetention => "PutObjectRetention",
        })
    }
}

/// The request an error is about: its operation and object, shown as
/// `PutObject on s3://bucket/key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub operation: Operation,
    /// The bucket.
    pub bucket: String,
    /// The full key, prefix included.
    pub key: String,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on s3://{}/{}", self.operation, self.bucket, self.key)
    }
}

/// Why a fetched object failed its check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityFailure {
    /// The bytes' CRC32C differs from the one stored with the object.
    Mismatch {
        /// The CRC32C in the object's metadata, written at upload.
        stored: u32,
        /// The CRC32C of the bytes the server returned.
        computed: u32,
    },
    /// The object has no Klio CRC32C in its metadata: Klio did not write it.
    MissingChecksum,
    /// The object's CRC32C metadata is not a base64 CRC32C.
    UnreadableChecksum,
}

impl fmt::Display for IntegrityFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mismatch { stored, computed } => write!(
                f,
                "its bytes have CRC32C {computed:08x}, it was stored with {stored:08x}"
            ),
            Self::MissingChecksum => {
                f.write_str("it carries no Klio CRC32C, so Klio did not write it")
            }
            Self::UnreadableChecksum => f.write_str("its CRC32C metadata is not a base64 CRC32C"),
        }
    }
}

/// A configuration Tier 2 cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    /// The endpoint is not an `http://` or `https://` URL with a host.
    #[error(
        "the Tier 2 endpoint {endpoint:?} is not an http:// or https:// URL with a host: set it like https://s3.example.com or http://127.0.0.1:9000"
    )]
    BadEndpoint {
        /// The configured endpoint.
        endpoint: String,
    },
    /// A CA file was given for a plain `http://` endpoint, where it would be ignored.
    #[error(
        "a CA file is set for the plain-HTTP Tier 2 endpoint {endpoint:?}: use an https:// endpoint or remove the CA file"
    )]
    CaFileWithoutTls {
        /// The configured endpoint.
        endpoint: String,
    },
    /// The CA file could not be read.
    #[error("cannot read the Tier 2 CA file {}: check the path and its permissions", path.display())]
    UnreadableCaFile {
        /// The configured CA file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no certificate that TLS can use.
    #[error(
        "the Tier 2 CA file {} holds no usable PEM certificate: give a file of -----BEGIN CERTIFICATE----- blocks",
        path.display()
    )]
    BadCaFile {
        /// The configured CA file.
        path: PathBuf,
        /// Why the certificates were rejected, when a parser said so.
        #[source]
        source: Option<BoxError>,
    },
    /// The bucket or region is empty.
    #[error("the Tier 2 {setting} is empty: set it")]
    Missing {
        /// The setting that is empty (`bucket`, `region`).
        setting: &'static str,
    },
    /// The multipart sizes break S3's rules.
    #[error(
        "the Tier 2 multipart part size {part_size} must be at least {min} bytes and at most the threshold {threshold}: raise the part size or the threshold"
    )]
    BadMultipartSizes {
        /// The configured part size.
        part_size: usize,
        /// The configured threshold.
        threshold: usize,
        /// S3's smallest part.
        min: usize,
    },
}

/// A Tier 2 operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Tier2Error {
    /// A conditional request's condition did not hold (HTTP 412) where the caller did not ask
    /// for create-only semantics.
    #[error(
        "the S3 server refused {request}: a precondition failed; read the object again before writing"
    )]
    PreconditionFailed {
        /// The request.
        request: Request,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },
    /// The server is shedding load (`SlowDown`, HTTP 503 or 429) and the SDK's retries ran out.
    #[error("the S3 server is throttling {request}: retry later, or lower the request rate")]
    Throttled {
        /// The request.
        request: Request,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },
    /// The server rejected the credentials or their permissions.
    #[error(
        "the S3 server denied {request}: check Tier 2's access key and secret (or the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY variables and AWS_PROFILE) and the bucket's policy"
    )]
    AccessDenied {
        /// The request.
        request: Request,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },
    /// The request could not be signed or sent for a reason other than the network, most often
    /// because no credentials were found.
    #[error(
        "could not send {request}: check that Tier 2 has credentials (an access key and secret, the AWS_* variables or a profile)"
    )]
    NotSent {
        /// The request.
        request: Request,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },
    /// The connection failed, was reset or timed out, after the SDK's retries.
    #[error(
        "could not reach the S3 server for {request}: check that it is running and that the endpoint, network and TLS trust are right"
    )]
    Transport {
        /// The request.
        request: Request,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },
    /// Another error answer from the server (a missing bucket, an internal error).
    #[error(
        "the S3 server rejected {request} with HTTP {status} ({code}): check that the bucket exists and read the server's log"
    )]
    Rejected {
        /// The request.
        request: Request,
        /// The HTTP status.
        status: u16,
        /// S3's error code, or `no code` when the answer had none.
        code: String,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },
    /// A success answer without a field S3 always sends.
    #[error(
        "the S3 server's answer to {request} has no {missing}: the server does not implement S3 fully; read its log"
    )]
    IncompleteAnswer {
        /// The request.
        request: Request,
        /// The missing field, as S3 names it.
        missing: &'static str,
    },
    /// A fetched object failed its CRC32C check; its bytes are not returned.
    #[error(
        "object s3://{bucket}/{key} is damaged: {failure}; restore it from another copy or write it again"
    )]
    Integrity {
        /// The bucket.
        bucket: String,
        /// The full key, prefix included.
        key: String,
        /// What the check found.
        failure: IntegrityFailure,
    },
    /// Tier 2 is configured wrongly.
    #[error("Tier 2 is not configured correctly")]
    Configuration(#[from] ConfigurationError),
}

/// Which object a request was about, for error messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    pub(crate) operation: Operation,
    pub(crate) bucket: &'a str,
    pub(crate) key: &'a str,
}

/// S3 error codes that mean the credentials or their permissions are wrong.
const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
];

/// S3 error codes that mean the server is shedding load.
const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "RequestLimitExceeded",
];

impl Target<'_> {
    /// The request, owned, for an error.
    pub(crate) fn request(self) -> Request {
        Request {
            operation: self.operation,
            bucket: self.bucket.to_owned(),
            key: self.key.to_owned(),
        }
    }

    /// An error of the kind `make` picks (a variant's constructor) for this target.
    fn error(self, make: fn(Request, BoxError) -> Tier2Error, source: BoxError) -> Tier2Error {
        make(self.request(), source)
    }

    /// Types an SDK error by what the caller should do about it.
    pub(crate) fn classify<E>(self, error: SdkError<E, HttpResponse>) -> Tier2Error
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        match &error {
            SdkError::TimeoutError(_) => self.error(transport, Box::new(error)),
            SdkError::DispatchFailure(failure) => {
                if failure.is_io() || failure.is_timeout() {
                    self.error(transport, Box::new(error))
                } else {
                    self.error(not_sent, Box::new(error))
                }
            }
            SdkError::ConstructionFailure(_) => self.error(not_sent, Box::new(error)),
            SdkError::ResponseError(_) | SdkError::ServiceError(_) => {
                let status = error
                    .raw_response()
                    .map(|response| response.status().as_u16());
                let code = match &error {
                    SdkError::ServiceError(service) => service.err().code().map(str::to_owned),
                    _ => None,
                };
                self.classify_answer(status, code, Box::new(error))
            }
            // SdkError is non-exhaustive; a new kind is most likely about sending.
            _ => self.error(transport, Box::new(error)),
        }
    }

    /// Types an error answer by its S3 code, else its HTTP status.
    fn classify_answer(
        self,
        status: Option<u16>,
        code: Option<String>,
        source: BoxError,
    ) -> Tier2Error {
        let code_is = |codes: &[&str]| code.as_deref().is_some_and(|code| codes.contains(&code));
        if code_is(ACCESS_DENIED_CODES) || matches!(status, Some(401 | 403)) {
            return self.error(access_denied, source);
        }
        if code_is(THROTTLING_CODES) || matches!(status, Some(429 | 503)) {
            return self.error(throttled, source);
        }
        if code.as_deref() == Some("PreconditionFailed") || status == Some(412) {
            return self.error(precondition_failed, source);
        }
        match status {
            Some(status) => Tier2Error::Rejected {
                request: self.request(),
                status,
                code: code.unwrap_or_else(|| "no code".to_owned()),
                source,
            },
            // An answer the SDK could not read at all: the connection delivered garbage.
            None => self.error(transport, source),
        }
    }
}

fn transport(request: Request, source: BoxError) -> Tier2Error {
    Tier2Error::Transport { request, source }
}

fn not_sent(request: Request, source: BoxError) -> Tier2Error {
    Tier2Error::NotSent { request, source }
}

fn access_denied(request: Request, source: BoxError) -> Tier2Error {
    Tier2Error::AccessDenied { request, source }
}

fn throttled(request: Request, source: BoxError) -> Tier2Error {
    Tier2Error::Throttled { request, source }
}

fn precondition_failed(request: Request, source: BoxError) -> Tier2Error {
    Tier2Error::PreconditionFailed { request, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target<'static> {
        Target {
            operation: Operation::Put,
            bucket: "wal",
            key: "c/000000010000000000000001",
        }
    }

    fn cause() -> BoxError {
        "the server's answer".into()
    }

    #[test]
    fn slow_down_is_throttling_even_without_a_status() {
        let error = target().classify_answer(None, Some("SlowDown".into()), cause());
        assert!(matches!(error, Tier2Error::Throttled { .. }), "{error:?}");
    }

    #[test]
    fn a_503_without_a_code_is_throttling() {
        let error = target().classify_answer(Some(503), None, cause());
        assert!(matches!(error, Tier2Error::Throttled { .. }), "{error:?}");
    }

    #[test]
    fn a_bad_signature_is_access_denied() {
        let error =
            target().classify_answer(Some(403), Some("SignatureDoesNotMatch".into()), cause());
        assert!(
            matches!(error, Tier2Error::AccessDenied { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn a_412_is_a_failed_precondition() {
        let error = target().classify_answer(Some(412), None, cause());
        assert!(
            matches!(error, Tier2Error::PreconditionFailed { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn other_answers_keep_their_status_and_code() {
        let error = target().classify_answer(Some(404), Some("NoSuchBucket".into()), cause());
        match error {
            Tier2Error::Rejected { status, code, .. } => {
                assert_eq!(status, 404);
                assert_eq!(code, "NoSuchBucket");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[test]
    fn the_cause_is_not_repeated_in_the_message() {
        let error = target().classify_answer(Some(503), None, cause());
        assert!(
            !error.to_string().contains("the server's answer"),
            "{error}"
        );
        assert!(error.source().is_some());
        assert!(
            error
                .to_string()
                .contains("PutObject on s3://wal/c/000000010000000000000001"),
            "{error}"
        );
    }
}
