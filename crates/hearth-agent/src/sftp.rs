//! `hearth-agent sftp-server`: an SFTP (version 3) server on stdin/stdout.
//!
//! The SSH gateway runs it inside the workspace through the ordinary exec path for the
//! `sftp` subsystem (modern `scp` uses it too), so every file operation happens in the
//! workspace's namespaces as the session's user, and images need no sftp-server of their
//! own. Packets are encoded and decoded by `russh-sftp`'s protocol types; requests are
//! answered one at a time, in order.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, Data, File as NameEntry, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};

/// Largest packet accepted; OpenSSH's own limit (requests carry at most 256 KiB of data).
const MAX_PACKET: usize = 256 * 1024 + 1024;
/// Largest read answered at once (clients ask for 32-256 KiB).
const MAX_READ: u32 = 256 * 1024;
/// Open handles per session, so a client cannot exhaust the workspace's file table.
const MAX_HANDLES: usize = 512;
/// Directory entries per READDIR answer.
const DIR_BATCH: usize = 128;

enum Open {
    File(File),
    Dir {
        path: PathBuf,
        /// `None` once the listing is over.
        iter: Option<fs::ReadDir>,
        dots_sent: bool,
    },
}

struct Server {
    handles: HashMap<String, Open>,
    next_handle: u64,
}

/// Serves until the client closes stdin.
pub fn serve() -> Result<(), String> {
    // Relative paths are relative to the home directory, as with OpenSSH.
    if let Some(home) = std::env::var_os("HOME") {
        let _ = std::env::set_current_dir(home);
    }
    let mut input = BufReader::with_capacity(MAX_PACKET, io::stdin().lock());
    let mut output = BufWriter::with_capacity(MAX_PACKET, io::stdout().lock());
    let mut server = Server {
        handles: HashMap::new(),
        next_handle: 0,
    };
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("sftp: read: {e}")),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(format!("sftp: packet of {len} bytes refused"));
        }
        let mut buf = vec![0u8; len];
        input
            .read_exact(&mut buf)
            .map_err(|e| format!("sftp: read: {e}"))?;
        let mut bytes = Bytes::from(buf);
        let reply = match Packet::try_from(&mut bytes) {
            Ok(p) => server.handle(p),
            // The request id is the first field after the type byte when there is one.
            Err(e) => {
                let id = if len >= 5 {
                    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
                } else {
                    0
                };
                status(id, StatusCode::BadMessage, &format!("bad request: {e}"))
            }
        };
        let out: Bytes = reply
            .try_into()
            .map_err(|e| format!("sftp: encode reply: {e}"))?;
        output
            .write_all(&out)
            .and_then(|_| {
                // Flush only when no further request is already buffered, so pipelined
                // requests are answered in one write.
                if input.buffer().is_empty() {
                    output.flush()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| format!("sftp: write: {e}"))?;
    }
}

fn status(id: u32, code: StatusCode, msg: &str) -> Packet {
    Packet::Status(Status {
        id,
        status_code: code,
        error_message: msg.to_string(),
        language_tag: "en-US".into(),
    })
}

fn ok(id: u32) -> Packet {
    status(id, StatusCode::Ok, "ok")
}

fn io_status(id: u32, e: &io::Error) -> Packet {
    let code = match e.kind() {
        io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        io::ErrorKind::Unsupported => StatusCode::OpUnsupported,
        _ => StatusCode::Failure,
    };
    status(id, code, &e.to_string())
}

fn attrs_of(md: &fs::Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(md.len()),
        uid: Some(md.uid()),
        gid: Some(md.gid()),
        permissions: Some(md.mode()),
        // SFTP v3 times are 32 bits.
        atime: Some(md.atime().clamp(0, u32::MAX as i64) as u32),
        mtime: Some(md.mtime().clamp(0, u32::MAX as i64) as u32),
        ..Default::default()
    }
}

/// `ls -l` style line some clients show verbatim (`sftp`'s `ls -l`).
fn longname(name: &str, md: &fs::Metadata) -> String {
    let mode = md.mode();
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    let mut perms = String::with_capacity(9);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        perms.push(if mode & (0o400 >> i) != 0 { c } else { '-' });
    }
    format!(
        "{kind}{perms} {:>3} {:<8} {:<8} {:>10} {} {name}",
        md.nlink(),
        md.uid(),
        md.gid(),
        md.len(),
        ls_date(md.mtime())
    )
}

/// `Mon DD  YYYY` of a unix time, in UTC (the agent has no time zone data).
fn ls_date(t: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // Days to civil date (Howard Hinnant's algorithm).
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{} {day:>2} {year:>5}", MONTHS[(month - 1) as usize])
}

/// Absolute form of `p` without touching the filesystem (for paths that do not exist).
fn lexical_abs(p: &Path) -> PathBuf {
    let base = if p.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
    };
    let mut out = base;
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Reads an SSH string (u32 length + bytes) from the front of `data`.
fn take_string(data: &mut &[u8]) -> Option<String> {
    if data.len() < 4 {
        return None;
    }
    let n = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let s = data.get(4..4 + n)?;
    let out = String::from_utf8(s.to_vec()).ok()?;
    *data = &data[4 + n..];
    Some(out)
}

/// Applies the attributes a client set (size, mode, owner, times) to `path`.
fn set_attrs(path: &Path, file: Option<&File>, a: &FileAttributes) -> io::Result<()> {
    if let Some(size) = a.size {
        match file {
            Some(f) => f.set_len(size)?,
            None => OpenOptions::new().write(true).open(path)?.set_len(size)?,
        }
    }
    if let Some(mode) = a.permissions {
        let perms = fs::Permissions::from_mode(mode & 0o7777);
        match file {
            Some(f) => f.set_permissions(perms)?,
            None => fs::set_permissions(path, perms)?,
        }
    }
    if a.uid.is_some() || a.gid.is_some() {
        match file {
            Some(f) => std::os::unix::fs::fchown(f, a.uid, a.gid)?,
            None => std::os::unix::fs::chown(path, a.uid, a.gid)?,
        }
    }
    if let (Some(at), Some(mt)) = (a.atime, a.mtime) {
        let t = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.into());
        let times = fs::FileTimes::new().set_accessed(t(at)).set_modified(t(mt));
        match file {
            Some(f) => f.set_times(times)?,
            None => File::options().write(true).open(path)?.set_times(times)?,
        }
    }
    Ok(())
}

impl Server {
    fn add(&mut self, id: u32, h: Open) -> Packet {
        if self.handles.len() >= MAX_HANDLES {
            return status(id, StatusCode::Failure, "too many open handles");
        }
        self.next_handle += 1;
        let name = self.next_handle.to_string();
        self.handles.insert(name.clone(), h);
        Packet::Handle(Handle { id, handle: name })
    }

    fn file(&self, handle: &str) -> Option<&File> {
        match self.handles.get(handle) {
            Some(Open::File(f)) => Some(f),
            _ => None,
        }
    }

    fn handle(&mut self, p: Packet) -> Packet {
        let id = p.get_request_id();
        let bad_handle = |id| status(id, StatusCode::Failure, "no such handle");
        match p {
            Packet::Init(_) => Packet::Version(Version {
                version: russh_sftp::protocol::VERSION,
                extensions: [
                    ("posix-rename@openssh.com", "1"),
                    ("hardlink@openssh.com", "1"),
                    ("fsync@openssh.com", "1"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            }),
            Packet::Open(o) => {
                let f = o.pflags;
                let mut opts = OpenOptions::new();
                opts.read(f.contains(OpenFlags::READ))
                    .write(f.contains(OpenFlags::WRITE))
                    .append(f.contains(OpenFlags::APPEND));
                if f.contains(OpenFlags::CREATE) {
                    if f.contains(OpenFlags::EXCLUDE) {
                        opts.create_new(true);
                    } else {
                        opts.create(true);
                    }
                    opts.mode(o.attrs.permissions.map_or(0o666, |m| m & 0o7777));
                }
                if f.contains(OpenFlags::TRUNCATE) {
                    opts.truncate(true);
                }
                match opts.open(&o.filename) {
                    Ok(file) => self.add(id, Open::File(file)),
                    Err(e) => io_status(id, &e),
                }
            }
            Packet::Close(c) => match self.handles.remove(&c.handle) {
                Some(_) => ok(id),
                None => bad_handle(id),
            },
            Packet::Read(r) => {
                let Some(f) = self.file(&r.handle) else {
                    return bad_handle(id);
                };
                let mut buf = vec![0u8; r.len.min(MAX_READ) as usize];
                let mut got = 0;
                // Fill the answer unless the file ends: clients treat a short read as data.
                while got < buf.len() {
                    match f.read_at(&mut buf[got..], r.offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return io_status(id, &e),
                    }
                }
                if got == 0 && !buf.is_empty() {
                    return status(id, StatusCode::Eof, "end of file");
                }
                buf.truncate(got);
                Packet::Data(Data { id, data: buf })
            }
            Packet::Write(w) => {
                let Some(f) = self.file(&w.handle) else {
                    return bad_handle(id);
                };
                match f.write_all_at(&w.data, w.offset) {
                    Ok(()) => ok(id),
                    Err(e) => io_status(id, &e),
                }
            }
            Packet::Lstat(s) => match fs::symlink_metadata(&s.path) {
                Ok(md) => Packet::Attrs(Attrs {
                    id,
                    attrs: attrs_of(&md),
                }),
                Err(e) => io_status(id, &e),
            },
            Packet::Stat(s) => match fs::metadata(&s.path) {
                Ok(md) => Packet::Attrs(Attrs {
                    id,
                    attrs: attrs_of(&md),
                }),
                Err(e) => io_status(id, &e),
            },
            Packet::Fstat(s) => {
                let md = match self.handles.get(&s.handle) {
                    Some(Open::File(f)) => f.metadata(),
                    Some(Open::Dir { path, .. }) => fs::metadata(path),
                    None => return bad_handle(id),
                };
                match md {
                    Ok(md) => Packet::Attrs(Attrs {
                        id,
                        attrs: attrs_of(&md),
                    }),
                    Err(e) => io_status(id, &e),
                }
            }
            Packet::SetStat(s) => match set_attrs(Path::new(&s.path), None, &s.attrs) {
                Ok(()) => ok(id),
                Err(e) => io_status(id, &e),
            },
            Packet::FSetStat(s) => {
                let res = match self.handles.get(&s.handle) {
                    Some(Open::File(f)) => set_attrs(Path::new(""), Some(f), &s.attrs),
                    Some(Open::Dir { path, .. }) => set_attrs(path, None, &s.attrs),
                    None => return bad_handle(id),
                };
                match res {
                    Ok(()) => ok(id),
                    Err(e) => io_status(id, &e),
                }
            }
            Packet::OpenDir(d) => match fs::read_dir(&d.path) {
                Ok(iter) => self.add(
                    id,
                    Open::Dir {
                        path: PathBuf::from(&d.path),
                        iter: Some(iter),
                        dots_sent: false,
                    },
                ),
                Err(e) => io_status(id, &e),
            },
            Packet::ReadDir(d) => {
                let Some(Open::Dir {
                    path,
                    iter,
                    dots_sent,
                }) = self.handles.get_mut(&d.handle)
                else {
                    return bad_handle(id);
                };
                let mut files = Vec::new();
                // "." and ".." first, as OpenSSH lists them.
                if !*dots_sent {
                    *dots_sent = true;
                    for dot in [".", ".."] {
                        if let Ok(md) = fs::symlink_metadata(path.join(dot)) {
                            files.push(NameEntry {
                                filename: dot.into(),
                                longname: longname(dot, &md),
                                attrs: attrs_of(&md),
                            });
                        }
                    }
                }
                let Some(it) = iter.as_mut() else {
                    return status(id, StatusCode::Eof, "end of directory");
                };
                while files.len() < DIR_BATCH {
                    let Some(entry) = it.next() else {
                        *iter = None;
                        break;
                    };
                    let Ok(entry) = entry else { continue };
                    let Ok(md) = entry.metadata() else { continue };
                    let name = entry.file_name().to_string_lossy().into_owned();
                    files.push(NameEntry {
                        longname: longname(&name, &md),
                        filename: name,
                        attrs: attrs_of(&md),
                    });
                }
                if files.is_empty() {
                    return status(id, StatusCode::Eof, "end of directory");
                }
                Packet::Name(Name { id, files })
            }
            Packet::Remove(r) => match fs::remove_file(&r.filename) {
                Ok(()) => ok(id),
                Err(e) => io_status(id, &e),
            },
            Packet::MkDir(m) => {
                let mode = m.attrs.permissions.map_or(0o777, |p| p & 0o7777);
                match fs::DirBuilder::new().mode(mode).create(&m.path) {
                    Ok(()) => ok(id),
                    Err(e) => io_status(id, &e),
                }
            }
            Packet::RmDir(r) => match fs::remove_dir(&r.path) {
                Ok(()) => ok(id),
                Err(e) => io_status(id, &e),
            },
            Packet::RealPath(r) => {
                let p = if r.path.is_empty() { "." } else { &r.path };
                let abs = fs::canonicalize(p).unwrap_or_else(|_| lexical_abs(Path::new(p)));
                let name = abs.to_string_lossy().into_owned();
                Packet::Name(Name {
                    id,
                    files: vec![NameEntry {
                        longname: name.clone(),
                        filename: name,
                        attrs: FileAttributes::default(),
                    }],
                })
            }
            Packet::Rename(r) => {
                // Version 3 rename does not replace an existing target.
                if fs::symlink_metadata(&r.newpath).is_ok() {
                    return status(id, StatusCode::Failure, "target exists");
                }
                match fs::rename(&r.oldpath, &r.newpath) {
                    Ok(()) => ok(id),
                    Err(e) => io_status(id, &e),
                }
            }
            Packet::ReadLink(r) => match fs::read_link(&r.path) {
                Ok(t) => {
                    let name = t.to_string_lossy().into_owned();
                    Packet::Name(Name {
                        id,
                        files: vec![NameEntry {
                            longname: name.clone(),
                            filename: name,
                            attrs: FileAttributes::default(),
                        }],
                    })
                }
                Err(e) => io_status(id, &e),
            },
            // OpenSSH sends the target first (its long-standing swap of the draft's
            // order), and every client follows it; so does its server, and so do we.
            Packet::Symlink(s) => match std::os::unix::fs::symlink(&s.linkpath, &s.targetpath) {
                Ok(()) => ok(id),
                Err(e) => io_status(id, &e),
            },
            Packet::Extended(x) => self.extended(id, &x.request, &x.data),
            _ => status(id, StatusCode::OpUnsupported, "unsupported request"),
        }
    }

    fn extended(&mut self, id: u32, request: &str, data: &[u8]) -> Packet {
        let mut d = data;
        let res = match request {
            "posix-rename@openssh.com" => match (take_string(&mut d), take_string(&mut d)) {
                (Some(from), Some(to)) => fs::rename(from, to),
                _ => return status(id, StatusCode::BadMessage, "bad posix-rename request"),
            },
            "hardlink@openssh.com" => match (take_string(&mut d), take_string(&mut d)) {
                (Some(from), Some(to)) => fs::hard_link(from, to),
                _ => return status(id, StatusCode::BadMessage, "bad hardlink request"),
            },
            "fsync@openssh.com" => match take_string(&mut d) {
                Some(h) => match self.file(&h) {
                    Some(f) => f.sync_all(),
                    None => return status(id, StatusCode::Failure, "no such handle"),
                },
                None => return status(id, StatusCode::BadMessage, "bad fsync request"),
            },
            _ => {
                return status(
                    id,
                    StatusCode::OpUnsupported,
                    &format!("{request} is not supported"),
                )
            }
        };
        match res {
            Ok(()) => ok(id),
            Err(e) => io_status(id, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_dates_are_civil_dates() {
        assert_eq!(ls_date(0), "Jan  1  1970");
        // 2024-02-29 12:00 UTC (a leap day) and 2000-12-31.
        assert_eq!(ls_date(1_709_208_000), "Feb 29  2024");
        assert_eq!(ls_date(978_220_800), "Dec 31  2000");
    }

    #[test]
    fn lexical_paths_drop_dots() {
        assert_eq!(lexical_abs(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(lexical_abs(Path::new("/../x")), PathBuf::from("/x"));
    }

    #[test]
    fn ssh_strings_are_length_prefixed() {
        let data = [0, 0, 0, 2, b'h', b'i', 0, 0, 0, 9];
        let mut d = &data[..];
        assert_eq!(take_string(&mut d).as_deref(), Some("hi"));
        assert_eq!(
            take_string(&mut d),
            None,
            "a length past the end is refused"
        );
    }
}
