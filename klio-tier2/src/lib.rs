//! Tier 2: Klio's objects in S3-compatible storage, reached over HTTPS on rustls + ring.
//!
//! [`ObjectStore`] puts, gets, heads and deletes whole objects under a key prefix of one
//! bucket, as configured by a [`Tier2Config`]. The relay from Tier 1, its frontier and the
//! fallback reads build on it.
//!
//! # Object format
//!
//! An object is its bytes, unchanged (callers seal them first: compressed and encrypted by
//! klio-crypto), under `<key_prefix>/<key>`. Its CRC32C goes with it twice:
//!
//! - as the `x-amz-checksum-crc32c` header (base64 of the big-endian CRC), so the server
//!   verifies the bytes it received and refuses a damaged upload (`BadDigest`);
//! - as the user metadata `x-amz-meta-klio-crc32c` (the same text), so [`ObjectStore::get`]
//!   verifies the bytes it read, whatever the server checks or keeps.
//!
//! Objects above [`MultipartConfig::threshold`] (24 MiB by default) go up as a multipart
//! upload of [`MultipartConfig::part_size`] parts (16 MiB), each part with its own CRC32C
//! header, the whole object's CRC32C in the metadata; a failed upload is aborted.
//!
//! # Durability
//!
//! A put returns [`Put::Stored`] only after the server answered 200 to the `PutObject` (or the
//! `CompleteMultipartUpload`), which S3 gives once the object is durably stored and readable.
//! A create-only put ([`PutOptions::if_none_match`]) never replaces an object: when one exists
//! it answers [`Put::AlreadyExists`] and the first object stays. A get never returns bytes that
//! fail their CRC32C: it answers [`Tier2Error::Integrity`] naming the key.
//!
//! # Requests
//!
//! Requests are signed with SigV4 by the SDK (`aws-sdk-s3`), path-style when an endpoint is
//! set, retried up to 5 attempts with exponential backoff on throttling, 5xx and transport
//! errors; the SDK adds no checksums of its own (`WhenRequired`), so in-memory bodies go as
//! plain requests that any S3-compatible server understands.
#![warn(missing_docs)]

mod checksum;
mod config;
mod error;
mod multipart;
mod object_store;

pub use config::{Credentials, MIN_PART_SIZE, MultipartConfig, Tier2Config};
pub use error::{BoxError, ConfigurationError, IntegrityFailure, Operation, Request, Tier2Error};
pub use object_store::{ObjectInfo, ObjectLock, ObjectLockMode, ObjectStore, Put, PutOptions};
