//! S3 Object Lock through `ObjectStore`, against moto's S3 server, which enforces it (s3s-fs
//! does not).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use klio_testkit::MotoServer;
use klio_tier2::{
    Credentials, MIN_PART_SIZE, MultipartConfig, ObjectLock, ObjectLockMode, ObjectStore, Put,
    PutOptions, Tier2Config, Tier2Error,
};

async fn store_for(server: &MotoServer, multipart: MultipartConfig) -> ObjectStore {
    let mut config = Tier2Config::new(MotoServer::REGION, MotoServer::BUCKET);
    config.endpoint = Some(server.endpoint().to_owned());
    config.credentials = Credentials::Static {
        access_key_id: "moto".to_owned(),
        secret_access_key: "moto-secret".to_owned(),
    };
    config.multipart = multipart;
    ObjectStore::connect(&config).await.unwrap()
}

fn locked_for(retain: Duration) -> PutOptions {
    PutOptions {
        if_none_match: false,
        object_lock: Some(ObjectLock {
            mode: ObjectLockMode::Compliance,
            retain_until: SystemTime::now() + retain,
        }),
    }
}

/// Purges `key` until the server lets it, within a deadline far beyond the lock.
async fn purge_once_unlocked(store: &ObjectStore, key: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match store.purge(key).await {
            Ok(()) => return,
            Err(Tier2Error::AccessDenied { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(other) => panic!("purging {key} after its lock ended: {other}"),
        }
    }
}

#[tokio::test]
async fn a_locked_object_cannot_be_purged_before_its_retention_ends() {
    let server = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let store = store_for(&server, MultipartConfig::default()).await;
    let bytes = Bytes::from_static(b"sealed segment bytes");

    let put = store
        .put(
            "wal/000000010000000000000001.klio",
            bytes.clone(),
            locked_for(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    assert_eq!(put, Put::Stored);

    let refused = store
        .purge("wal/000000010000000000000001.klio")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Tier2Error::AccessDenied { .. }),
        "{refused:?}"
    );
    assert_eq!(
        store
            .get("wal/000000010000000000000001.klio")
            .await
            .unwrap(),
        Some(bytes)
    );

    purge_once_unlocked(&store, "wal/000000010000000000000001.klio").await;
    assert_eq!(
        store
            .get("wal/000000010000000000000001.klio")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_plain_delete_of_a_locked_object_leaves_its_bytes_recoverable() {
    let server = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let store = store_for(&server, MultipartConfig::default()).await;
    let bytes = Bytes::from_static(b"catalog entry");
    let _ = store
        .put(
            "backups/catalog/b1/entry.json",
            bytes,
            locked_for(Duration::from_secs(3600)),
        )
        .await
        .unwrap();

    // A delete without a version only hides the object behind a delete marker...
    store.delete("backups/catalog/b1/entry.json").await.unwrap();
    // ...and the locked version still refuses to go.
    let refused = store
        .purge("backups/catalog/b1/entry.json")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Tier2Error::AccessDenied { .. }),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_locked_multipart_object_is_stored_whole_and_locked() {
    let server = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let multipart = MultipartConfig {
        threshold: MIN_PART_SIZE,
        part_size: MIN_PART_SIZE,
    };
    let store = store_for(&server, multipart).await;
    let bytes: Bytes = (0..2 * MIN_PART_SIZE + 5)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();

    let put = store
        .put(
            "backups/packs/p.pack",
            bytes.clone(),
            locked_for(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    assert_eq!(put, Put::Stored);
    assert_eq!(
        store.get("backups/packs/p.pack").await.unwrap(),
        Some(bytes)
    );
    let refused = store.purge("backups/packs/p.pack").await.unwrap_err();
    assert!(
        matches!(refused, Tier2Error::AccessDenied { .. }),
        "{refused:?}"
    );

    purge_once_unlocked(&store, "backups/packs/p.pack").await;
    assert_eq!(store.get("backups/packs/p.pack").await.unwrap(), None);
}
