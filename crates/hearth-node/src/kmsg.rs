//! Reading OOM kills out of the kernel log (`/dev/kmsg` records).
//!
//! Kernel text, but part of it is the victim's name, which a workspace chooses (up to
//! 15 bytes of anything, `,` `=` `)` included): fields the kernel controls are taken
//! from where only the kernel writes them, and every size is bounded.

/// Longest record text looked at; the kernel's own records are under 1 KiB.
const MAX_TEXT: usize = 4096;
/// Longest cgroup path or process name kept.
const MAX_FIELD: usize = 512;

/// One `/dev/kmsg` record: `PRIO,SEQ,USEC,FLAGS[,...];TEXT\n[ KEY=VALUE\n...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub seq: u64,
    /// Microseconds since boot (the kernel's monotonic clock).
    pub usec: u64,
    pub text: &'a str,
}

/// Splits one record as `read(2)` returns it; `None` for anything malformed.
pub(crate) fn record(raw: &[u8]) -> Option<Record<'_>> {
    let raw = &raw[..raw.len().min(MAX_TEXT)];
    let semi = raw.iter().position(|&b| b == b';')?;
    let head = std::str::from_utf8(&raw[..semi]).ok()?;
    let mut f = head.split(',');
    let (_prio, seq, usec) = (f.next()?, f.next()?, f.next()?);
    let body = &raw[semi + 1..];
    // Continuation lines (dictionary) follow the first newline.
    let end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
    Some(Record {
        seq: seq.parse().ok()?,
        usec: usec.parse().ok()?,
        text: std::str::from_utf8(&body[..end]).ok()?,
    })
}

/// The lines of an OOM kill report that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OomLine {
    /// `memory: usage NkB, limit NkB, failcnt N`: the group whose limit was hit, printed
    /// before the summary of the same kill.
    Usage { limit_bytes: u64 },
    /// `oom-kill:constraint=...,task_memcg=PATH,task=NAME,pid=N,uid=N`: the summary.
    Kill(OomSummary),
    /// `Memory cgroup out of memory: Killed process PID (NAME) ...` (or `Out of memory:`
    /// for the host): printed for every kill, unlike the rest, which the kernel rate
    /// limits.
    Killed {
        pid: u32,
        name: String,
        /// The victim's host uid (`UID:N`), where printed.
        uid: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OomSummary {
    /// `CONSTRAINT_MEMCG` for a group at its limit, `CONSTRAINT_NONE` for the host.
    pub constraint: String,
    /// The group whose limit was hit (absent for a host-wide OOM).
    pub oom_memcg: Option<String>,
    /// The victim's group.
    pub task_memcg: String,
    pub task: String,
    /// Host pid of the victim.
    pub pid: u32,
    /// Host uid of the victim.
    pub uid: u32,
}

pub(crate) fn oom_line(text: &str) -> Option<OomLine> {
    if text.len() > MAX_TEXT {
        return None;
    }
    if let Some(rest) = text.strip_prefix("oom-kill:") {
        return summary(rest).map(OomLine::Kill);
    }
    if let Some(rest) = text.strip_prefix("memory: usage ") {
        // "3145728kB, limit 3145728kB, failcnt 118"
        let (_, rest) = rest.split_once(", limit ")?;
        let kb = rest.split_once("kB")?.0;
        return Some(OomLine::Usage {
            limit_bytes: kb.parse::<u64>().ok()?.checked_mul(1024)?,
        });
    }
    let rest = text
        .strip_prefix("Memory cgroup out of memory: Killed process ")
        .or_else(|| text.strip_prefix("Out of memory: Killed process "))?;
    let (pid, rest) = rest.split_once(" (")?;
    // The name may hold ") total-vm:" itself; the kernel's own comes last.
    let end = rest.rfind(") total-vm:")?;
    let uid = rest[end..]
        .split_once(" UID:")
        .and_then(|(_, u)| u.split(' ').next()?.parse().ok());
    Some(OomLine::Killed {
        pid: pid.parse().ok()?,
        name: bounded(&rest[..end])?,
        uid,
    })
}

/// `constraint=C,nodemask=..,cpuset=..,mems_allowed=..,[oom_memcg=P,|global_oom,]task_memcg=Q,task=NAME,pid=N,uid=N`
fn summary(s: &str) -> Option<OomSummary> {
    // pid and uid are the kernel's and last; the name before them is the workspace's.
    let (s, uid) = s.rsplit_once(",uid=")?;
    let (s, pid) = s.rsplit_once(",pid=")?;
    let constraint = s.strip_prefix("constraint=")?.split(',').next()?;
    // Paths are the kernel's, printed before the name: search them from the left.
    let at = s.find(",task_memcg=")?;
    let (head, rest) = (&s[..at], &s[at + ",task_memcg=".len()..]);
    let (task_memcg, task) = rest.split_once(",task=")?;
    let oom_memcg = match head.find(",oom_memcg=") {
        Some(i) => Some(bounded(&head[i + ",oom_memcg=".len()..])?),
        None => None,
    };
    Some(OomSummary {
        constraint: bounded(constraint)?,
        oom_memcg,
        task_memcg: bounded(task_memcg)?,
        task: bounded(task)?,
        pid: pid.parse().ok()?,
        uid: uid.trim().parse().ok()?,
    })
}

fn bounded(s: &str) -> Option<String> {
    (s.len() <= MAX_FIELD).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Records as this machine's kernel (6.18, cgroup v1) wrote them for a perl memory
    // bomb in a 3 GiB workspace.
    const USAGE: &[u8] =
        b"6,51154,21666270187,-;memory: usage 3145728kB, limit 3145728kB, failcnt 118\n";
    const SUMMARY: &[u8] = b"6,51207,21666270348,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/hearth-nodetest-46075/ab1aaaaaaaaa,task_memcg=/hearth-nodetest-46075/ab1aaaaaaaaa,task=perl,pid=17605,uid=3080192\n";
    const KILLED: &[u8] = b"3,51208,21666270367,-;Memory cgroup out of memory: Killed process 17605 (perl) total-vm:3153196kB, anon-rss:1099392kB, file-rss:4136kB, shmem-rss:0kB, UID:3080192 pgtables:2212kB oom_score_adj:0\n";

    #[test]
    fn real_kernel_records_parse() {
        let r = record(SUMMARY).unwrap();
        assert_eq!((r.seq, r.usec), (51207, 21666270348));
        assert_eq!(
            oom_line(r.text),
            Some(OomLine::Kill(OomSummary {
                constraint: "CONSTRAINT_MEMCG".into(),
                oom_memcg: Some("/hearth-nodetest-46075/ab1aaaaaaaaa".into()),
                task_memcg: "/hearth-nodetest-46075/ab1aaaaaaaaa".into(),
                task: "perl".into(),
                pid: 17605,
                uid: 3080192,
            }))
        );
        assert_eq!(
            oom_line(record(USAGE).unwrap().text),
            Some(OomLine::Usage {
                limit_bytes: 3 << 30
            })
        );
        assert_eq!(
            oom_line(record(KILLED).unwrap().text),
            Some(OomLine::Killed {
                pid: 17605,
                name: "perl".into(),
                uid: Some(3080192),
            })
        );
        // The rest of the report is not ours.
        for raw in [
            &b"4,51124,21666270044,-;perl invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n"[..],
            b"6,51238,21666942840,-;memory+swap: usage 3145728kB, limit 9007199254740988kB, failcnt 0\n",
            b"6,51206,21666270344,-;[  17605] 3080192 17605   788299   275882   274848     1034         0  2265088        0             0 perl\n",
        ] {
            assert_eq!(oom_line(record(raw).unwrap().text), None);
        }
    }

    #[test]
    fn host_wide_oom_has_no_oom_memcg() {
        // The format of mm/oom_kill.c's dump_oom_victim for a global OOM.
        let text = "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/hearth/ab12,task=cc1plus,pid=4242,uid=1048576";
        let Some(OomLine::Kill(s)) = oom_line(text) else {
            panic!("not parsed")
        };
        assert_eq!(s.constraint, "CONSTRAINT_NONE");
        assert_eq!(s.oom_memcg, None);
        assert_eq!(
            (s.task_memcg.as_str(), s.task.as_str()),
            ("/hearth/ab12", "cc1plus")
        );
        assert_eq!(
            oom_line("Out of memory: Killed process 4242 (cc1plus) total-vm:1kB, anon-rss:1kB"),
            Some(OomLine::Killed {
                pid: 4242,
                name: "cc1plus".into(),
                uid: None,
            })
        );
    }

    #[test]
    fn a_hostile_process_name_cannot_move_the_kernels_fields() {
        // comm is the workspace's: 15 bytes with the separators in them.
        let text = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/hearth/ab12,task_memcg=/hearth/ab12,task=x,pid=1,uid=0,task_memcg=/other,pid=31337,uid=1048576";
        let Some(OomLine::Kill(s)) = oom_line(text) else {
            panic!("not parsed")
        };
        assert_eq!(s.task_memcg, "/hearth/ab12");
        assert_eq!((s.pid, s.uid), (31337, 1048576));
        assert_eq!(s.task, "x,pid=1,uid=0,task_memcg=/other");
        assert_eq!(
            oom_line("Memory cgroup out of memory: Killed process 77 (a UID:5 ) total-vm:9) total-vm:1kB, UID:1048577 pgtables:0kB"),
            Some(OomLine::Killed {
                pid: 77,
                name: "a UID:5 ) total-vm:9".into(),
                uid: Some(1048577),
            })
        );
    }

    #[test]
    fn malformed_and_oversized_records_are_refused() {
        for raw in [
            &b""[..],
            b"no semicolon",
            b"6,x,1,-;oom-kill:constraint=C",
            b"6,1;text",
            b"6,1,2,-;\xff\xfe",
        ] {
            assert_eq!(record(raw), None, "{raw:?}");
        }
        for text in [
            "oom-kill:",
            "oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/a,task=t,pid=x,uid=1",
            "oom-kill:constraint=CONSTRAINT_MEMCG,task=t,pid=1,uid=1",
            "memory: usage 1kB, limit huge, failcnt 0",
            "memory: usage 1kB, limit 99999999999999999999kB, failcnt 0",
            "Memory cgroup out of memory: Killed process 1 (no end",
        ] {
            assert_eq!(oom_line(text), None, "{text}");
        }
        let long = format!(
            "oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/{},task=t,pid=1,uid=1",
            "a".repeat(MAX_FIELD + 1)
        );
        assert_eq!(oom_line(&long), None);
        let mut big = b"6,1,2,-;".to_vec();
        big.extend(std::iter::repeat_n(b'x', 100_000));
        assert_eq!(record(&big).unwrap().text.len(), MAX_TEXT - 8);
        // Continuation (dictionary) lines are not part of the text.
        let r = record(b"6,1,2,-;memory: usage 1kB, limit 2kB, failcnt 0\n SUBSYSTEM=x\n").unwrap();
        assert_eq!(oom_line(r.text), Some(OomLine::Usage { limit_bytes: 2048 }));
    }
}
