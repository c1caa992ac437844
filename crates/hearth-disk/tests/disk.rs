//! Real loop devices and btrfs (root required).

use std::path::{Path, PathBuf};

use hearth_disk::{
    create, create_subvolume, delete_subvolume, is_subvolume, mount, snapshot_readonly, usage,
};

/// Unmounts on drop, even when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn loops_backed_by(image: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .map(|s| Path::new(s.trim()) == image)
                .unwrap_or(false)
        })
        .count()
}

/// The writeback device (`/sys/fs/btrfs/<fsid>/bdi`) of the btrfs on `image`'s loop device.
fn bdi_of(image: &Path) -> PathBuf {
    let loop_name = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .map(|s| Path::new(s.trim()) == image)
                .unwrap_or(false)
        })
        .map(|e| e.file_name())
        .expect("loop device of the image");
    std::fs::read_dir("/sys/fs/btrfs")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|fs| fs.join("devices").join(&loop_name).exists())
        .map(|fs| fs.join("bdi"))
        .expect("btrfs of the loop device")
}

#[test]
fn disk_limits_writes_snapshots_are_frozen_and_unmount_frees_the_loop() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    let mnt = t.path().join("disk");
    std::fs::create_dir(&mnt).unwrap();
    create(&img, 300 << 20).unwrap();
    assert!(
        create(&img, 300 << 20).is_err(),
        "never overwrites an image"
    );
    // Sparse: the file takes far less than its size.
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&img).unwrap();
    assert_eq!(md.len(), 300 << 20);
    assert!(md.blocks() * 512 < 64 << 20, "image is not sparse");

    mount(&img, &mnt).unwrap();
    let guard = Mounted(mnt.clone());
    assert_eq!(loops_backed_by(&img), 1);
    // Its dirty page cache is bounded (the node's disk reserve counts on it).
    let bdi = bdi_of(&img);
    let read = |f: &str| std::fs::read_to_string(bdi.join(f)).unwrap();
    let max: u64 = read("max_bytes").trim().parse().unwrap();
    // The kernel stores the cap as a ratio of the global dirty limit (parts per million),
    // which moves with free memory, so reading it back lands within a few KiB of the value.
    let tolerance = 1 << 20;
    assert!(
        max.abs_diff(hearth_disk::DIRTY_MAX) < tolerance,
        "max_bytes {max}, set {}",
        hearth_disk::DIRTY_MAX
    );
    assert_eq!(read("strict_limit").trim(), "1");
    create_subvolume(&mnt, "upper").unwrap();
    let upper = mnt.join("upper");
    assert!(is_subvolume(&upper));
    assert!(!is_subvolume(t.path()));
    std::fs::write(upper.join("f"), "one").unwrap();

    snapshot_readonly(&upper, &mnt, ".snap").unwrap();
    std::fs::write(upper.join("f"), "two").unwrap();
    let snap = mnt.join(".snap");
    assert_eq!(std::fs::read_to_string(snap.join("f")).unwrap(), "one");
    assert!(
        std::fs::write(snap.join("g"), "x").is_err(),
        "snapshot is read-only"
    );
    assert!(snapshot_readonly(&upper, &mnt, "../escape").is_err());
    delete_subvolume(&mnt, ".snap").unwrap();
    assert!(!snap.exists());
    delete_subvolume(&mnt, ".snap").unwrap();

    // The limit: a writer gets ENOSPC near the image size, not the host's free space.
    let before = usage(&mnt).unwrap();
    assert!(
        before.size <= 300 << 20 && before.size > 200 << 20,
        "{before:?}"
    );
    let mut f = std::fs::File::create(upper.join("fill")).unwrap();
    let buf = vec![0x5a_u8; 1 << 20];
    let mut written = 0u64;
    let err = loop {
        use std::io::Write;
        match f.write_all(&buf).and_then(|()| f.sync_data()) {
            Ok(()) => written += buf.len() as u64,
            Err(e) => break e,
        }
        assert!(written < 400 << 20, "wrote past the disk size");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(written > 100 << 20, "only {written} bytes fit");
    drop(f);
    // What the file holds (a write cut short at ENOSPC may have added part of a buffer).
    let held = std::fs::metadata(upper.join("fill")).unwrap().len();

    // Grown while mounted and full: the same file takes 300 MiB more, what it held stays.
    assert!(matches!(
        hearth_disk::grow(&img, &mnt, 280 << 20),
        Err(hearth_disk::DiskError::Shrink { .. })
    ));
    hearth_disk::grow(&img, &mnt, 600 << 20).unwrap();
    let grown = usage(&mnt).unwrap();
    assert!(grown.size > before.size + (250 << 20), "{grown:?}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 600 << 20);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(upper.join("fill"))
        .unwrap();
    {
        use std::io::Write;
        for _ in 0..200 {
            f.write_all(&buf).unwrap();
        }
        f.sync_data().unwrap();
    }
    assert_eq!(
        std::fs::metadata(upper.join("fill")).unwrap().len(),
        held + (200 << 20)
    );
    drop(f);
    // A crash after extending the file but before the resize: growing to that size again
    // finishes the job.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(700 << 20)
        .unwrap();
    let before_retry = usage(&mnt).unwrap().size;
    hearth_disk::grow(&img, &mnt, 700 << 20).unwrap();
    let after_retry = usage(&mnt).unwrap().size;
    assert!(
        after_retry > before_retry + (80 << 20),
        "{before_retry} -> {after_retry}"
    );
    std::fs::remove_file(upper.join("fill")).unwrap();

    drop(guard);
    assert_eq!(loops_backed_by(&img), 0, "unmount released the loop device");
}

#[test]
fn max_file_size_is_what_the_filesystem_takes() {
    let dir = tempfile::tempdir().unwrap();
    let max = hearth_disk::max_file_size(dir.path()).unwrap();
    assert!(max >= 1 << 30, "{max}");
    let f = std::fs::File::create(dir.path().join("f")).unwrap();
    f.set_len(max).unwrap();
    if max < i64::MAX as u64 {
        let err = f.set_len(max + 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    }
    // Nothing was left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
