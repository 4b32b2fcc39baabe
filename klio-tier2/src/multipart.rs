//! Multipart uploads of objects above the threshold: one `CreateMultipartUpload` carrying the
//! whole object's CRC32C as metadata (and any Object Lock), parts of the configured size each
//! sent with its own CRC32C for the server to verify, then `CompleteMultipartUpload` listing
//! every part's checksum (with `If-None-Match: *` for create-only puts). On any failure the
//! upload is aborted, so no parts are left billed in the bucket. A locked object's retention
//! is set once more after completion (`PutObjectRetention`, same mode and date): some
//! S3-compatible servers ignore the lock headers of `CreateMultipartUpload`, and a lock that
//! silently did not apply is worse than one extra request.

use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockRetention,
};
use bytes::Bytes;

use crate::checksum;
use crate::error::{Operation, Tier2Error};
use crate::object_store::{ObjectStore, Put, PutOptions, created_or};

/// S3's largest number of parts in one upload.
const MAX_PARTS: usize = 10_000;

/// Uploads `bytes` under `full_key` in parts.
pub(crate) async fn upload(
    store: &ObjectStore,
    full_key: &str,
    bytes: Bytes,
    options: PutOptions,
) -> Result<Put, Tier2Error> {
    let crc = checksum::crc32c_base64(&bytes);
    let mut create = store
        .client()
        .create_multipart_upload()
        .bucket(store.bucket())
        .key(full_key)
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .metadata(checksum::METADATA_KEY, &crc);
    if let Some(lock) = options.object_lock {
        create = create
            .object_lock_mode(lock.mode.into())
            .object_lock_retain_until_date(DateTime::from(lock.retain_until));
    }
    let created = create.send().await.map_err(|error| {
        store
            .target(Operation::CreateMultipartUpload, full_key)
            .classify(error)
    })?;
    let Some(upload_id) = created.upload_id() else {
        return Err(Tier2Error::IncompleteAnswer {
            request: store
                .target(Operation::CreateMultipartUpload, full_key)
                .request(),
            missing: "UploadId",
        });
    };

    match send_parts(store, full_key, upload_id, bytes, options).await {
        Ok(put) => Ok(put),
        Err(error) => {
            abort(store, full_key, upload_id).await;
            created_or(error, options)
        }
    }
}

/// Sends every part and completes the upload.
async fn send_parts(
    store: &ObjectStore,
    full_key: &str,
    upload_id: &str,
    bytes: Bytes,
    options: PutOptions,
) -> Result<Put, Tier2Error> {
    let part_size = part_size_for(store.part_size(), bytes.len());
    let mut completed = Vec::with_capacity(bytes.len().div_ceil(part_size));
    // S3 numbers parts from 1.
    let mut part_number: i32 = 0;
    for start in (0..bytes.len()).step_by(part_size) {
        part_number += 1;
        let part = bytes.slice(start..bytes.len().min(start + part_size));
        let crc = checksum::crc32c_base64(&part);
        let answer = store
            .client()
            .upload_part()
            .bucket(store.bucket())
            .key(full_key)
            .upload_id(upload_id)
            .part_number(part_number)
            .checksum_crc32_c(&crc)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(|error| {
                store
                    .target(Operation::UploadPart, full_key)
                    .classify(error)
            })?;
        let mut completed_part = CompletedPart::builder()
            .part_number(part_number)
            .checksum_crc32_c(crc);
        if let Some(e_tag) = answer.e_tag() {
            completed_part = completed_part.e_tag(e_tag);
        }
        completed.push(completed_part.build());
    }

    let mut complete = store
        .client()
        .complete_multipart_upload()
        .bucket(store.bucket())
        .key(full_key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        );
    if options.if_none_match {
        complete = complete.if_none_match("*");
    }
    complete.send().await.map_err(|error| {
        store
            .target(Operation::CompleteMultipartUpload, full_key)
            .classify(error)
    })?;
    if let Some(lock) = options.object_lock {
        store
            .client()
            .put_object_retention()
            .bucket(store.bucket())
            .key(full_key)
            .retention(
                ObjectLockRetention::builder()
                    .mode(lock.mode.into())
                    .retain_until_date(DateTime::from(lock.retain_until))
                    .build(),
            )
            .send()
            .await
            .map_err(|error| {
                store
                    .target(Operation::PutRetention, full_key)
                    .classify(error)
            })?;
    }
    Ok(Put::Stored)
}

/// Aborts the upload so its parts are freed; a failure here only leaves parts for the bucket's
/// lifecycle rule to clean, so it is logged, not returned over the upload's own error.
async fn abort(store: &ObjectStore, full_key: &str, upload_id: &str) {
    let aborted = store
        .client()
        .abort_multipart_upload()
        .bucket(store.bucket())
        .key(full_key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(error) = aborted {
        tracing::warn!(
            bucket = store.bucket(),
            key = full_key,
            upload_id,
            error = %klio_wal::ErrorChain(&error),
            "could not abort a failed multipart upload; its parts stay until the bucket's lifecycle rule removes them"
        );
    }
}

/// The configured part size, or larger for an object that would need more than S3's
/// 10 000 parts of it (above 156 GiB at 16 MiB).
fn part_size_for(configured: usize, object_len: usize) -> usize {
    configured.max(object_len.div_ceil(MAX_PARTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn parts_keep_the_configured_size_up_to_ten_thousand_parts() {
        assert_eq!(part_size_for(16 * MIB, 100 * MIB), 16 * MIB);
        assert_eq!(part_size_for(16 * MIB, MAX_PARTS * 16 * MIB), 16 * MIB);
    }

    #[test]
    fn a_larger_object_gets_larger_parts_and_at_most_ten_thousand_of_them() {
        let len = MAX_PARTS * 16 * MIB + 1;
        let part_size = part_size_for(16 * MIB, len);
        assert!(part_size > 16 * MIB);
        assert!(len.div_ceil(part_size) <= MAX_PARTS);
    }
}
