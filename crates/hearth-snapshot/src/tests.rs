//! Tests run as root on real files; every tree lives in a tempdir that is removed on drop.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};

use crate::tree::{ChunkRef, Entry, Kind, Tree};
use crate::*;

const B1: u32 = 100_000;
const B2: u32 = 300_000;

pub(crate) fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn own(p: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        CWD,
        p,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tree with every kind of metadata a workspace upper dir can hold, owned from `base`.
pub(crate) fn build_tree(root: &Path, base: u32) {
    fs::create_dir_all(root.join("workspace/src/deep/er")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::create_dir(root.join("opaque")).unwrap();
    rustix::fs::setxattr(
        root.join("opaque").as_path(),
        "trusted.overlay.opaque",
        b"y",
        XattrFlags::empty(),
    )
    .unwrap();
    fs::write(root.join("opaque/inside"), b"x").unwrap();
    fs::write(root.join("workspace/src/main.rs"), b"fn main() {}\n").unwrap();
    fs::write(
        root.join("workspace/big.bin"),
        pseudo_random(3 * 1024 * 1024 + 17, 1),
    )
    .unwrap();
    fs::write(root.join("workspace/src/deep/er/empty-file"), b"").unwrap();
    fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
    // Modes the usual umask (022) would strip, and one it leaves alone.
    fs::write(root.join("workspace/shared-rw"), b"rw").unwrap();
    fs::write(root.join("workspace/private"), b"p").unwrap();
    rustix::fs::setxattr(
        root.join("workspace/src/main.rs").as_path(),
        "user.note",
        b"hello\0bin",
        XattrFlags::empty(),
    )
    .unwrap();
    // Whiteout, fifo, another device.
    rustix::fs::mknodat(
        CWD,
        root.join("workspace/deleted"),
        FileType::CharacterDevice,
        Mode::empty(),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        root.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        root.join("blockdev"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(8, 0),
    )
    .unwrap();
    // Links.
    symlink("../suid", root.join("workspace/link")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    rustix::fs::lsetxattr(
        root.join("abs-link").as_path(),
        "trusted.tag",
        b"t",
        XattrFlags::empty(),
    )
    .unwrap();
    fs::write(root.join("workspace/hard-a"), b"shared").unwrap();
    fs::hard_link(
        root.join("workspace/hard-a"),
        root.join("workspace/src/hard-b"),
    )
    .unwrap();
    // Sparse: holes at both ends around some data.
    {
        let f = fs::File::create(root.join("sparse")).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"data in the middle", 9 * 1024 * 1024)
            .unwrap();
        f.set_len(16 * 1024 * 1024).unwrap();
    }
    for p in [
        "",
        "workspace",
        "workspace/src",
        "workspace/src/main.rs",
        "workspace/big.bin",
        "empty",
        "opaque",
        "opaque/inside",
        "suid",
        "fifo",
        "workspace/deleted",
        "workspace/link",
        "abs-link",
        "workspace/hard-a",
        "sparse",
        "workspace/src/deep",
        "workspace/src/deep/er",
        "workspace/src/deep/er/empty-file",
        "blockdev",
        "workspace/shared-rw",
        "workspace/private",
    ] {
        own(&root.join(p), base + 1000, base + 1000);
    }
    fs::set_permissions(
        root.join("workspace/shared-rw"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    fs::set_permissions(
        root.join("workspace/private"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    own(&root.join("suid"), base, base + 5);
    own(&root.join("empty"), base + 65535, base + 2);
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(
        root.join("workspace/src"),
        fs::Permissions::from_mode(0o2750),
    )
    .unwrap();
    // mtimes last, children before parents.
    let mut all: Vec<PathBuf> = walk(root).into_iter().map(|(p, _)| root.join(p)).collect();
    all.reverse();
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64, 123_456_789);
    }
}

fn walk(root: &Path) -> Vec<(String, fs::Metadata)> {
    let mut out = vec![(String::new(), fs::symlink_metadata(root).unwrap())];
    fn rec(root: &Path, rel: &str, out: &mut Vec<(String, fs::Metadata)>) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", n.to_string_lossy())
            };
            let m = fs::symlink_metadata(root.join(&r)).unwrap();
            out.push((r.clone(), m.clone()));
            if m.is_dir() {
                rec(root, &r, out);
            }
        }
    }
    rec(root, "", &mut out);
    out
}

#[derive(Debug, PartialEq, Eq)]
struct Desc {
    kind: u32,
    mode: u32,
    uid: i64,
    gid: i64,
    size: u64,
    mtime: (i64, i64),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    content: Option<[u8; 32]>,
    link: Option<PathBuf>,
    rdev: u64,
    nlink: u64,
    /// First path sharing this inode.
    inode_group: String,
}

/// Everything we promise to preserve, owners relative to `base`.
fn describe(root: &Path, base: u32) -> BTreeMap<String, Desc> {
    let mut groups: BTreeMap<u64, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (rel, m) in walk(root) {
        let p = root.join(&rel);
        let mut names = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(p.as_path(), &mut names[..]).unwrap();
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = names[..n]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|name| {
                let mut v = vec![0u8; 65536];
                let l = rustix::fs::lgetxattr(p.as_path(), name, &mut v[..]).unwrap();
                (name.to_vec(), v[..l].to_vec())
            })
            .collect();
        xattrs.sort();
        let group = groups.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
        out.insert(
            rel.clone(),
            Desc {
                kind: m.mode() & 0o170000,
                mode: m.mode() & 0o7777,
                uid: i64::from(m.uid()) - i64::from(base),
                gid: i64::from(m.gid()) - i64::from(base),
                size: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                xattrs,
                content: m
                    .is_file()
                    .then(|| *blake3::hash(&fs::read(&p).unwrap()).as_bytes()),
                link: m
                    .file_type()
                    .is_symlink()
                    .then(|| fs::read_link(&p).unwrap()),
                rdev: m.rdev(),
                nlink: if m.is_dir() { 0 } else { m.nlink() },
                inode_group: group,
            },
        );
    }
    out
}

fn expected_after_restore(src: &Path, base: u32) -> BTreeMap<String, Desc> {
    let mut d = describe(src, base);
    // Block devices are stored but not restored.
    d.remove("blockdev");
    d
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn roundtrip(key: Option<Key>) {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src, B1);
    let store = Store::open_local(&t.path().join("store"), key).unwrap();
    let info = snapshot(&store, "ws1", &src, B1, None, None).unwrap();
    assert_eq!(info.workspace, "ws1");
    assert!(info.size > 16 * 1024 * 1024);
    assert!(
        info.new_bytes > 3 * 1024 * 1024,
        "random data is stored: {}",
        info.new_bytes
    );
    let dst = t.path().join("dst");
    restore(&store, &info.id, &dst, B2, None).unwrap();
    assert_eq!(expected_after_restore(&src, B1), describe(&dst, B2));
    // Holes stay holes: the 16 MiB file has 18 bytes of data.
    let sparse = fs::metadata(dst.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 16 * 1024 * 1024);
    assert!(
        sparse.blocks() * 512 <= 16 * 1024,
        "sparse file materialised: {} blocks",
        sparse.blocks()
    );
    // The restored setuid bit survived the chown, and the link identity is kept.
    assert_eq!(
        fs::metadata(dst.join("suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(fs::metadata(dst.join("suid")).unwrap().uid(), B2);
    assert_eq!(
        fs::metadata(dst.join("workspace/hard-a")).unwrap().ino(),
        fs::metadata(dst.join("workspace/src/hard-b"))
            .unwrap()
            .ino()
    );
    assert!(!dst.join("blockdev").exists());
}

#[test]
fn roundtrip_every_metadata_kind_with_owner_shift() {
    roundtrip(None);
}

/// Files are created with their final mode when the umask allows; a default ACL on the
/// target would change that, so there every mode is set explicitly.
#[test]
fn modes_survive_a_default_acl_on_the_target() {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src, B1);
    let store = Store::open_local(&t.path().join("store"), None).unwrap();
    let info = snapshot(&store, "ws1", &src, B1, None, None).unwrap();
    let dst = t.path().join("dst");
    fs::create_dir(&dst).unwrap();
    // Default ACL u::rwx,g::---,o::---: new files would get at most 0700 & requested mode.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 0), (0x20, 0)] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    rustix::fs::setxattr(
        dst.as_path(),
        "system.posix_acl_default",
        &acl,
        XattrFlags::empty(),
    )
    .unwrap();
    restore(&store, &info.id, &dst, B2, None).unwrap();
    let modes = |d: &BTreeMap<String, Desc>| -> Vec<(String, u32)> {
        d.iter()
            .filter(|(p, x)| !p.is_empty() && x.kind == 0o100000)
            .map(|(p, x)| (p.clone(), x.mode))
            .collect()
    };
    let want = modes(&expected_after_restore(&src, B1));
    assert!(want.contains(&("workspace/big.bin".to_string(), 0o644)));
    assert_eq!(want, modes(&describe(&dst, B2)));
}

#[test]
fn roundtrip_encrypted() {
    roundtrip(Some(Key::generate()));
}

#[test]
fn owners_outside_range_become_nobody() {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    own(&src, B1, B1);
    fs::write(src.join("host-owned"), b"x").unwrap(); // uid 0: outside the range
    own(&src.join("host-owned"), 0, B1 + 70_000);
    let store = Store::open_local(&t.path().join("store"), None).unwrap();
    let info = snapshot(&store, "ws", &src, B1, None, None).unwrap();
    let dst = t.path().join("dst");
    restore(&store, &info.id, &dst, B2, None).unwrap();
    let m = fs::metadata(dst.join("host-owned")).unwrap();
    assert_eq!((m.uid(), m.gid()), (B2 + 65534, B2 + 65534));
    assert_eq!(fs::metadata(&dst).unwrap().uid(), B2);
}

#[test]
fn encrypted_store_refuses_wrong_or_missing_key() {
    let t = tmp();
    let path = t.path().join("store");
    let keyfile = t.path().join("key");
    let key = Key::load_or_create(&keyfile).unwrap();
    assert_eq!(fs::metadata(&keyfile).unwrap().mode() & 0o777, 0o600);
    Store::open_local(&path, Some(key.clone())).unwrap();
    assert!(matches!(
        Store::open_local(&path, None),
        Err(SnapshotError::Store { .. })
    ));
    assert!(matches!(
        Store::open_local(&path, Some(Key::generate())),
        Err(SnapshotError::Store { .. })
    ));
    let again = Key::load_or_create(&keyfile).unwrap();
    Store::open_local(&path, Some(again)).unwrap();
    fs::set_permissions(&keyfile, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        Key::load_or_create(&keyfile),
        Err(SnapshotError::Key { .. })
    ));
}

fn many_files(root: &Path, n: usize, seed: u64) {
    for i in 0..n {
        let d = root.join(format!("d{}", i % 7));
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join(format!("f{i}")),
            pseudo_random(20_000 + i * 311, seed + i as u64),
        )
        .unwrap();
    }
}

#[test]
fn dedup_across_workspaces() {
    let t = tmp();
    let a = t.path().join("a");
    let b = t.path().join("b");
    fs::create_dir(&a).unwrap();
    many_files(&a, 40, 7);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&a)
        .arg(&b)
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(b.join("d0/f0"), pseudo_random(20_000, 7)).unwrap(); // same content, new inode times
    let store = Store::open_local(&t.path().join("store"), None).unwrap();
    let s1 = snapshot(&store, "ws-a", &a, 0, None, None).unwrap();
    let s2 = snapshot(&store, "ws-b", &b, 0, None, None).unwrap();
    assert!(
        s1.new_bytes > 800_000,
        "first snapshot stores data: {}",
        s1.new_bytes
    );
    // Only the (differently timed) tree is new.
    assert!(
        s2.new_bytes < 8_000,
        "second snapshot re-uploaded {} bytes",
        s2.new_bytes
    );
    assert_eq!(list(&store, Some("ws-b")).unwrap().len(), 1);
    assert_eq!(list(&store, None).unwrap().len(), 2);
}

#[test]
fn usage_tells_shared_from_own_chunks() {
    let t = tmp();
    let a = t.path().join("a");
    fs::create_dir(&a).unwrap();
    fs::write(a.join("shared"), pseudo_random(600_000, 1)).unwrap();
    let b = t.path().join("b");
    fs::create_dir(&b).unwrap();
    fs::write(b.join("shared"), pseudo_random(600_000, 1)).unwrap();
    fs::write(b.join("own"), pseudo_random(400_000, 2)).unwrap();
    let store = Store::open_local(&t.path().join("store"), None).unwrap();
    snapshot(&store, "ws-a", &a, 0, None, None).unwrap();
    let sb = snapshot(&store, "ws-b", &b, 0, None, None).unwrap();
    let ua = usage(&store, "ws-a").unwrap();
    let ub = usage(&store, "ws-b").unwrap();
    assert_eq!((ua.snapshots, ub.snapshots), (1, 1));
    // Random data does not compress: stored sizes are near the file sizes.
    assert!(ua.referenced_bytes > 590_000, "{ua:?}");
    assert!(ub.referenced_bytes > 990_000, "{ub:?}");
    // a's only own chunk is its tree; b's are its tree and `own`.
    assert!(ua.unique_bytes < 8_000, "{ua:?}");
    assert!((400_000..420_000).contains(&ub.unique_bytes), "{ub:?}");
    assert_eq!(usage(&store, "ws-c").unwrap(), Usage::default());
    forget(&store, std::slice::from_ref(&sb.id)).unwrap();
    let ua = usage(&store, "ws-a").unwrap();
    assert_eq!(
        ua.unique_bytes, ua.referenced_bytes,
        "nothing shared any more"
    );
}

#[test]
fn incremental_reuses_unchanged_files_without_reading() {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    many_files(&src, 50, 11);
    let store = Store::open_local(&t.path().join("store"), None).unwrap();
    let p0 = Progress::default();
    let s1 = snapshot(&store, "ws", &src, 0, None, Some(&p0)).unwrap();
    assert_eq!(p0.files.load(std::sync::atomic::Ordering::Relaxed), 50);
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(src.join("d3/f3"))
        .unwrap()
        .write_all(b"appended")
        .unwrap();
    fs::write(src.join("new-file"), b"new").unwrap();
    let p1 = Progress::default();
    let s2 = snapshot(&store, "ws", &src, 0, Some(&s1.id), Some(&p1)).unwrap();
    assert_eq!(
        p1.files.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "only the changed and new file are read"
    );
    assert_eq!(s2.parent.as_deref(), Some(s1.id.as_str()));
    assert!(s2.new_bytes < 60_000, "{}", s2.new_bytes);
    let dst = t.path().join("dst");
    restore(&store, &s2.id, &dst, 0, None).unwrap();
    assert_eq!(describe(&src, 0), describe(&dst, 0));
}

fn index(store: &Store) -> crate::pack::Index {
    crate::pack::Index::load(store).unwrap().0
}

fn chunk_of(store: &Store, id: &str, file: &str) -> ChunkRef {
    let info = store.get_record(id).unwrap();
    let tree = store.get_tree(&info, &index(store)).unwrap();
    let e = tree
        .entries
        .iter()
        .find(|e| e.path == file.as_bytes())
        .unwrap();
    match &e.kind {
        Kind::File { chunks, .. } => chunks[0],
        k => panic!("{k:?}"),
    }
}

/// The pack file holding chunk `c` and the chunk's byte range in it.
fn located(store: &Store, store_path: &Path, c: &ChunkRef) -> (PathBuf, std::ops::Range<usize>) {
    let idx = index(store);
    let l = idx.get(&c.id).unwrap();
    (
        store_path.join(idx.pack_key(&l)),
        l.off as usize..(l.off + l.len) as usize,
    )
}

/// Stores one chunk through its own pack and index object, as a snapshot would.
fn put_chunk(store: &Store, data: &[u8]) -> ChunkRef {
    let idx = index(store);
    let p = crate::pack::Packer::new(store, &idx);
    let r = p.add(data).unwrap();
    p.finish().unwrap();
    r
}

fn small_store(t: &Path) -> (Store, SnapshotInfo, PathBuf) {
    let src = t.join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("victim"), b"precious work").unwrap();
    fs::write(src.join("copy-of-victim"), b"precious work").unwrap();
    fs::write(src.join("bystander"), b"other").unwrap();
    let store_path = t.join("store");
    let store = Store::open_local(&store_path, None).unwrap();
    let info = snapshot(&store, "ws", &src, 0, None, None).unwrap();
    (store, info, store_path)
}

#[test]
fn small_files_are_bundled_into_one_chunk_and_packed() {
    let t = tmp();
    let (store, info, store_path) = small_store(t.path());
    let c = chunk_of(&store, &info.id, "victim");
    assert_eq!(c, chunk_of(&store, &info.id, "bystander"));
    // Bundle and tree in at most two packs (one per worker that stored something), one
    // index object, nothing per chunk.
    assert!(fs::read_dir(store_path.join("packs")).unwrap().count() <= 2);
    assert_eq!(fs::read_dir(store_path.join("index")).unwrap().count(), 1);
    assert!(!store_path.join("chunks").exists());
}

#[test]
fn corrupt_pack_fails_restore_naming_the_files() {
    let t = tmp();
    let (store, info, store_path) = small_store(t.path());
    let c = chunk_of(&store, &info.id, "victim");
    let (pack, range) = located(&store, &store_path, &c);
    let mut raw = fs::read(&pack).unwrap();
    raw[(range.start + range.end) / 2] ^= 0x40;
    fs::write(&pack, &raw).unwrap();
    let dst = t.path().join("dst");
    let err = restore(&store, &info.id, &dst, 0, None).unwrap_err();
    match &err {
        SnapshotError::Chunk {
            chunk,
            problem,
            files,
        } => {
            assert_eq!(chunk, &c.id.hex());
            assert!(problem.contains("corrupt"), "{problem}");
            assert!(problem.contains("packs/"), "names the pack: {problem}");
            // All three small files share the bundle, in tree order.
            assert_eq!(
                files,
                &vec![
                    "bystander".to_string(),
                    "copy-of-victim".to_string(),
                    "victim".to_string()
                ]
            );
        }
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains("victim"));
    // No file with wrong content is left behind.
    for f in ["victim", "copy-of-victim", "bystander"] {
        assert!(!dst.join(f).exists(), "{f}");
    }
    let report = fsck(&store).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].problem.contains("checksum"));
    assert!(report.problems[0].files.contains(&"victim".to_string()));
}

#[test]
fn hostile_index_cannot_make_restore_write_wrong_data() {
    let t = tmp();
    let (store, info, store_path) = small_store(t.path());
    let c = chunk_of(&store, &info.id, "victim");
    let idx = index(&store);
    let good = idx.get(&c.id).unwrap();
    let good_pack = idx.packs[good.pack as usize];
    // A well-formed object with the wrong content, in a pack of its own, listed first.
    let forged = crate::format::encode(
        crate::format::Kind::Chunk,
        None,
        &b"precious wORKprecious workother"[..c.len as usize],
    );
    let forged_pack = crate::format::ChunkId(*blake3::hash(&forged).as_bytes());
    fs::write(
        store_path.join(crate::pack::pack_key(&forged_pack)),
        &forged,
    )
    .unwrap();
    let blob = |off: u32, len: u32| crate::pack::Blob { id: c.id, off, len };
    for k in &idx.keys {
        fs::remove_file(store_path.join(k)).unwrap();
    }
    let tree_c = info.tree[0];
    let tl = idx.get(&tree_c.id).unwrap();
    let packs = vec![
        crate::pack::PackBlobs {
            pack: forged_pack,
            blobs: vec![blob(0, forged.len() as u32)],
        },
        crate::pack::PackBlobs {
            pack: idx.packs[tl.pack as usize],
            blobs: vec![crate::pack::Blob {
                id: tree_c.id,
                off: tl.off,
                len: tl.len,
            }],
        },
    ];
    crate::pack::write_index(&store, &packs).unwrap();
    let dst = t.path().join("dst");
    match restore(&store, &info.id, &dst, 0, None).unwrap_err() {
        SnapshotError::Chunk { problem, .. } => {
            assert!(problem.contains("hash mismatch"), "{problem}")
        }
        e => panic!("unexpected {e}"),
    }
    // With the real copy listed second, restore falls back to it and succeeds.
    let mut with_good = packs.clone();
    with_good.push(crate::pack::PackBlobs {
        pack: good_pack,
        blobs: vec![blob(good.off, good.len)],
    });
    crate::pack::write_index(&store, &with_good).unwrap();
    let dst2 = t.path().join("dst2");
    restore(&store, &info.id, &dst2, 0, None).unwrap();
    assert_eq!(fs::read(dst2.join("victim")).unwrap(), b"precious work");

    // Impossible locations make the index object unreadable, not a giant read.
    let huge = vec![crate::pack::PackBlobs {
        pack: good_pack,
        blobs: vec![blob(u32::MAX - 10, u32::MAX)],
    }];
    let keys = crate::pack::write_index(&store, &huge).unwrap();
    let (_, bad) = crate::pack::Index::load(&store).unwrap();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].0, keys[0]);
    assert!(matches!(bad[0].1, SnapshotError::Corrupt { .. }));
    // A chunk past the end of its pack is "missing", and nothing is half-written.
    fs::remove_file(store_path.join(&keys[0])).unwrap();
    for k in index(&store).keys {
        fs::remove_file(store_path.join(k)).unwrap();
    }
    let mut short = packs.clone();
    short[0] = crate::pack::PackBlobs {
        pack: good_pack,
        blobs: vec![blob(1 << 20, 1000)],
    };
    crate::pack::write_index(&store, &short).unwrap();
    let dst3 = t.path().join("dst3");
    match restore(&store, &info.id, &dst3, 0, None).unwrap_err() {
        SnapshotError::Chunk { problem, files, .. } => {
            assert!(problem.contains("truncated"), "{problem}");
            assert!(files.contains(&"victim".to_string()));
        }
        e => panic!("unexpected {e}"),
    }
    assert!(!dst3.join("victim").exists());
    // A garbage index object is reported by fsck and makes gc refuse.
    fs::write(store_path.join("index/garbage"), b"not an index").unwrap();
    assert!(fsck(&store)
        .unwrap()
        .problems
        .iter()
        .any(|p| p.object == "index/garbage"));
    assert!(matches!(gc(&store), Err(SnapshotError::Store { .. })));
}

/// Two snapshots whose file chunks live in different packs: `old` (pack 1) and `new`.
fn two_pack_store(t: &Path) -> (Store, SnapshotInfo, PathBuf, PathBuf) {
    let src = t.join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("old"), b"from the first snapshot").unwrap();
    let store_path = t.join("store");
    let store = Store::open_local(&store_path, None).unwrap();
    let s1 = snapshot(&store, "ws", &src, 0, None, None).unwrap();
    fs::write(src.join("new"), b"from the second").unwrap();
    let s2 = snapshot(&store, "ws", &src, 0, Some(&s1.id), None).unwrap();
    (store, s2, store_path, src)
}

#[test]
fn missing_pack_fails_restore_naming_the_files() {
    let t = tmp();
    let (store, s2, store_path, _) = two_pack_store(t.path());
    let c = chunk_of(&store, &s2.id, "old");
    let (pack, _) = located(&store, &store_path, &c);
    assert_ne!(pack, located(&store, &store_path, &s2.tree[0]).0);
    fs::remove_file(&pack).unwrap();
    match restore(&store, &s2.id, &t.path().join("dst"), 0, None).unwrap_err() {
        SnapshotError::Chunk { problem, files, .. } => {
            assert!(problem.starts_with("missing"), "{problem}");
            assert!(problem.contains("not found"), "{problem}");
            assert_eq!(files, vec!["old".to_string()]);
        }
        e => panic!("unexpected {e}"),
    }
    assert!(!t.path().join("dst/old").exists());
}

#[test]
fn fsck_finds_corruption_and_missing_packs() {
    let t = tmp();
    let (store, s2, store_path, _) = two_pack_store(t.path());
    let report = fsck(&store).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.snapshots, 2);
    assert_eq!(report.chunks, 2);
    let new = chunk_of(&store, &s2.id, "new");
    let (pack, range) = located(&store, &store_path, &new);
    let mut raw = fs::read(&pack).unwrap();
    raw[range.start + 20] ^= 1;
    fs::write(&pack, &raw).unwrap();
    let old = chunk_of(&store, &s2.id, "old");
    fs::remove_file(located(&store, &store_path, &old).0).unwrap();
    let report = fsck(&store).unwrap();
    let bad = report
        .problems
        .iter()
        .find(|p| p.object == format!("chunk {}", new.id))
        .unwrap();
    assert!(bad.problem.contains("checksum"), "{}", bad.problem);
    assert_eq!(bad.files, vec!["new".to_string()]);
    assert_eq!(bad.snapshots, vec![s2.id.clone()]);
    assert!(report
        .problems
        .iter()
        .any(|p| p.problem.starts_with("missing") && p.files == vec!["old".to_string()]));
}

#[test]
fn gc_deletes_only_unreferenced_chunks_and_respects_leases() {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    // Larger than the bundling threshold: each file is its own chunk.
    fs::write(src.join("kept"), pseudo_random(300_000, 1)).unwrap();
    fs::write(src.join("dropped"), pseudo_random(300_000, 2)).unwrap();
    let store_path = t.path().join("store");
    let store = Store::open_local(&store_path, None).unwrap();
    let s1 = snapshot(&store, "ws", &src, 0, None, None).unwrap();
    let dropped = chunk_of(&store, &s1.id, "dropped");
    let kept = chunk_of(&store, &s1.id, "kept");
    assert_ne!(dropped, kept);
    fs::remove_file(src.join("dropped")).unwrap();
    let s2 = snapshot(&store, "ws", &src, 0, Some(&s1.id), None).unwrap();

    // Nothing is unreferenced yet (small packs may be merged, nothing lost).
    let r = gc(&store).unwrap();
    assert_eq!(r.deleted_chunks, 0, "{r:?}");
    assert!(fsck(&store).unwrap().ok());
    forget(&store, std::slice::from_ref(&s1.id)).unwrap();
    // A snapshot in progress blocks gc.
    let lease = crate::maint::Lease::acquire_for_snapshot(&store).unwrap();
    assert!(matches!(gc(&store), Err(SnapshotError::Busy { .. })));
    drop(lease);
    let before = dir_size(&store_path.join("packs"));
    let r = gc(&store).unwrap();
    assert_eq!(r.deleted_chunks, 2, "the dropped file and s1's tree: {r:?}");
    assert!(r.deleted_bytes >= 300_000, "{r:?}");
    assert!(dir_size(&store_path.join("packs")) + 300_000 <= before);
    let idx = index(&store);
    assert!(!idx.contains(&dropped.id));
    assert!(idx.contains(&kept.id));
    assert_eq!(idx.keys.len(), 1, "one consolidated index");
    assert!(fsck(&store).unwrap().ok());
    restore(&store, &s2.id, &t.path().join("dst"), 0, None).unwrap();
    assert_eq!(
        fs::read(t.path().join("dst/kept")).unwrap(),
        pseudo_random(300_000, 1)
    );
    // A second gc finds nothing to do.
    let r = gc(&store).unwrap();
    assert_eq!((r.deleted_chunks, r.deleted_packs), (0, 0), "{r:?}");
    // And gc blocks snapshots in turn.
    let g = crate::maint::Lease::try_acquire_gc_for_test(&store);
    assert!(matches!(
        snapshot(&store, "ws", &src, 0, None, None),
        Err(SnapshotError::Busy { .. })
    ));
    drop(g);
}

fn dir_size(p: &Path) -> u64 {
    fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Fails every pack upload after the first `ok` ones, like a crash mid-snapshot.
#[derive(Debug)]
struct Crashing {
    inner: LocalBackend,
    ok: std::sync::atomic::AtomicUsize,
}

impl Backend for Crashing {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn get(&self, key: &str, limit: u64) -> Result<bytes::Bytes, BackendError> {
        self.inner.get(key, limit)
    }
    fn get_range(&self, key: &str, off: u64, len: u64) -> Result<bytes::Bytes, BackendError> {
        self.inner.get_range(key, off, len)
    }
    fn put(&self, key: &str, data: bytes::Bytes) -> Result<(), BackendError> {
        if key.starts_with("packs/") {
            let left = self.ok.load(std::sync::atomic::Ordering::SeqCst);
            if left == 0 {
                // What a crash leaves: a partial temp file, never a partial pack.
                fs::write(
                    Path::new(&self.inner.location()).join("tmp/partial"),
                    &data[..data.len() / 2],
                )
                .unwrap();
                return Err(BackendError::Io {
                    path: key.into(),
                    source: std::io::Error::other("injected crash"),
                });
            }
            self.ok.store(left - 1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.put(key, data)
    }
    fn exists(&self, key: &str) -> Result<bool, BackendError> {
        self.inner.exists(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.inner.delete(key)
    }
    fn sync(&self) -> Result<(), BackendError> {
        self.inner.sync()
    }
}

#[test]
fn crash_mid_pack_write_leaves_a_consistent_store() {
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("first"), b"kept").unwrap();
    let store_path = t.path().join("store");
    let store = Store::open_local(&store_path, None).unwrap();
    let s1 = snapshot(&store, "ws", &src, 0, None, None).unwrap();
    // Enough new data for two packs; the second upload "crashes".
    for i in 0..3 {
        fs::write(
            src.join(format!("big{i}")),
            pseudo_random(8 * 1024 * 1024, i),
        )
        .unwrap();
    }
    let crashing = Store::open(
        std::sync::Arc::new(Crashing {
            inner: LocalBackend::open(&store_path).unwrap(),
            ok: 1.into(),
        }),
        None,
    )
    .unwrap();
    assert!(snapshot(&crashing, "ws", &src, 0, Some(&s1.id), None).is_err());
    assert_eq!(list(&store, None).unwrap().len(), 1);
    assert!(fs::read_dir(store_path.join("packs")).unwrap().count() >= 2);
    let report = fsck(&store).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    // The next snapshot completes and restores exactly.
    let s2 = snapshot(&store, "ws", &src, 0, Some(&s1.id), None).unwrap();
    let dst = t.path().join("dst");
    restore(&store, &s2.id, &dst, 0, None).unwrap();
    assert_eq!(describe(&src, 0), describe(&dst, 0));
    // gc removes the orphaned pack (unless s2 wrote the same pack again: packs are named
    // by their content) and keeps everything s2 needs: every pack left is needed.
    gc(&store).unwrap();
    assert!(fsck(&store).unwrap().ok());
    for p in fs::read_dir(store_path.join("packs")).unwrap().flatten() {
        let aside = t.path().join("aside");
        fs::rename(p.path(), &aside).unwrap();
        let needed = !fsck(&store).unwrap().ok();
        fs::rename(&aside, p.path()).unwrap();
        assert!(needed, "gc left an unneeded pack {}", p.path().display());
    }
    let dst2 = t.path().join("dst2");
    restore(&store, &s2.id, &dst2, 0, None).unwrap();
    assert_eq!(describe(&src, 0), describe(&dst2, 0));
}

#[test]
fn old_store_format_is_refused_clearly() {
    let t = tmp();
    let p = t.path().join("store");
    drop(Store::open_local(&p, None).unwrap());
    let cfg = br#"{"format":1,"chunk_min":262144,"chunk_avg":1048576,"chunk_max":4194304,"encrypted":false,"key_check":null}"#;
    fs::write(
        p.join("config"),
        crate::format::encode(crate::format::Kind::Config, None, cfg),
    )
    .unwrap();
    let e = Store::open_local(&p, None).unwrap_err().to_string();
    assert!(e.contains("format 1"), "{e}");
}

#[test]
fn bundles_line_up_again_after_an_inserted_file() {
    // Two copies of a tree of small files, one with an extra file early on: most bundles
    // are shared, so the second snapshot stores little.
    let t = tmp();
    let a = t.path().join("a");
    for i in 0..400 {
        let d = a.join(format!("d{:02}", i / 40));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i:03}")), pseudo_random(9_000, i as u64)).unwrap();
    }
    let b = t.path().join("b");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(&a)
        .arg(&b)
        .status()
        .unwrap()
        .success());
    fs::write(b.join("d00/f000a"), pseudo_random(9_000, 999)).unwrap();
    let store = Store::open_local(&t.path().join("store"), None).unwrap();
    let s1 = snapshot(&store, "a", &a, 0, None, None).unwrap();
    let s2 = snapshot(&store, "b", &b, 0, None, None).unwrap();
    assert!(
        s2.new_bytes * 2 < s1.new_bytes,
        "{} vs {}",
        s2.new_bytes,
        s1.new_bytes
    );
    let dst = t.path().join("dst");
    restore(&store, &s2.id, &dst, 0, None).unwrap();
    assert_eq!(describe(&b, 0), describe(&dst, 0));
}

fn info(id: &str, ws: &str, time: i64) -> SnapshotInfo {
    SnapshotInfo {
        id: id.into(),
        workspace: ws.into(),
        time,
        nanos: 0,
        parent: None,
        size: 0,
        files: 0,
        new_bytes: 0,
        tree: vec![],
        tree_len: 0,
    }
}

#[test]
fn retention_keeps_last_and_daily() {
    let day = 86_400;
    let snaps = vec![
        info("a1", "a", 10 * day + 100),
        info("a2", "a", 10 * day + 200),
        info("a3", "a", 11 * day + 100),
        info("a4", "a", 12 * day + 100),
        info("a5", "a", 12 * day + 200),
        info("a6", "a", 12 * day + 300),
        info("b1", "b", 1),
    ];
    let mut f = retention(
        &snaps,
        Retention {
            keep_last: 2,
            keep_daily: 2,
        },
    );
    f.sort();
    // keep a6,a5 (last 2), a6 (day 12), a3 (day 11); b1 is the newest of b.
    assert_eq!(f, vec!["a1", "a2", "a4"]);
    let mut f = retention(
        &snaps,
        Retention {
            keep_last: 0,
            keep_daily: 0,
        },
    );
    f.sort();
    assert_eq!(f, vec!["a1", "a2", "a3", "a4", "a5"]);
}

/// Snapshots of a workspace taken within one second: retention keeps the newest by the
/// sub-second time, and among records without one (older Hearth) by the parent chain, never
/// by the random id.
#[test]
fn same_second_snapshots_keep_their_order() {
    let at = |id: &str, nanos: u32, parent: Option<&str>| SnapshotInfo {
        nanos,
        parent: parent.map(str::to_string),
        ..info(id, "w", 5)
    };
    // Ids sort opposite to the order taken.
    let v = vec![at("b", 900, None), at("a", 100, None), at("z", 0, None)];
    let ids: Vec<String> = chronological(v.clone()).into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["z", "a", "b"]);
    let keep_one = Retention {
        keep_last: 1,
        keep_daily: 0,
    };
    let mut f = retention(&v, keep_one);
    f.sort();
    assert_eq!(f, ["a", "z"]);

    let legacy = vec![
        at("c", 0, Some("b")),
        at("a", 0, None),
        at("b", 0, Some("a")),
        SnapshotInfo {
            time: 1,
            ..at("y", 0, None)
        },
    ];
    let ids: Vec<String> = chronological(legacy.clone())
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["y", "a", "b", "c"]);
    let mut f = retention(&legacy, keep_one);
    f.sort();
    assert_eq!(f, ["a", "b", "y"]);
}

// ---- hostile snapshots ----

fn entry(path: &str, kind: Kind) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: (0, 0),
        xattrs: vec![],
        ino: 0,
        ctime: (0, 0),
    }
}

fn file_entry(store: &Store, path: &str, data: &[u8]) -> Entry {
    let r = put_chunk(store, data);
    entry(
        path,
        Kind::File {
            size: data.len() as u64,
            chunks: vec![r],
            start: 0,
        },
    )
}

/// Stores a hand-made tree as a snapshot, bypassing the walker.
fn craft(store: &Store, entries: Vec<Entry>) -> String {
    let bytes = tree::encode(&Tree {
        version: tree::TREE_VERSION,
        entries,
    });
    let r = put_chunk(store, &bytes);
    craft_record(store, vec![r], bytes.len() as u64)
}

fn craft_record(store: &Store, tree: Vec<ChunkRef>, tree_len: u64) -> String {
    let id = hex::encode(rand::random::<[u8; 16]>());
    let info = SnapshotInfo {
        id: id.clone(),
        workspace: "evil".into(),
        time: 0,
        nanos: 0,
        parent: None,
        size: 0,
        files: 0,
        new_bytes: 0,
        tree,
        tree_len,
    };
    store.put_record(&info).unwrap();
    id
}

#[test]
fn hostile_snapshots_write_nothing_outside_the_target() {
    let t = tmp();
    let store = Store::open_local(&t.path().join("store"), None).unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("existing"), b"keep me").unwrap();
    let root = || entry("", Kind::Dir);
    let ok_file = file_entry(&store, "a", b"payload");
    let mut cases: Vec<(&str, Vec<Entry>)> = vec![
        (
            "dotdot",
            vec![root(), file_entry(&store, "../outside/pwned", b"x")],
        ),
        (
            "nested dotdot",
            vec![
                root(),
                entry("d", Kind::Dir),
                file_entry(&store, "d/../../outside/pwned", b"x"),
            ],
        ),
        (
            "absolute",
            vec![
                root(),
                file_entry(&store, &format!("{}/pwned", outside.display()), b"x"),
            ],
        ),
        (
            "through symlink",
            vec![
                root(),
                entry(
                    "l",
                    Kind::Symlink {
                        target: outside.as_os_str().as_bytes().to_vec(),
                    },
                ),
                file_entry(&store, "l/pwned", b"x"),
            ],
        ),
        (
            "through relative symlink",
            vec![
                root(),
                entry(
                    "l",
                    Kind::Symlink {
                        target: b"../outside".to_vec(),
                    },
                ),
                entry("l/sub", Kind::Dir),
            ],
        ),
        (
            "duplicate",
            vec![root(), ok_file.clone(), file_entry(&store, "a", b"other")],
        ),
        (
            "dir then file",
            vec![root(), entry("a", Kind::Dir), ok_file.clone()],
        ),
        (
            "hardlink outside",
            vec![
                root(),
                entry(
                    "h",
                    Kind::Hardlink {
                        target: format!("{}/existing", outside.display()).into_bytes(),
                    },
                ),
            ],
        ),
        (
            "hardlink dotdot",
            vec![
                root(),
                entry(
                    "h",
                    Kind::Hardlink {
                        target: b"../outside/existing".to_vec(),
                    },
                ),
            ],
        ),
        (
            "hardlink to symlink",
            vec![
                root(),
                entry(
                    "l",
                    Kind::Symlink {
                        target: b"/etc/passwd".to_vec(),
                    },
                ),
                entry(
                    "h",
                    Kind::Hardlink {
                        target: b"l".to_vec(),
                    },
                ),
            ],
        ),
        (
            "size mismatch",
            vec![root(), {
                let mut e = ok_file.clone();
                e.kind = match e.kind {
                    Kind::File { chunks, .. } => Kind::File {
                        size: 1 << 60,
                        chunks,
                        start: 0,
                    },
                    k => k,
                };
                e
            }],
        ),
        (
            "owner out of range",
            vec![root(), {
                let mut e = ok_file.clone();
                e.uid = 70_000;
                e
            }],
        ),
        ("no root", vec![ok_file.clone()]),
        (
            "nul in name",
            vec![root(), file_entry(&store, "a\0b", b"x")],
        ),
        (
            "huge xattr",
            vec![root(), {
                let mut e = ok_file.clone();
                e.xattrs = vec![(b"user.x".to_vec(), vec![0; 70_000])];
                e
            }],
        ),
    ];
    cases.push(("orphan", vec![root(), file_entry(&store, "nodir/x", b"x")]));
    for (name, entries) in cases {
        let id = craft(&store, entries);
        let target = t.path().join(format!("target-{}", name.replace(' ', "-")));
        let res = restore(&store, &id, &target, 0, None);
        assert!(
            matches!(res, Err(SnapshotError::Invalid { .. })),
            "{name}: {res:?}"
        );
        let mut names: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("existing")],
            "{name} wrote outside"
        );
        assert_eq!(fs::read(outside.join("existing")).unwrap(), b"keep me");
        assert_eq!(
            fs::metadata(outside.join("existing")).unwrap().nlink(),
            1,
            "{name}"
        );
    }
    // Device nodes other than whiteouts are skipped, not created.
    let id = craft(
        &store,
        vec![
            root(),
            entry(
                "sda",
                Kind::BlockDev {
                    rdev: rustix::fs::makedev(8, 0),
                },
            ),
            entry(
                "null",
                Kind::CharDev {
                    rdev: rustix::fs::makedev(1, 3),
                },
            ),
        ],
    );
    let target = t.path().join("devs");
    restore(&store, &id, &target, 0, None).unwrap();
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
}

#[test]
fn restore_layer_refuses_symlinks_even_without_validation() {
    // Second line of defence: a tree that skipped validate() still cannot escape.
    let t = tmp();
    let store = Store::open_local(&t.path().join("store"), None).unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = t.path().join("target");
    fs::create_dir(&target).unwrap();
    symlink(&outside, target.join("l")).unwrap();
    let root = rustix::fs::open(
        &target,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
        Mode::empty(),
    )
    .unwrap();
    use std::os::fd::AsFd;
    let idx = index(&store);
    let r = crate::restore::Restorer::for_test(&store, &idx, root.as_fd(), &target);
    let e = file_entry(&store, "l/pwned", b"x");
    assert!(r.file_for_test(&e).is_err());
    let e = entry("l/dir", Kind::Dir);
    assert!(r.mkdir_for_test(&e).is_err());
    let e = entry("l", Kind::Fifo); // final component exists as a symlink: no follow, no overwrite
    assert!(r.other_for_test(&e).is_err());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn crafted_objects_cannot_force_huge_allocations() {
    let t = tmp();
    let store_path = t.path().join("store");
    let store = Store::open_local(&store_path, None).unwrap();
    // Tree length over the limit is refused before anything is fetched.
    let id = craft_record(&store, vec![], 1 << 40);
    assert!(matches!(
        restore(&store, &id, &t.path().join("a"), 0, None),
        Err(SnapshotError::Invalid { .. })
    ));
    // A tree claiming 2^62 entries fails to decode without allocating them.
    let mut bogus = vec![2u8]; // version 2 (varint)
    bogus.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
    let r = put_chunk(&store, &bogus);
    let id = craft_record(&store, vec![r], bogus.len() as u64);
    assert!(matches!(
        restore(&store, &id, &t.path().join("b"), 0, None),
        Err(SnapshotError::Invalid { .. })
    ));
    // An envelope declaring a 4 GiB plaintext is rejected by the header check.
    let mut obj = crate::format::encode(crate::format::Kind::Chunk, None, b"abc");
    obj[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(crate::format::decode("x", crate::format::Kind::Chunk, None, &obj).is_err());
    // An oversized object in the store is refused before it is read.
    let big = store_path.join("snapshots/0123456789abcdef0123456789abcdef");
    let f = fs::File::create(&big).unwrap();
    f.set_len(1 << 34).unwrap();
    assert!(matches!(
        store.get_record("0123456789abcdef0123456789abcdef"),
        Err(SnapshotError::Backend(BackendError::TooLarge { .. }))
    ));
    // Ids are never used as paths unless well-formed.
    assert!(matches!(
        restore(&store, "../config", &t.path().join("c"), 0, None),
        Err(SnapshotError::BadId(_))
    ));
}

#[test]
fn restore_refuses_non_empty_target() {
    let t = tmp();
    let (store, info, _) = small_store(t.path());
    let dst = t.path().join("dst");
    fs::create_dir(&dst).unwrap();
    fs::write(dst.join("x"), b"").unwrap();
    assert!(matches!(
        restore(&store, &info.id, &dst, 0, None),
        Err(SnapshotError::TargetNotEmpty(_))
    ));
}

mod s3;
