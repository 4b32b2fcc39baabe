use std::error::Error as _;
use std::io;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn write_new_creates_the_file_with_its_mode_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.pem");
    write_new(&path, b"cert", 0o644).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"cert");
    assert_eq!(mode(&path), 0o644);

    let e = write_new(&path, b"other", 0o600).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(e.action, FsAction::Create);
    assert_eq!(e.path, path);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"cert",
        "the old file is untouched"
    );
}

#[test]
fn a_bare_file_name_lives_in_the_current_directory() {
    assert_eq!(parent_dir(Path::new("key")), Path::new("."));
    assert_eq!(parent_dir(Path::new("/srv/key")), Path::new("/srv"));
}

#[test]
fn replace_writes_a_new_file_and_replaces_an_old_one_leaving_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postgresql.auto.conf");
    replace(&path, b"one").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"one");
    replace(&path, b"two, longer").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two, longer");
    replace(&path, b"3").unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"3",
        "a shorter file is not padded"
    );
    assert_eq!(mode(&path), 0o600);
    assert_eq!(names(dir.path()), ["postgresql.auto.conf"]);
}

#[test]
fn replace_without_sync_is_atomic_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last-requested");
    replace_without_sync(&path, b"a").unwrap();
    replace_without_sync(&path, b"b").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"b");
    assert_eq!(names(dir.path()), ["last-requested"]);
}

#[test]
fn a_crash_leftover_is_never_mistaken_for_the_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000002.history");
    // What a crash while writing leaves: a partly written temporary file, no final name.
    let half = TempFile::create(&path).unwrap();
    half.write_all_at(b"1\t0/3000000\tno reco", 0).unwrap();
    std::mem::forget(half);
    assert_eq!(names(dir.path()), ["00000002.history.klio-tmp"]);
    assert!(!path.exists(), "the final name appears only when complete");
    assert!(temp_path(&path).ends_with("00000002.history.klio-tmp"));

    // The next write of the same name reuses the leftover, truncated.
    replace(&path, b"1\t0/3000000\tno recovery target specified\n").unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"1\t0/3000000\tno recovery target specified\n"
    );
    assert_eq!(names(dir.path()), ["00000002.history"]);
}

#[test]
fn an_unpublished_temporary_file_is_removed_when_dropped_or_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("000000010000000000000001");
    let temp = TempFile::create(&dest).unwrap();
    temp.write_all_at(b"abc", 0).unwrap();
    assert_eq!(temp.path(), temp_path(&dest));
    drop(temp);
    assert!(names(dir.path()).is_empty());

    let temp = TempFile::create(&dest).unwrap();
    temp.discard().unwrap();
    assert!(names(dir.path()).is_empty());
}

#[test]
fn a_batch_published_without_dir_sync_is_complete_after_one_sync_dir() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        let temp = TempFile::create(&dir.path().join(name)).unwrap();
        temp.write_all_at(name.as_bytes(), 0).unwrap();
        temp.publish_deferring_dir_sync().unwrap();
    }
    sync_dir(dir.path()).unwrap();
    assert_eq!(names(dir.path()), ["a", "b"]);
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"b");
}

#[test]
fn rename_moves_a_file_within_and_across_directories() {
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("000000010000000000000001.partial");
    let complete = dir.path().join("000000010000000000000001");
    std::fs::write(&partial, b"wal").unwrap();
    rename(&partial, &complete).unwrap();
    assert_eq!(names(dir.path()), ["000000010000000000000001"]);

    let other = dir.path().join("pg_wal");
    std::fs::create_dir(&other).unwrap();
    let dest = other.join("RECOVERYXLOG");
    rename(&complete, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"wal");
    assert_eq!(names(dir.path()), ["pg_wal"]);
}

#[test]
fn create_prepadded_holds_the_head_then_zeros_and_refuses_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("000000010000000000000001.klio-journal");
    let file = create_prepadded(&path, b"head", 3 << 20).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 3 << 20);
    assert_eq!(&bytes[..4], b"head");
    assert!(bytes[4..].iter().all(|&b| b == 0));
    assert_eq!(mode(&path), 0o600);
    // Open for writing inside the padding.
    file.write_all_at(b"wal", 100).unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[100..103], b"wal");

    let e = create_prepadded(&path, b"", 1 << 20).unwrap_err();
    assert_eq!(
        (e.action, e.kind()),
        (FsAction::Create, io::ErrorKind::AlreadyExists)
    );
}

#[test]
fn write_zeros_clears_exactly_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, [0xffu8; 10]).unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    write_zeros(&file, &path, 2, 5).unwrap();
    write_zeros(&file, &path, 7, 7).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        [0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]
    );
}

#[test]
fn errors_carry_the_action_and_the_path_and_the_cause_only_as_source() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");

    let e = sync_dir(&missing).unwrap_err();
    assert_eq!(
        (e.action, e.path.as_path()),
        (FsAction::FsyncDirectory, missing.as_path())
    );
    assert_eq!(
        e.to_string(),
        format!("could not fsync directory {missing:?}")
    );
    let cause = e.source().expect("the io::Error is the source");
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(!e.to_string().contains(&cause.to_string()));

    let e = replace(&missing.join("x"), b"x").unwrap_err();
    assert_eq!(e.action, FsAction::Create);
    assert_eq!(e.path, missing.join("x.klio-tmp"));

    let e = rename(&dir.path().join("absent"), &dir.path().join("there")).unwrap_err();
    assert_eq!(e.action, FsAction::Open);
    assert_eq!(e.path, dir.path().join("absent"));

    std::fs::write(dir.path().join("src"), b"x").unwrap();
    let e = rename(&dir.path().join("src"), &missing.join("dest")).unwrap_err();
    assert_eq!(
        (e.action, e.path.clone()),
        (FsAction::Rename, missing.join("dest"))
    );
}
