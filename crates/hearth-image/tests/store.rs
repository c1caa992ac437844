//! The store end to end: the three archive formats, sharing, verification, names, removal.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{sha256, tar_dir, tree, write_docker_archive, Layer};
use hearth_image::testutil::{
    layer_tar, write_oci_layout, write_oci_layout_with, LayerCompression,
};
use hearth_image::{ImageConfig, ImageError, ImageStore};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    store: ImageStore,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("images");
        let work = tmp.path().join("work");
        fs::create_dir(&work).unwrap();
        let store = ImageStore::open(&root).unwrap();
        Self {
            _tmp: tmp,
            root,
            work,
            store,
        }
    }

    fn load(
        &self,
        path: &Path,
        name: Option<&str>,
    ) -> Result<(hearth_image::Image, Vec<String>), ImageError> {
        let mut lines = Vec::new();
        let image = self
            .store
            .load(path, name, &mut |l| lines.push(l.to_string()))?;
        Ok((image, lines))
    }

    /// Everything under the store root except the always-present skeleton.
    fn contents(&self) -> Vec<String> {
        tree(&self.root)
            .into_iter()
            .filter(|p| {
                !matches!(
                    p.as_str(),
                    "blobs" | "blobs/sha256" | "layers" | "images" | "tmp" | "lock"
                )
            })
            .collect()
    }
}

fn config() -> ImageConfig {
    ImageConfig {
        env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
        working_dir: Some("/work".into()),
        user: Some("1000:1000".into()),
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["echo hi".into()],
    }
}

fn base_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("etc", 0o755).dir("bin", 0o755).dir("opt", 0o755);
    l.file("etc/hello", b"hello world\n", 0o644);
    l.owned_file("bin/su", b"#!su", 0o4755, 0, 0);
    l.owned_file("etc/owned", b"o", 0o600, 1000, 1000);
    l.file("opt/old", b"old", 0o644);
    l.symlink("bin/sh", "/bin/busybox");
    l.finish()
}

fn upper_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("etc", 0o755).dir("opt", 0o755);
    l.file("etc/.wh.hello", b"", 0o644);
    l.file("opt/.wh..wh..opq", b"", 0o644);
    l.file("opt/new", b"new", 0o644);
    l.finish()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn open_creates_private_dirs_and_clears_tmp() {
    let f = Fixture::new();
    for sub in ["", "blobs/sha256", "layers", "images", "tmp"] {
        assert_eq!(mode(&f.root.join(sub)), 0o700, "{sub}");
    }
    fs::create_dir(f.root.join("tmp/half-unpacked")).unwrap();
    fs::write(f.root.join("tmp/half-unpacked/file"), b"x").unwrap();
    fs::write(f.root.join("tmp/stray"), b"x").unwrap();
    drop(ImageStore::open(&f.root).unwrap());
    assert!(fs::read_dir(f.root.join("tmp")).unwrap().next().is_none());
}

#[test]
fn loads_oci_layout_dir() {
    let f = Fixture::new();
    let dir = f.work.join("layout");
    write_oci_layout(
        &dir,
        "example/app:1.0",
        &[base_layer(), upper_layer()],
        &config(),
    )
    .unwrap();
    let (image, lines) = f.load(&dir, None).unwrap();

    assert!(
        image.id.starts_with("sha256:") && image.id.len() == 71,
        "{}",
        image.id
    );
    assert_eq!(image.names, vec!["example/app:1.0".to_string()]);
    assert_eq!(image.config, config());
    assert_eq!(image.diff_ids.len(), 2);
    assert_eq!(image.size, (12 + 4 + 1 + 3 + 3) as u64);
    let t = &image.loaded_at;
    assert!(
        t.len() >= 20 && t.as_bytes()[10] == b'T' && t.ends_with('Z'),
        "{t}"
    );
    assert!(
        lines[0].starts_with("layer 1/2 sha256:") && lines[0].contains("unpacked ("),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("layer 2/2 sha256:"), "{lines:?}");

    let dirs = f.store.layer_dirs(&image);
    assert_eq!(dirs.len(), 2);
    let (base, upper) = (&dirs[0], &dirs[1]);
    assert_eq!(*base, f.root.join("layers").join(&image.diff_ids[0][7..]));
    assert_eq!(fs::read(base.join("etc/hello")).unwrap(), b"hello world\n");
    assert_eq!(mode(&base.join("bin/su")), 0o4755);
    let owned = fs::metadata(base.join("etc/owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1000, 0o600)
    );
    assert_eq!(
        fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );

    let wh = fs::symlink_metadata(upper.join("etc/hello")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(upper.join("opt"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
    assert_eq!(fs::read(upper.join("opt/new")).unwrap(), b"new");

    // Every blob is content-addressed: its name is its digest.
    for entry in fs::read_dir(f.root.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = fs::read(entry.path()).unwrap();
        assert_eq!(entry.file_name().to_str().unwrap(), sha256(&bytes));
    }
    assert_eq!(f.store.list().unwrap(), vec![image.clone()]);
    assert!(f
        .root
        .join("images")
        .join(format!("{}.json", &image.id[7..]))
        .is_file());
    assert!(fs::read_dir(f.root.join("tmp")).unwrap().next().is_none());
}

#[test]
fn loads_oci_archive_with_zstd_and_plain_layers() {
    let f = Fixture::new();
    for (i, compression) in [LayerCompression::Zstd, LayerCompression::None]
        .into_iter()
        .enumerate()
    {
        let dir = f.work.join(format!("layout{i}"));
        let layer = layer_tar(&[("data/file", format!("v{i}").as_bytes(), 0o644)]).unwrap();
        let id = write_oci_layout_with(&dir, "ignored", &[layer], &config(), compression).unwrap();
        let archive = f.work.join(format!("image{i}.tar"));
        tar_dir(&dir, &archive);
        let (image, _) = f.load(&archive, Some(&format!("my/img{i}"))).unwrap();
        assert_eq!(image.id, id);
        assert_eq!(image.names, vec![format!("my/img{i}:latest")]);
        let dirs = f.store.layer_dirs(&image);
        assert_eq!(
            fs::read(dirs[0].join("data/file")).unwrap(),
            format!("v{i}").as_bytes()
        );
        assert_eq!(f.store.get(&format!("my/img{i}")).unwrap().id, id);
    }
}

#[test]
fn loads_gzip_compressed_oci_archive() {
    let f = Fixture::new();
    let dir = f.work.join("layout");
    let layer = layer_tar(&[("f", b"gz", 0o644)]).unwrap();
    write_oci_layout(&dir, "gz:1", &[layer], &config()).unwrap();
    let plain = f.work.join("image.tar");
    tar_dir(&dir, &plain);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &fs::read(&plain).unwrap()).unwrap();
    let gz = f.work.join("image.tar.gz");
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    let (image, _) = f.load(&gz, None).unwrap();
    assert_eq!(image.names, vec!["gz:1".to_string()]);
}

#[test]
fn loads_docker_archive() {
    let f = Fixture::new();
    let archive = f.work.join("docker.tar");
    let id = write_docker_archive(
        &archive,
        &["busybox:latest", "busybox:1.36"],
        &[base_layer(), upper_layer()],
        &config(),
    );
    let (image, lines) = f.load(&archive, None).unwrap();
    assert_eq!(image.id, id);
    assert_eq!(
        image.names,
        vec!["busybox:1.36".to_string(), "busybox:latest".to_string()]
    );
    assert_eq!(image.config, config());
    assert_eq!(lines.len(), 3, "{lines:?}");
    let dirs = f.store.layer_dirs(&image);
    assert_eq!(
        fs::read(dirs[0].join("etc/hello")).unwrap(),
        b"hello world\n"
    );
    assert_eq!(f.store.get("busybox").unwrap().id, id);
    assert_eq!(f.store.get(&id).unwrap().id, id);
    assert_eq!(f.store.get(&id[7..19]).unwrap().id, id);
}

#[test]
fn rejects_what_is_not_an_image() {
    let f = Fixture::new();
    let dir = f.work.join("empty");
    fs::create_dir(&dir).unwrap();
    let err = f.load(&dir, None).unwrap_err();
    assert!(matches!(err, ImageError::Invalid { .. }), "{err}");
    let err = f.load(&f.work.join("missing.tar"), None).unwrap_err();
    assert!(err.to_string().contains("missing.tar"), "{err}");
    let junk = f.work.join("junk.tar");
    fs::write(&junk, vec![7u8; 2048]).unwrap();
    assert!(f.load(&junk, None).is_err());
    assert!(f.load(&dir, Some("bad name")).is_err());
    assert!(f.contents().is_empty(), "{:?}", f.contents());
}

#[test]
fn shared_layer_is_unpacked_once_and_kept_while_used() {
    let f = Fixture::new();
    let shared = layer_tar(&[("shared/file", b"s", 0o644)]).unwrap();
    let own = layer_tar(&[("own/file", b"o", 0o644)]).unwrap();
    let a_dir = f.work.join("a");
    let b_dir = f.work.join("b");
    write_oci_layout(&a_dir, "a", std::slice::from_ref(&shared), &config()).unwrap();
    let mut other = config();
    other.cmd = vec!["other".into()];
    write_oci_layout(&b_dir, "b", &[shared.clone(), own], &other).unwrap();

    let (a, _) = f.load(&a_dir, None).unwrap();
    let shared_dir = f.store.layer_dirs(&a)[0].clone();
    // A marker the unpacker would never write: it survives only if the layer is not redone.
    fs::write(shared_dir.join("marker"), b"m").unwrap();
    let (b, lines) = f.load(&b_dir, None).unwrap();
    assert!(lines[0].ends_with("already present"), "{lines:?}");
    assert!(lines[1].contains("unpacked"), "{lines:?}");
    assert_eq!(f.store.layer_dirs(&b)[0], shared_dir);
    assert!(shared_dir.join("marker").exists());
    assert_eq!(b.size, 2);

    let removed = f.store.remove("a").unwrap();
    assert_eq!(removed.id, a.id);
    assert!(
        shared_dir.join("shared/file").exists(),
        "b still uses the shared layer"
    );
    assert!(matches!(f.store.get("a"), Err(ImageError::NotFound(r)) if r == "a"));
    assert_eq!(f.store.list().unwrap().len(), 1);
    // b can still be loaded from its blobs' point of view: every blob b lists is there.
    f.store.remove(&b.id).unwrap();
    assert_eq!(f.contents(), vec!["names.json".to_string()]);
}

#[test]
fn blob_digest_mismatch_is_rejected_and_nothing_kept() {
    let f = Fixture::new();
    let dir = f.work.join("layout");
    let layer = layer_tar(&[("f", b"content", 0o644)]).unwrap();
    write_oci_layout(&dir, "bad", &[layer], &config()).unwrap();
    // Corrupt the layer blob (same size): the biggest blob is the gzip layer... find it by media
    // type through the manifest instead of guessing.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap()[7..].to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(&manifest_digest)).unwrap())
            .unwrap();
    let layer_hex = manifest["layers"][0]["digest"].as_str().unwrap()[7..].to_string();
    let blob_path = dir.join("blobs/sha256").join(&layer_hex);
    let mut bytes = fs::read(&blob_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob_path, &bytes).unwrap();

    let err = f.load(&dir, None).unwrap_err();
    match &err {
        ImageError::DigestMismatch { expected, .. } => {
            assert_eq!(*expected, format!("sha256:{layer_hex}"))
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(err.to_string().contains(&layer_hex), "{err}");
    assert!(f.contents().is_empty(), "{:?}", f.contents());
    assert!(f.store.list().unwrap().is_empty());

    // A truncated blob is a size mismatch.
    bytes.truncate(bytes.len() - 3);
    fs::write(&blob_path, &bytes).unwrap();
    assert!(matches!(
        f.load(&dir, None),
        Err(ImageError::SizeMismatch { .. })
    ));
    assert!(f.contents().is_empty(), "{:?}", f.contents());
}

#[test]
fn diff_id_mismatch_is_rejected_and_nothing_kept() {
    let f = Fixture::new();
    let archive = f.work.join("docker.tar");
    // A docker archive whose config promises a different layer than it ships.
    let real = layer_tar(&[("f", b"real", 0o644)]).unwrap();
    let promised = layer_tar(&[("f", b"fake", 0o644)]).unwrap();
    let diff_ids = vec![format!("sha256:{}", sha256(&promised))];
    let config_json = serde_json::to_vec(&hearth_image::testutil::config_document(
        &config(),
        &diff_ids,
    ))
    .unwrap();
    let config_hex = sha256(&config_json);
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    for (name, data) in [
        (format!("{config_hex}.json"), config_json.clone()),
        ("l/layer.tar".to_string(), real),
        (
            "manifest.json".to_string(),
            serde_json::to_vec(&serde_json::json!([{"Config": format!("{config_hex}.json"), "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}])).unwrap(),
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap();
    let err = f.load(&archive, None).unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { what, .. } if what == "layer diff_id"),
        "{err}"
    );
    assert!(f.contents().is_empty(), "{:?}", f.contents());
}

#[test]
fn hostile_layer_fails_the_load_cleanly() {
    let f = Fixture::new();
    let dir = f.work.join("layout");
    let mut l = Layer::new();
    l.file("fine", b"ok", 0o644)
        .file("../../escape", b"evil", 0o644);
    write_oci_layout(&dir, "evil", &[l.finish()], &config()).unwrap();
    let err = f.load(&dir, None).unwrap_err();
    assert!(err.to_string().contains("../../escape"), "{err}");
    assert!(f.contents().is_empty(), "{:?}", f.contents());
    assert!(!f.root.parent().unwrap().join("escape").exists());
}

#[test]
fn loading_a_name_again_repoints_it() {
    let f = Fixture::new();
    let layer = layer_tar(&[("f", b"1", 0o644)]).unwrap();
    let one = f.work.join("one");
    let two = f.work.join("two");
    write_oci_layout(&one, "app", std::slice::from_ref(&layer), &config()).unwrap();
    let mut c2 = config();
    c2.env.push("V=2".into());
    write_oci_layout(&two, "app", &[layer], &c2).unwrap();
    let (first, _) = f.load(&one, None).unwrap();
    assert_eq!(first.names, vec!["app:latest".to_string()]);
    let (second, _) = f.load(&two, None).unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(f.store.get("app").unwrap().id, second.id);
    assert!(f.store.get(&first.id).unwrap().names.is_empty());
    // Loading the same image again is idempotent.
    let (again, lines) = f.load(&two, Some("app:v2")).unwrap();
    assert_eq!(again.id, second.id);
    assert!(lines[0].ends_with("already present"), "{lines:?}");
    assert_eq!(
        again.names,
        vec!["app:latest".to_string(), "app:v2".to_string()]
    );
    assert_eq!(f.store.list().unwrap().len(), 2);
}

#[test]
fn get_by_prefix_and_errors() {
    let f = Fixture::new();
    let dir = f.work.join("layout");
    write_oci_layout(
        &dir,
        "p",
        &[layer_tar(&[("f", b"x", 0o644)]).unwrap()],
        &config(),
    )
    .unwrap();
    let (image, _) = f.load(&dir, None).unwrap();
    let hex = &image.id[7..];
    assert_eq!(f.store.get(&hex[..4]).unwrap().id, image.id);
    assert_eq!(f.store.get(hex).unwrap().id, image.id);
    assert_eq!(f.store.get("p:latest").unwrap().id, image.id);
    for missing in ["nope", &hex[..3], "sha256:1234", "zzzz"] {
        match f.store.get(missing) {
            Err(e @ ImageError::NotFound(_)) => assert!(e.to_string().contains(missing)),
            other => panic!("{missing}: {other:?}"),
        }
    }
    assert!(matches!(
        f.store.remove("nope"),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn picks_linux_amd64_from_a_multi_platform_index() {
    let f = Fixture::new();
    let amd = f.work.join("amd");
    let arm = f.work.join("arm");
    write_oci_layout(
        &amd,
        "x",
        &[layer_tar(&[("arch", b"amd64", 0o644)]).unwrap()],
        &config(),
    )
    .unwrap();
    write_oci_layout(
        &arm,
        "x",
        &[layer_tar(&[("arch", b"arm64", 0o644)]).unwrap()],
        &config(),
    )
    .unwrap();
    // Merge arm's blobs into amd's layout and put both manifests behind a nested index.
    for e in fs::read_dir(arm.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), amd.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    let desc = |dir: &Path| {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let mut d = index["manifests"][0].clone();
        d.as_object_mut().unwrap().remove("annotations");
        d
    };
    let mut arm_desc = desc(&arm);
    arm_desc["platform"] = serde_json::json!({"architecture": "arm64", "os": "linux"});
    let mut amd_desc = desc(&amd);
    amd_desc["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [arm_desc, amd_desc],
    }))
    .unwrap();
    let nested_hex = sha256(&nested);
    fs::write(amd.join("blobs/sha256").join(&nested_hex), &nested).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": format!("sha256:{nested_hex}"),
        "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi:1"},
    }]});
    fs::write(amd.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    let (image, _) = f.load(&amd, None).unwrap();
    assert_eq!(image.names, vec!["multi:1".to_string()]);
    let dirs = f.store.layer_dirs(&image);
    assert_eq!(fs::read(dirs[0].join("arch")).unwrap(), b"amd64");
}

#[test]
fn docker_archive_with_symlinked_repeated_layer() {
    let f = Fixture::new();
    let layer = layer_tar(&[("same", b"s", 0o644)]).unwrap();
    let diff = format!("sha256:{}", sha256(&layer));
    let config_json = serde_json::to_vec(&hearth_image::testutil::config_document(
        &config(),
        &[diff.clone(), diff.clone()],
    ))
    .unwrap();
    let config_hex = sha256(&config_json);
    let archive = f.work.join("docker.tar");
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": null,
        "Layers": ["first/layer.tar", "second/layer.tar"],
    }]))
    .unwrap();
    for (name, data) in [
        (format!("{config_hex}.json"), config_json),
        ("first/layer.tar".to_string(), layer),
        ("manifest.json".to_string(), manifest),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "second/layer.tar", "../first/layer.tar")
        .unwrap();
    b.into_inner().unwrap();

    let (image, lines) = f.load(&archive, None).unwrap();
    assert!(image.names.is_empty());
    assert_eq!(image.diff_ids, vec![diff.clone(), diff]);
    assert!(lines[1].ends_with("already present"), "{lines:?}");
    assert_eq!(f.store.get(&image.id[7..]).unwrap().id, image.id);
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn layers_work_as_overlay_lowerdirs() {
    let f = Fixture::new();
    let dir = f.work.join("layout");
    write_oci_layout(&dir, "ov", &[base_layer(), upper_layer()], &config()).unwrap();
    let (image, _) = f.load(&dir, None).unwrap();
    let mut lower = f.store.layer_dirs(&image);
    lower.reverse();
    let lowerdir = lower
        .iter()
        .map(|p| p.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let merged = f.work.join("merged");
    fs::create_dir(&merged).unwrap();
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        std::ffi::CString::new(format!("lowerdir={lowerdir}"))
            .unwrap()
            .as_c_str(),
    )
    .unwrap();
    let _mount = Mount(merged.clone());
    assert!(
        !merged.join("etc/hello").exists(),
        "whiteout hides the file"
    );
    assert_eq!(fs::read(merged.join("etc/owned")).unwrap(), b"o");
    assert!(
        !merged.join("opt/old").exists(),
        "opaque dir hides lower content"
    );
    assert_eq!(fs::read(merged.join("opt/new")).unwrap(), b"new");
}

#[test]
fn busybox_layer_loads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ImageStore>();
    let f = Fixture::new();
    let dir = f.work.join("bb");
    let layer = hearth_image::testutil::busybox_layer().unwrap();
    write_oci_layout(&dir, "busybox", &[layer], &ImageConfig::default()).unwrap();
    let (image, _) = f.load(&dir, None).unwrap();
    let root = &f.store.layer_dirs(&image)[0];
    assert_eq!(mode(&root.join("bin/busybox")), 0o755);
    assert_eq!(mode(&root.join("tmp")), 0o1777);
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
}

/// Runs a load on its own thread so a hang fails the test instead of stalling it.
fn load_within(f: &Fixture, path: &Path, secs: u64) -> ImageError {
    let (tx, rx) = std::sync::mpsc::channel();
    let root = f.root.clone();
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    // A second handle on the same store, so a hang holds its lock like the server's would.
    std::thread::spawn(move || {
        let store = ImageStore::open(&root).unwrap();
        let _ = tx.send(store.load(&path, None, &mut |_| {}).map(|_| ()));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(Err(e)) => e,
        Ok(Ok(())) => panic!("{shown} loaded as an image"),
        Err(_) => panic!("loading {shown} still hangs after {secs} s"),
    }
}

#[test]
fn fifos_and_devices_are_refused_at_once() {
    let f = Fixture::new();
    let fifo = f.work.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = load_within(&f, &fifo, 10);
    assert!(matches!(err, ImageError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("it is a fifo"), "{err}");
    // Through a symlink too.
    let link = f.work.join("link.tar");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let err = load_within(&f, &link, 10);
    assert!(err.to_string().contains("it is a fifo"), "{err}");

    let err = load_within(&f, Path::new("/dev/zero"), 10);
    assert!(err.to_string().contains("character device"), "{err}");

    // A fifo inside an OCI layout directory, where a blob should be.
    let dir = f.work.join("layout");
    write_oci_layout(
        &dir,
        "t:1",
        &[layer_tar(&[("a", b"1", 0o644)]).unwrap()],
        &ImageConfig::default(),
    )
    .unwrap();
    let blobs = dir.join("blobs/sha256");
    let victim = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::metadata(p).unwrap().len() > 100)
        .unwrap();
    fs::remove_file(&victim).unwrap();
    nix::unistd::mkfifo(&victim, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = load_within(&f, &dir, 10);
    assert!(err.to_string().contains("fifo"), "{err}");
    assert!(f.contents().is_empty(), "{:?}", f.contents());
    // The store's lock was let go: a real image loads.
    let good = f.work.join("good");
    write_oci_layout(
        &good,
        "t:1",
        &[layer_tar(&[("a", b"1", 0o644)]).unwrap()],
        &ImageConfig::default(),
    )
    .unwrap();
    f.load(&good, None).unwrap();
}

/// No byte run of `secret` longer than `n` appears in `msg`.
fn assert_not_echoed(msg: &str, secret: &[u8], n: usize) {
    for w in secret.windows(n) {
        let w = String::from_utf8_lossy(w);
        assert!(!msg.contains(w.as_ref()), "error echoes {w:?}: {msg}");
    }
}

#[test]
fn errors_never_quote_the_file() {
    let f = Fixture::new();
    let passwd = fs::read("/etc/passwd").unwrap();
    let err = load_within(&f, Path::new("/etc/passwd"), 10).to_string();
    assert!(err.contains("/etc/passwd"), "{err}");
    assert_not_echoed(&err, &passwd, 8);

    // Text that reaches the tar header parser's numeric fields.
    let secret: Vec<u8> = b"TOPSECRET-0123456789-".repeat(40);
    let file = f.work.join("secret.tar");
    fs::write(&file, &secret).unwrap();
    let err = load_within(&f, &file, 10).to_string();
    assert_not_echoed(&err, &secret, 8);

    // JSON documents whose values serde would quote.
    let dir = f.work.join("json");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("index.json"), br#""TOPSECRET-JSON-VALUE""#).unwrap();
    let err = load_within(&f, &dir, 10).to_string();
    assert!(err.contains("index.json"), "{err}");
    assert_not_echoed(&err, b"TOPSECRET-JSON-VALUE", 8);
    fs::write(dir.join("index.json"), br#"{"schemaVersion": "TOPSECRET"}"#).unwrap();
    let err = load_within(&f, &dir, 10).to_string();
    assert_not_echoed(&err, b"TOPSECRET", 6);
    assert!(f.contents().is_empty(), "{:?}", f.contents());
}

/// An export is an oci-archive another store loads as the same image (same layers, same
/// settings), whether the layers were stored gzip-compressed (an OCI layout, a pull) or as
/// plain tars (a docker archive). A config without a history entry per layer (which
/// buildah refuses to build on) gets one, so its id changes once; one that has it keeps it.
#[test]
fn exported_images_load_elsewhere_as_the_same_image() {
    let f = Fixture::new();
    let oci = f.work.join("oci");
    write_oci_layout(&oci, "a:1", &[base_layer(), upper_layer()], &config()).unwrap();
    let docker = f.work.join("docker.tar");
    let mut other = config();
    other.cmd = vec!["other".into()];
    write_docker_archive(&docker, &["b:1"], &[base_layer()], &other);
    let (a, _) = f.load(&oci, None).unwrap();
    let (b, _) = f.load(&docker, None).unwrap();

    let export = |from: &Fixture, reference: &str, name: Option<&str>, to: &Fixture| {
        let out = from.work.join(format!("{reference}.export.tar"));
        let mut file = fs::File::create(&out).unwrap();
        from.store
            .export_oci_archive(reference, name, &mut file)
            .unwrap();
        to.load(&out, None).unwrap().0
    };
    let g = Fixture::new();
    for (image, name) in [(&a, "a:1"), (&b, "b:1")] {
        let again = export(&f, name, None, &g);
        assert_ne!(again.id, image.id, "{name}: history added");
        assert_eq!(
            again.names,
            vec![name.to_string()],
            "the name travels with it"
        );
        assert_eq!(again.diff_ids, image.diff_ids);
        assert_eq!(again.config, image.config);
        let h = Fixture::new();
        let third = export(&g, name, Some("given:2"), &h);
        assert_eq!(
            third.id, again.id,
            "{name}: a full history is kept as it is"
        );
        assert_eq!(third.names, vec!["given:2".to_string()]);
    }
    let a_again = g.store.get("a:1").unwrap();
    let top = &g.store.layer_dirs(&a_again)[0];
    assert_eq!(fs::read(top.join("etc/hello")).unwrap(), b"hello world\n");
    assert!(matches!(
        f.store.export_oci_archive("missing", None, &mut Vec::new()),
        Err(ImageError::NotFound(_))
    ));
}
