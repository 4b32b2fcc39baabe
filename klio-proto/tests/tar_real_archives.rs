//! The tar reader against archives made by real tools: GNU tar in ustar format, and
//! `pg_basebackup -Ft` of a real PostgreSQL 15, compared with what `tar -x` extracts.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::BytesMut;
use klio_proto::tar::{EntryKind, TarEntry, TarEvent, TarReader};
use klio_testkit::{PgOptions, PgServer, TestDir, as_postgres, pg_bin, run_ok};

/// What one archive member turned out to be, with a file's contents joined.
#[derive(Debug)]
struct Member {
    entry: TarEntry,
    contents: Vec<u8>,
}

/// Reads `archive` fed in pieces of `piece_len` bytes, checking the event order as it goes.
fn read_archive(archive: &[u8], piece_len: usize) -> BTreeMap<PathBuf, Member> {
    let mut reader = TarReader::new();
    let mut buf = BytesMut::new();
    let mut members = BTreeMap::new();
    let mut current: Option<Member> = None;
    let mut ended = false;
    for piece in archive.chunks(piece_len) {
        buf.extend_from_slice(piece);
        while let Some(event) = reader.decode(&mut buf).expect("a valid archive") {
            assert!(!ended, "an event after End: {event:?}");
            match event {
                TarEvent::Entry(entry) => {
                    assert!(current.is_none(), "an entry inside an entry");
                    current = Some(Member {
                        entry,
                        contents: Vec::new(),
                    });
                }
                TarEvent::Data(data) => current
                    .as_mut()
                    .expect("data inside an entry")
                    .contents
                    .extend_from_slice(&data),
                TarEvent::EntryEnd => {
                    let m = current.take().expect("EntryEnd after an entry");
                    if let EntryKind::File { size } = m.entry.kind {
                        assert_eq!(m.contents.len() as u64, size, "{}", m.entry.path);
                    }
                    let path = m.entry.path.as_path().to_owned();
                    assert!(members.insert(path, m).is_none(), "a path twice");
                }
                TarEvent::End => ended = true,
            }
        }
    }
    reader.finish().expect("the archive is complete");
    assert!(ended && current.is_none());
    members
}

/// Every path under `root` (relative to it, `root` itself as the empty path), without
/// following symbolic links.
fn walk(root: &Path) -> Vec<PathBuf> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let path = e.expect("dir entry").path();
            out.push(path.strip_prefix(root).expect("under root").to_owned());
            if std::fs::symlink_metadata(&path)
                .expect("lstat")
                .file_type()
                .is_dir()
            {
                go(root, &path, out);
            }
        }
    }
    let mut out = vec![PathBuf::new()];
    go(root, root, &mut out);
    out.sort();
    out
}

/// Asserts that the archive's members are exactly the tree under `root`, byte for byte.
fn assert_members_match_tree(members: &BTreeMap<PathBuf, Member>, root: &Path, with_root: bool) {
    let mut expected = walk(root);
    if !with_root {
        expected.retain(|p| !p.as_os_str().is_empty());
    }
    let got: Vec<PathBuf> = members.keys().cloned().collect();
    assert_eq!(got, expected, "the archive's paths are the tree's");
    for (path, m) in members {
        let on_disk = root.join(path);
        let meta = std::fs::symlink_metadata(&on_disk).expect("lstat");
        match &m.entry.kind {
            EntryKind::File { size } => {
                assert!(meta.file_type().is_file(), "{}", path.display());
                assert_eq!(*size, meta.len(), "{}", path.display());
                assert!(
                    std::fs::read(&on_disk).expect("read") == m.contents,
                    "contents of {} differ",
                    path.display()
                );
            }
            EntryKind::Directory => assert!(meta.file_type().is_dir(), "{}", path.display()),
            EntryKind::Symlink { target } => {
                let on_disk_target = std::fs::read_link(&on_disk).expect("readlink");
                assert_eq!(on_disk_target.as_os_str().as_encoded_bytes(), &target[..]);
            }
        }
        if !meta.file_type().is_symlink() {
            assert_eq!(
                m.entry.mode,
                meta.permissions().mode() & 0o7777,
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn an_archive_written_by_gnu_tar_in_ustar_format_reads_as_its_files() {
    let dir = TestDir::new("tar-ustar");
    let src = dir.subdir("src");
    let contents: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("data.bin"), &contents).expect("write");
    std::fs::write(src.join("empty"), b"").expect("write");
    std::fs::create_dir(src.join("dir")).expect("mkdir");
    std::fs::write(src.join("dir/one-block"), [9u8; 512]).expect("write");
    std::os::unix::fs::symlink("dir/one-block", src.join("link")).expect("symlink");
    let long_dir = src.join("a".repeat(70)).join("b".repeat(50));
    std::fs::create_dir_all(&long_dir).expect("mkdir");
    std::fs::write(long_dir.join("file-past-100-bytes"), b"deep\n").expect("write");
    std::fs::set_permissions(src.join("empty"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");

    let archive = dir.path().join("archive.tar");
    run_ok(
        Command::new("tar")
            .args(["--format=ustar", "-cf"])
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg("."),
    );
    let bytes = std::fs::read(&archive).expect("read archive");
    let members = read_archive(&bytes, 333);

    assert_members_match_tree(&members, &src, true);
    let long = members
        .keys()
        .find(|p| p.ends_with("file-past-100-bytes"))
        .expect("the long path is there");
    assert!(long.as_os_str().len() > 100, "{}", long.display());
    let empty = &members[Path::new("empty")].entry;
    let meta = std::fs::metadata(src.join("empty")).expect("stat");
    assert_eq!(
        (empty.mode, empty.uid, empty.gid, empty.mtime),
        (0o640, meta.uid(), meta.gid(), meta.mtime() as u64)
    );
}

#[test]
fn a_pg_basebackup_tar_of_postgresql_15_reads_as_what_tar_extracts() {
    let pg = PgServer::start(PgOptions::default());
    let work = TestDir::new("tar-basebackup");
    let location = work.subdir("tablespace");
    pg.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        location.display()
    ));
    pg.psql(
        "CREATE TABLE t TABLESPACE ts AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    );
    pg.psql("CREATE TABLE u AS SELECT g FROM generate_series(1, 50000) g");

    let backup = work.subdir("backup");
    run_ok(
        as_postgres(pg_bin("pg_basebackup"))
            .arg("-D")
            .arg(&backup)
            .args(["-Ft", "-X", "none", "-c", "fast", "--no-sync"])
            .args(["-h", &pg.socket_dir(), "-p", &pg.port().to_string()])
            .args(["-U", "postgres"]),
    );

    let mut archives: Vec<PathBuf> = std::fs::read_dir(&backup)
        .expect("read backup dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    archives.sort();
    assert_eq!(
        archives.len(),
        2,
        "base.tar and the tablespace's: {archives:?}"
    );

    let mut files = 0;
    let mut links = 0;
    for archive in &archives {
        let extracted = work.subdir(&format!(
            "x-{}",
            archive.file_stem().expect("name").to_string_lossy()
        ));
        run_ok(
            Command::new("tar")
                .arg("-xf")
                .arg(archive)
                .arg("-C")
                .arg(&extracted),
        );
        let bytes = std::fs::read(archive).expect("read archive");
        // A piece size prime to 512 puts piece boundaries inside headers and contents alike.
        let members = read_archive(&bytes, 7919);
        assert_members_match_tree(&members, &extracted, false);
        for m in members.values() {
            match m.entry.kind {
                EntryKind::File { .. } => files += 1,
                EntryKind::Symlink { .. } => links += 1,
                EntryKind::Directory => {}
            }
        }
        if archive.ends_with("base.tar") {
            assert!(members.contains_key(Path::new("backup_label")));
            assert!(members.contains_key(Path::new("global/pg_control")));
            assert!(members.contains_key(Path::new("pg_wal/archive_status")));
            // pg_basebackup asks for TABLESPACE_MAP, so the server sends the map instead of
            // the pg_tblspc links (the link form is covered by the unit tests).
            assert!(members.contains_key(Path::new("tablespace_map")));
        }
    }
    assert!(files > 900, "only {files} files");
    assert_eq!(links, 0, "no pg_tblspc links with TABLESPACE_MAP");
}
