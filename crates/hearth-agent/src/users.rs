//! User lookup from the image's own /etc/passwd and /etc/group.
//!
//! Parsed by hand because a static binary must not use NSS, and the image may have no
//! libc that NSS modules would match anyway. Semantics follow runc: a numeric uid need not
//! exist, an explicit group replaces the supplementary groups.

use std::io;
use std::path::Path;

/// Who a session runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group included).
    pub groups: Vec<u32>,
    pub home: String,
    /// Name for $USER: the passwd name, else the uid.
    pub name: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if line.starts_with('#') || f.len() < 6 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if line.starts_with('#') || f.len() < 3 {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    })
}

/// Resolves `user[:group]` (names or numbers) against passwd/group file contents.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ExecUser, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let entry = passwd_entries(passwd)
        .find(|e| e.name == user_part)
        .or_else(|| {
            let uid: u32 = user_part.parse().ok()?;
            passwd_entries(passwd).find(|e| e.uid == uid)
        });
    let mut user = match (entry, user_part.parse::<u32>()) {
        (Some(e), _) => ExecUser {
            uid: e.uid,
            gid: e.gid,
            groups: Vec::new(),
            home: if e.home.is_empty() {
                "/".into()
            } else {
                e.home.into()
            },
            name: e.name.into(),
        },
        (None, Ok(uid)) => ExecUser {
            uid,
            gid: 0,
            groups: Vec::new(),
            home: "/".into(),
            name: uid.to_string(),
        },
        (None, Err(_)) => return Err(format!("user {user_part} not found")),
    };

    match group_part {
        Some(g) if !g.is_empty() => {
            user.gid = match group_entries(group).find(|e| e.name == g) {
                Some(e) => e.gid,
                None => g.parse().map_err(|_| format!("group {g} not found"))?,
            };
            user.groups = vec![user.gid];
        }
        _ => {
            user.groups.push(user.gid);
            for e in group_entries(group) {
                if e.members.contains(&user.name.as_str()) && !user.groups.contains(&e.gid) {
                    user.groups.push(e.gid);
                }
            }
        }
    }
    Ok(user)
}

/// Reads a database file; a missing one is empty (minimal images often lack /etc/group).
pub fn read_db(path: &Path) -> Result<String, String> {
    match std::fs::read(path) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # comment\n\
        dev:x:1000:1000:Dev:/home/dev:/bin/sh\n\
        broken line\n\
        svc:x:999:998::/var/svc:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:dev,other\ndev:x:1000:\ndocker:x:999:svc, dev\n";

    #[test]
    fn name_resolves_with_supplementary_groups() {
        let u = resolve("dev", PASSWD, GROUP).unwrap();
        assert_eq!(
            u,
            ExecUser {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 10, 999],
                home: "/home/dev".into(),
                name: "dev".into()
            }
        );
    }

    #[test]
    fn empty_spec_is_root() {
        let u = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str(), u.name.as_str()),
            (0, 0, "/root", "root")
        );
    }

    #[test]
    fn numeric_uid_uses_passwd_entry_when_present() {
        let u = resolve("999", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.name.as_str()), (999, 998, "svc"));
        let u = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str(), u.name.as_str()),
            (4242, 0, "/", "4242")
        );
    }

    #[test]
    fn explicit_group_replaces_supplementary_groups() {
        let u = resolve("dev:wheel", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.groups.clone()), (1000, 10, vec![10]));
        let u = resolve("1000:77", PASSWD, GROUP).unwrap();
        assert_eq!((u.gid, u.groups), (77, vec![77]));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve("nobody2", PASSWD, GROUP).unwrap_err(),
            "user nobody2 not found"
        );
        assert_eq!(
            resolve("dev:staff", PASSWD, GROUP).unwrap_err(),
            "group staff not found"
        );
        assert_eq!(
            resolve("nobody2", "", "").unwrap_err(),
            "user nobody2 not found"
        );
    }
}
