//! Hostile layers: nothing may appear outside the layer directory, and errors name the entry.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{tree, Layer};
use hearth_image::unpack::unpack_layer;
use hearth_image::ImageError;
use tar::EntryType;

/// `base/layer` is where layers unpack; `base/outside` is a sentinel tree that must stay as is.
struct Sandbox {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    layer: PathBuf,
    outside: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let layer = base.join("layer");
        let outside = base.join("outside");
        fs::create_dir(&layer).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("target"), b"original").unwrap();
        Self {
            _tmp: tmp,
            base,
            layer,
            outside,
        }
    }

    fn unpack(&self, tar: Vec<u8>) -> Result<hearth_image::unpack::UnpackStats, ImageError> {
        unpack_layer(tar.as_slice(), &self.layer, "sha256:test")
    }

    /// The sentinel tree is untouched and nothing but `layer` and `outside` sits in base.
    fn assert_outside_untouched(&self) {
        assert_eq!(
            tree(&self.base)
                .into_iter()
                .filter(|p| !p.starts_with("layer"))
                .collect::<Vec<_>>(),
            vec!["outside".to_string(), "outside/target".to_string()]
        );
        assert_eq!(fs::read(self.outside.join("target")).unwrap(), b"original");
    }
}

fn entry_error(err: ImageError) -> (String, String) {
    match err {
        ImageError::Entry { entry, reason, .. } => (entry, reason),
        other => panic!("expected an entry error, got {other}"),
    }
}

#[test]
fn dotdot_path_is_refused_and_named() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.file("ok", b"fine", 0o644)
        .file("../escape", b"evil", 0o644);
    let err = sb.unpack(l.finish()).unwrap_err();
    let msg = err.to_string();
    let (entry, reason) = entry_error(err);
    assert_eq!(entry, "../escape");
    assert!(reason.contains(".."), "{reason}");
    assert!(msg.contains("../escape"), "{msg}");
    sb.assert_outside_untouched();
}

#[test]
fn absolute_paths_are_made_relative() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.dir("/etc/", 0o755)
        .file("/etc/hosts", b"h", 0o644)
        .file("./usr/x", b"x", 0o600);
    sb.unpack(l.finish()).unwrap();
    assert_eq!(fs::read(sb.layer.join("etc/hosts")).unwrap(), b"h");
    assert_eq!(fs::read(sb.layer.join("usr/x")).unwrap(), b"x");
    sb.assert_outside_untouched();
}

#[test]
fn symlinked_dir_cannot_redirect_writes_outside() {
    let sb = Sandbox::new();
    let outside = sb.outside.to_str().unwrap().to_string();
    let mut l = Layer::new();
    l.symlink("etc", &outside).file("etc/evil", b"evil", 0o644);
    let (entry, reason) = entry_error(sb.unpack(l.finish()).unwrap_err());
    assert_eq!(entry, "etc/evil");
    assert!(reason.contains("parent directory"), "{reason}");
    sb.assert_outside_untouched();
}

#[test]
fn relative_symlink_escape_is_clamped_to_the_layer() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    // `up` climbs past the layer root; RESOLVE_IN_ROOT clamps it at the root.
    l.symlink("up", "../../../..")
        .dir("real", 0o755)
        .symlink("abs", "/real");
    l.file("up/escaped", b"e", 0o644)
        .file("abs/inside", b"i", 0o644);
    sb.unpack(l.finish()).unwrap();
    assert_eq!(fs::read(sb.layer.join("escaped")).unwrap(), b"e");
    assert_eq!(fs::read(sb.layer.join("real/inside")).unwrap(), b"i");
    assert!(!sb.base.join("escaped").exists());
    sb.assert_outside_untouched();
}

#[test]
fn hardlink_to_host_file_is_refused() {
    let sb = Sandbox::new();
    let target = sb.outside.join("target");
    let links_before = fs::metadata(&target).unwrap().nlink();
    let mut l = Layer::new();
    l.hardlink("passwd", target.to_str().unwrap());
    let (entry, reason) = entry_error(sb.unpack(l.finish()).unwrap_err());
    assert_eq!(entry, "passwd");
    assert!(reason.contains("inside the layer"), "{reason}");
    assert_eq!(fs::metadata(&target).unwrap().nlink(), links_before);
    assert!(!sb.layer.join("passwd").exists());
    sb.assert_outside_untouched();

    let sb = Sandbox::new();
    let passwd_links = fs::metadata("/etc/passwd").unwrap().nlink();
    let mut l = Layer::new();
    l.hardlink("p", "/etc/passwd");
    let (_, reason) = entry_error(sb.unpack(l.finish()).unwrap_err());
    assert!(reason.contains("/etc/passwd"), "{reason}");
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), passwd_links);
    sb.assert_outside_untouched();
}

#[test]
fn hardlink_with_dotdot_is_refused() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.hardlink("x", "../outside/target");
    let (entry, reason) = entry_error(sb.unpack(l.finish()).unwrap_err());
    assert_eq!(entry, "x");
    assert!(reason.contains("'..'"), "{reason}");
    assert_eq!(fs::metadata(sb.outside.join("target")).unwrap().nlink(), 1);
    sb.assert_outside_untouched();
}

#[test]
fn hardlink_through_symlink_to_outside_is_refused() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.symlink("out", sb.outside.to_str().unwrap())
        .hardlink("x", "out/target");
    let (entry, _) = entry_error(sb.unpack(l.finish()).unwrap_err());
    assert_eq!(entry, "x");
    assert_eq!(fs::metadata(sb.outside.join("target")).unwrap().nlink(), 1);
    sb.assert_outside_untouched();
}

#[test]
fn hardlink_inside_layer_works_and_links_symlinks_themselves() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.file("a", b"data", 0o644).hardlink("b", "a");
    l.symlink("s", sb.outside.join("target").to_str().unwrap())
        .hardlink("s2", "s");
    sb.unpack(l.finish()).unwrap();
    let a = fs::metadata(sb.layer.join("a")).unwrap();
    let b = fs::metadata(sb.layer.join("b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    let s2 = fs::symlink_metadata(sb.layer.join("s2")).unwrap();
    assert!(s2.file_type().is_symlink());
    assert_eq!(fs::metadata(sb.outside.join("target")).unwrap().nlink(), 1);
    sb.assert_outside_untouched();
}

#[test]
fn file_replacing_symlink_does_not_write_through_it() {
    let sb = Sandbox::new();
    let target = sb.outside.join("target");
    let missing = sb.outside.join("created");
    let mut l = Layer::new();
    l.symlink("foo", target.to_str().unwrap())
        .file("foo", b"new", 0o644);
    l.symlink("bar", missing.to_str().unwrap())
        .file("bar", b"new", 0o644);
    sb.unpack(l.finish()).unwrap();
    for name in ["foo", "bar"] {
        let m = fs::symlink_metadata(sb.layer.join(name)).unwrap();
        assert!(m.file_type().is_file(), "{name} should be a regular file");
        assert_eq!(fs::read(sb.layer.join(name)).unwrap(), b"new");
    }
    sb.assert_outside_untouched();
}

#[test]
fn device_nodes_are_skipped() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.dir("dev", 0o755);
    l.raw("dev/sda", EntryType::Block, "", b"", 0o660, 0, 0, None);
    l.raw("dev/mem", EntryType::Char, "", b"", 0o660, 0, 0, None);
    l.raw("pipe", EntryType::Fifo, "", b"", 0o640, 5, 6, None);
    l.file("after", b"still here", 0o644);
    sb.unpack(l.finish()).unwrap();
    assert!(!sb.layer.join("dev/sda").exists());
    assert!(!sb.layer.join("dev/mem").exists());
    let pipe = fs::symlink_metadata(sb.layer.join("pipe")).unwrap();
    assert!(pipe.file_type().is_fifo());
    assert_eq!(
        (pipe.uid(), pipe.gid(), pipe.mode() & 0o7777),
        (5, 6, 0o640)
    );
    assert_eq!(fs::read(sb.layer.join("after")).unwrap(), b"still here");
    sb.assert_outside_untouched();
}

#[test]
fn absurd_size_is_bounded_by_the_stream() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.raw(
        "big",
        EntryType::Regular,
        "",
        b"tiny",
        0o644,
        0,
        0,
        Some(1 << 40),
    );
    let err = sb.unpack(l.finish()).unwrap_err();
    assert!(err.to_string().contains("big"), "{err}");
    let written = fs::metadata(sb.layer.join("big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 4096, "wrote {written} bytes");
    sb.assert_outside_untouched();
}

#[test]
fn overlong_path_is_refused() {
    let sb = Sandbox::new();
    let long: String = std::iter::repeat_n("d".repeat(200), 25)
        .collect::<Vec<_>>()
        .join("/");
    assert!(long.len() > 4096);
    let mut l = Layer::new();
    l.long_file(&long, b"x");
    let (_, reason) = entry_error(sb.unpack(l.finish()).unwrap_err());
    assert!(reason.contains("4096"), "{reason}");
    assert!(tree(&sb.layer).is_empty());
}

#[test]
fn owners_modes_xattrs_and_whiteouts() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.dir("./", 0o755).dir("bin", 0o755).dir("opt", 0o700);
    l.owned_file("bin/su", b"su", 0o4755, 0, 0);
    l.owned_file("home-file", b"h", 0o640, 1000, 1001);
    l.pax(&[
        ("SCHILY.xattr.user.note", b"hi"),
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ("SCHILY.xattr.security.selinux", b"x"),
        ("uid", b"70000"),
    ]);
    l.file("tagged", b"t", 0o600);
    l.file(".wh.gone", b"", 0o644)
        .file("opt/.wh..wh..opq", b"", 0o644);
    sb.unpack(l.finish()).unwrap();

    let su = fs::metadata(sb.layer.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    let hf = fs::metadata(sb.layer.join("home-file")).unwrap();
    assert_eq!(
        (hf.uid(), hf.gid(), hf.mode() & 0o7777),
        (1000, 1001, 0o640)
    );
    let tagged = fs::metadata(sb.layer.join("tagged")).unwrap();
    assert_eq!(tagged.uid(), 70000, "pax uid overrides the header");
    assert_eq!(tagged.mtime(), 1_600_000_000);
    assert_eq!(
        xattr(&sb.layer.join("tagged"), "user.note").as_deref(),
        Some(&b"hi"[..])
    );
    assert_eq!(
        xattr(&sb.layer.join("tagged"), "trusted.overlay.redirect"),
        None
    );
    assert_eq!(xattr(&sb.layer.join("tagged"), "security.selinux"), None);

    let wh = fs::symlink_metadata(sb.layer.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!sb.layer.join(".wh.gone").exists());
    assert_eq!(
        xattr(&sb.layer.join("opt"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!sb.layer.join("opt/.wh..wh..opq").exists());
    assert_eq!(
        fs::metadata(sb.layer.join("opt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    sb.assert_outside_untouched();
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}
