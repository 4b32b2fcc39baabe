//! `ObjectStore` against a real S3-compatible server (s3s-fs on 127.0.0.1), no mocks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use klio_testkit::S3Server;
use klio_tier2::{
    Credentials, IntegrityFailure, MIN_PART_SIZE, MultipartConfig, ObjectStore, Put, PutOptions,
    Tier2Config, Tier2Error,
};

fn config_for(server: &S3Server) -> Tier2Config {
    let mut config = Tier2Config::new(S3Server::REGION, S3Server::BUCKET);
    config.endpoint = Some(server.endpoint().to_owned());
    config.key_prefix = "clusters/main".to_owned();
    config.credentials = Credentials::Static {
        access_key_id: S3Server::ACCESS_KEY_ID.to_owned(),
        secret_access_key: S3Server::SECRET_ACCESS_KEY.to_owned(),
    };
    config
}

async fn store_for(server: &S3Server) -> ObjectStore {
    ObjectStore::connect(&config_for(server)).await.unwrap()
}

/// Bytes that differ at every offset, so a misplaced part shows.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

const CREATE_ONLY: PutOptions = PutOptions {
    if_none_match: true,
    object_lock: None,
};

#[tokio::test]
async fn a_small_object_reads_back_as_written_under_the_prefix() {
    let server = S3Server::start();
    let store = store_for(&server).await;
    let bytes = pattern(100_000);

    let put = store
        .put(
            "wal/000000010000000000000001",
            bytes.clone(),
            PutOptions::default(),
        )
        .await
        .unwrap();

    assert_eq!(put, Put::Stored);
    assert_eq!(
        store.get("wal/000000010000000000000001").await.unwrap(),
        Some(bytes.clone())
    );
    let on_disk =
        std::fs::read(server.object_file("clusters/main/wal/000000010000000000000001")).unwrap();
    assert_eq!(on_disk, bytes);
    let info = store
        .head("wal/000000010000000000000001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.size, 100_000);
    assert_eq!(info.crc32c, Some(crc32c::crc32c(&bytes)));
}

#[tokio::test]
async fn an_object_above_the_threshold_goes_up_in_parts_and_reads_back_as_written() {
    let server = S3Server::start();
    let mut config = config_for(&server);
    config.multipart = MultipartConfig {
        threshold: MIN_PART_SIZE,
        part_size: MIN_PART_SIZE,
    };
    let store = ObjectStore::connect(&config).await.unwrap();
    // Two whole parts and a short last one.
    let bytes = pattern(2 * MIN_PART_SIZE + 12_345);

    let put = store
        .put("base/pack-1", bytes.clone(), PutOptions::default())
        .await
        .unwrap();

    assert_eq!(put, Put::Stored);
    let read = store.get("base/pack-1").await.unwrap().unwrap();
    assert!(
        read == bytes,
        "the multipart object read back differs from what was written"
    );
    let info = store.head("base/pack-1").await.unwrap().unwrap();
    assert_eq!(info.size, bytes.len() as u64);
    assert_eq!(info.crc32c, Some(crc32c::crc32c(&bytes)));
}

#[tokio::test]
async fn a_create_only_put_on_an_existing_key_is_already_exists_and_keeps_the_first_object() {
    let server = S3Server::start();
    let store = store_for(&server).await;
    let first = Bytes::from_static(b"the first segment");

    assert_eq!(
        store
            .put("wal/seg", first.clone(), CREATE_ONLY)
            .await
            .unwrap(),
        Put::Stored
    );
    let second = store
        .put(
            "wal/seg",
            Bytes::from_static(b"another segment"),
            CREATE_ONLY,
        )
        .await
        .unwrap();

    assert_eq!(second, Put::AlreadyExists);
    assert_eq!(store.get("wal/seg").await.unwrap(), Some(first));
}

#[tokio::test]
async fn a_create_only_multipart_put_on_an_existing_key_is_already_exists_and_keeps_the_first_object()
 {
    let server = S3Server::start();
    let mut config = config_for(&server);
    config.multipart = MultipartConfig {
        threshold: MIN_PART_SIZE,
        part_size: MIN_PART_SIZE,
    };
    let store = ObjectStore::connect(&config).await.unwrap();
    let first = Bytes::from_static(b"a small first object");

    assert_eq!(
        store
            .put("base/pack", first.clone(), CREATE_ONLY)
            .await
            .unwrap(),
        Put::Stored
    );
    let second = store
        .put("base/pack", pattern(MIN_PART_SIZE + 1), CREATE_ONLY)
        .await
        .unwrap();

    assert_eq!(second, Put::AlreadyExists);
    assert_eq!(store.get("base/pack").await.unwrap(), Some(first));
}

#[tokio::test]
async fn a_missing_key_is_none_for_get_and_head() {
    let server = S3Server::start();
    let store = store_for(&server).await;

    assert_eq!(store.get("wal/never-written").await.unwrap(), None);
    assert_eq!(store.head("wal/never-written").await.unwrap(), None);
}

#[tokio::test]
async fn a_deleted_object_is_gone_and_deleting_it_again_succeeds() {
    let server = S3Server::start();
    let store = store_for(&server).await;
    let _ = store
        .put("wal/old", Bytes::from_static(b"old"), PutOptions::default())
        .await
        .unwrap();

    store.delete("wal/old").await.unwrap();

    assert_eq!(store.get("wal/old").await.unwrap(), None);
    store.delete("wal/old").await.unwrap();
}

#[tokio::test]
async fn an_object_damaged_on_the_servers_disk_is_an_integrity_error_naming_its_key() {
    let server = S3Server::start();
    let store = store_for(&server).await;
    let bytes = pattern(64 * 1024);
    let _ = store
        .put("wal/damaged", bytes.clone(), PutOptions::default())
        .await
        .unwrap();
    let mut damaged = bytes.to_vec();
    damaged[1000] ^= 0x01;
    std::fs::write(server.object_file("clusters/main/wal/damaged"), &damaged).unwrap();

    let error = store.get("wal/damaged").await.unwrap_err();

    match &error {
        Tier2Error::Integrity {
            key,
            failure: IntegrityFailure::Mismatch { stored, computed },
            ..
        } => {
            assert_eq!(key, "clusters/main/wal/damaged");
            assert_eq!(*stored, crc32c::crc32c(&bytes));
            assert_eq!(*computed, crc32c::crc32c(&damaged));
        }
        other => panic!("expected an integrity error, got {other:?}"),
    }
    assert!(
        error.to_string().contains("clusters/main/wal/damaged"),
        "{error}"
    );
}

#[tokio::test]
async fn wrong_credentials_are_access_denied_naming_the_settings_to_check() {
    let server = S3Server::start();
    let mut config = config_for(&server);
    config.credentials = Credentials::Static {
        access_key_id: S3Server::ACCESS_KEY_ID.to_owned(),
        secret_access_key: "not-the-secret".to_owned(),
    };
    let store = ObjectStore::connect(&config).await.unwrap();

    let error = store
        .put("wal/seg", Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap_err();

    assert!(
        matches!(error, Tier2Error::AccessDenied { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("access key and secret"), "{message}");
    assert!(!message.contains("not-the-secret"), "{message}");
    for debug in [
        format!("{error:?}"),
        format!("{store:?}"),
        format!("{config:?}"),
    ] {
        assert!(!debug.contains("not-the-secret"), "{debug}");
    }
}

#[tokio::test]
async fn a_server_that_is_not_running_is_a_transport_error_within_bounded_time() {
    let mut config = Tier2Config::new(S3Server::REGION, S3Server::BUCKET);
    config.endpoint = Some(format!(
        "http://127.0.0.1:{}",
        klio_testkit::free_tcp_port()
    ));
    config.credentials = Credentials::Static {
        access_key_id: S3Server::ACCESS_KEY_ID.to_owned(),
        secret_access_key: S3Server::SECRET_ACCESS_KEY.to_owned(),
    };
    let store = ObjectStore::connect(&config).await.unwrap();
    let started = Instant::now();

    let error = tokio::time::timeout(Duration::from_secs(60), store.get("wal/seg"))
        .await
        .expect("a get from a stopped server must fail, not hang")
        .unwrap_err();

    assert!(matches!(error, Tier2Error::Transport { .. }), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_https_endpoint_is_trusted_through_the_configured_ca_file() {
    let server = S3Server::start_tls();
    let mut config = config_for(&server);
    config.ca_file = server.ca_file().map(ToOwned::to_owned);
    let store = ObjectStore::connect(&config).await.unwrap();
    let bytes = pattern(10_000);

    let put = store
        .put("wal/seg", bytes.clone(), PutOptions::default())
        .await
        .unwrap();

    assert_eq!(put, Put::Stored);
    assert_eq!(store.get("wal/seg").await.unwrap(), Some(bytes));
}

#[tokio::test]
async fn an_https_endpoint_whose_ca_is_not_trusted_is_a_transport_error() {
    let server = S3Server::start_tls();
    // The system's roots, which do not hold the test CA.
    let store = store_for(&server).await;

    let error = store.get("wal/seg").await.unwrap_err();

    assert!(matches!(error, Tier2Error::Transport { .. }), "{error:?}");
}

#[tokio::test]
async fn a_listing_names_every_key_under_a_prefix_relative_to_the_stores_prefix() {
    let server = S3Server::start();
    let store = store_for(&server).await;
    for key in ["wal/a", "wal/b", "backups/c"] {
        let _ = store
            .put(key, Bytes::from_static(b"x"), PutOptions::default())
            .await
            .unwrap();
    }
    let listed = store.list("wal/").await.unwrap();
    assert_eq!(listed, [("wal/a".to_owned(), 1), ("wal/b".to_owned(), 1)]);
    assert!(store.list("nothing/").await.unwrap().is_empty());
    assert_eq!(server.faults().list_requests(), 2);
}

#[tokio::test]
async fn a_burst_of_slow_down_answers_is_retried_until_the_object_is_stored() {
    let server = S3Server::start();
    let store = store_for(&server).await;
    server.faults().slow_down_next(3);

    let put = store
        .put("wal/throttled", pattern(10_000), PutOptions::default())
        .await
        .unwrap();

    assert_eq!(put, Put::Stored);
    assert_eq!(server.faults().injected(), 3);
    assert_eq!(
        store.get("wal/throttled").await.unwrap(),
        Some(pattern(10_000))
    );
}

#[tokio::test]
async fn more_slow_down_answers_than_attempts_is_a_throttled_error_naming_the_key() {
    let server = S3Server::start();
    let store = store_for(&server).await;
    server.faults().slow_down_next(1_000);

    let error = store
        .put("wal/refused", pattern(10), PutOptions::default())
        .await
        .unwrap_err();

    assert!(matches!(error, Tier2Error::Throttled { .. }), "{error:?}");
    assert!(error.to_string().contains("wal/refused"), "{error}");
    server.faults().slow_down_next(0);
    assert_eq!(store.get("wal/refused").await.unwrap(), None);
}

#[tokio::test]
async fn a_connection_reset_mid_upload_is_retried_and_the_object_is_whole() {
    let server = S3Server::start();
    let store = store_for(&server).await;
    server.faults().reset_next(2);

    let bytes = pattern(3 << 20);
    let put = store
        .put("wal/reset", bytes.clone(), PutOptions::default())
        .await
        .unwrap();

    assert_eq!(put, Put::Stored);
    assert_eq!(server.faults().injected(), 2);
    assert_eq!(store.get("wal/reset").await.unwrap(), Some(bytes));
}

#[tokio::test]
async fn a_multipart_upload_survives_resets_of_its_parts() {
    let server = S3Server::start();
    let mut config = config_for(&server);
    config.multipart = MultipartConfig {
        threshold: MIN_PART_SIZE,
        part_size: MIN_PART_SIZE,
    };
    let store = ObjectStore::connect(&config).await.unwrap();
    server.faults().reset_next(2);

    let bytes = pattern(3 * MIN_PART_SIZE + 17);
    let put = store
        .put("backups/packs/p.pack", bytes.clone(), PutOptions::default())
        .await
        .unwrap();

    assert_eq!(put, Put::Stored);
    assert_eq!(
        store.get("backups/packs/p.pack").await.unwrap(),
        Some(bytes)
    );
}

#[tokio::test]
async fn a_stalled_server_holds_a_put_until_it_resumes_and_nothing_is_lost() {
    let server = S3Server::start();
    let store = store_for(&server).await;
    server.faults().stall();

    let put = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .put("wal/stalled", pattern(1000), PutOptions::default())
                .await
        }
    });
    // The request has reached the server and is held there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.faults().requests() == 0 {
        assert!(
            Instant::now() < deadline,
            "the put never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!put.is_finished());
    server.faults().resume();

    assert_eq!(put.await.unwrap().unwrap(), Put::Stored);
    assert_eq!(store.get("wal/stalled").await.unwrap(), Some(pattern(1000)));
}

#[tokio::test]
async fn a_purge_on_a_server_without_versions_deletes_the_object() {
    let server = S3Server::start();
    let store = store_for(&server).await;
    let _ = store
        .put("wal/old", pattern(10), PutOptions::default())
        .await
        .unwrap();

    store.purge("wal/old").await.unwrap();

    assert_eq!(store.get("wal/old").await.unwrap(), None);
    // Purging what is gone succeeds, as deleting it does.
    store.purge("wal/old").await.unwrap();
}
