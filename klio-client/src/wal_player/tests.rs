use std::io::Write;

use super::*;

fn mib() -> SegmentSize {
    SegmentSize::new(1 << 20).unwrap()
}

fn endpoint() -> ServerEndpoint {
    ServerEndpoint {
        address: "127.0.0.1:1".into(),
        server_name: None,
        ca: "ca.pem".into(),
        cert: "certs/client-walplayer-{job}.pem".into(),
        key: "certs/client-walplayer-{job}.key".into(),
    }
}

#[test]
fn generated_files_scan_as_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    let paths = generate(dir.path(), mib(), 3, |n| seen.push(n)).unwrap();
    assert_eq!(seen, [1, 2, 3]);
    std::fs::write(dir.path().join("README"), "not WAL").unwrap();
    let list = PlayList::scan(dir.path()).unwrap();
    assert_eq!(list.files.len(), 3);
    assert_eq!(list.segment_size, mib());
    assert_eq!(list.ignored, 1);
    assert_eq!(list.bytes(), 3 << 20);
    assert_eq!(
        list.files
            .iter()
            .map(|f| f.path.clone())
            .collect::<Vec<_>>(),
        paths
    );
    assert_eq!(list.start_of(&list.files[0]), klio_wal::Lsn(1 << 20));
}

#[test]
fn generate_refuses_a_directory_holding_wal() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), mib(), 1, |_| {}).unwrap();
    let e = generate(dir.path(), mib(), 1, |_| {}).unwrap_err();
    assert!(matches!(e, WalPlayerError::NotEmpty(_)), "{e}");
}

#[test]
fn gzip_files_are_read_decompressed() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate(dir.path(), mib(), 2, |_| {}).unwrap();
    let plain = std::fs::read(&paths[1]).unwrap();
    let gz = PathBuf::from(format!("{}.gz", paths[1].display()));
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&plain).unwrap();
    enc.finish().unwrap();
    std::fs::remove_file(&paths[1]).unwrap();
    let list = PlayList::scan(dir.path()).unwrap();
    assert!(list.files[1].gzip);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut *files::open(&gz, true).unwrap(), &mut back).unwrap();
    assert_eq!(back, plain);
}

#[test]
fn gaps_short_files_and_non_wal_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate(dir.path(), mib(), 3, |_| {}).unwrap();
    std::fs::remove_file(&paths[1]).unwrap();
    let e = PlayList::scan(dir.path()).unwrap_err();
    assert!(matches!(e, WalPlayerError::NotOneStream(_)), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let paths = generate(dir.path(), mib(), 2, |_| {}).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&paths[1])
        .unwrap();
    f.set_len(1000).unwrap();
    let e = PlayList::scan(dir.path()).unwrap_err();
    assert!(e.to_string().contains("1000 bytes"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("000000010000000000000001"), [0u8; 100]).unwrap();
    let e = PlayList::scan(dir.path()).unwrap_err();
    assert!(matches!(e, WalPlayerError::NotWal { .. }), "{e}");

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        PlayList::scan(empty.path()).unwrap_err(),
        WalPlayerError::NoFiles(_)
    ));
}

#[test]
fn job_numbers_fill_the_placeholders() {
    let t = JobTarget::from_template("walplayer-{job}", &endpoint(), 3).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t[2].cluster.as_str(), "walplayer-3");
    assert_eq!(t[2].server.cert, Path::new("certs/client-walplayer-3.pem"));
    assert_eq!(t[0].server.ca, Path::new("ca.pem"));
}

#[test]
fn several_jobs_without_a_placeholder_are_explained() {
    let e = JobTarget::from_template("walplayer", &endpoint(), 4).unwrap_err();
    assert!(e.to_string().contains("{job}"), "{e}");
    let one = JobTarget::from_template("walplayer", &endpoint(), 1).unwrap();
    assert_eq!(one[0].cluster.as_str(), "walplayer");
}

#[test]
fn each_job_is_checked_with_its_own_certificate_files() {
    let pki = crate::client_config::test_pki::Pki::new("main");
    pki.client("walplayer-1");
    pki.client("walplayer-2");
    let settings = ClientSettings {
        cluster: Some("walplayer-{job}".into()),
        cert: Some(pki.path("client-walplayer-{job}.pem")),
        key: Some(pki.path("client-walplayer-{job}.key")),
        ..pki.flags("walplayer-1")
    };
    let targets = JobTarget::resolve(&settings, 2).unwrap();
    assert_eq!(targets[1].cluster.as_str(), "walplayer-2");
    assert_eq!(targets[1].server.key, pki.path("client-walplayer-2.key"));
    // No certificate for job 3: its path is named.
    let e = JobTarget::resolve(&settings, 3).unwrap_err();
    assert!(matches!(e, WalPlayerError::Config(_)), "{e}");
    assert!(e.to_string().contains("client-walplayer-3.pem"), "{e}");
}

#[test]
fn a_missing_setting_is_named_before_any_job_is_made() {
    let settings = ClientSettings {
        cluster: Some("one".into()),
        ..Default::default()
    };
    let e = JobTarget::resolve(&settings, 1).unwrap_err();
    assert!(
        e.to_string().contains("client.wal.address") && e.to_string().contains("--server"),
        "{e}"
    );
}
