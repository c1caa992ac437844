//! Cloning the workspace's repository without host root.
//!
//! The clone runs as the workspace's own root uid on the host (the base of its id range),
//! straight into the writable layer, so files arrive owned by root-inside and a hostile
//! repository (hooks, crafted paths) can do nothing host root could.
//!
//! Every fetch of a network source runs in a network namespace on the bridge ([`NetJail`]:
//! the workspace's own, or the node's probe netns before a workspace exists), so it
//! reaches exactly what a workspace may: not the node's loopback, its addresses, link-local
//! metadata endpoints or denied CIDRs. Local paths and `file://` are read on the host;
//! the control plane lets only admins name them ([`is_local_source`]).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::{NodeError, Progress, Revision};

/// Transports a local source may use; `ext::` and friends run arbitrary commands.
const ALLOWED_PROTOCOLS: &str = "file:git:http:https:ssh";
/// Transports a network source may use: not `file`, so nothing it names (a submodule, a
/// redirect) can make git read the host's files.
const NETWORK_PROTOCOLS: &str = "git:http:https:ssh";

/// Whether git would read `source` from the node's own filesystem: an absolute path or a
/// `file:` URL. Only admins may name one (the control plane checks the caller); every
/// other source is fetched over the network from inside a [`NetJail`].
pub fn is_local_source(source: &str) -> bool {
    let s = source.trim();
    s.starts_with('/')
        || s.get(..5)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("file:"))
}

/// The network namespace a fetch runs in, entered by the `git` child before it drops to
/// its uid (`setns` needs host root), plus a resolv.conf bound over `/etc/resolv.conf` in
/// a private mount namespace when the host's names a loopback resolver, which does not
/// answer inside the netns.
#[derive(Debug)]
pub struct NetJail {
    netns: std::fs::File,
    resolv: Option<CString>,
}

impl NetJail {
    pub fn open(netns: &Path, resolv: Option<&Path>) -> Result<Arc<NetJail>, NodeError> {
        let file = std::fs::File::open(netns).map_err(NodeError::io("open", netns))?;
        let resolv = resolv
            .map(|r| {
                CString::new(r.as_os_str().as_encoded_bytes())
                    .map_err(|_| NodeError::Internal(format!("bad path {}", r.display())))
            })
            .transpose()?;
        Ok(Arc::new(NetJail {
            netns: file,
            resolv,
        }))
    }
}

/// How the node runs git: its `gitconfig`, and the network a fetch runs in (`None`: the
/// host's, for a local source).
#[derive(Debug, Clone, Copy)]
pub struct GitEnv<'a> {
    pub gitconfig: &'a Path,
    pub jail: Option<&'a Arc<NetJail>>,
}

/// Makes `cmd` enter `jail` and then become `uid`/`gid`, in the child before exec: only
/// raw syscalls there (async-signal-safe), on memory made before the fork.
fn confine(cmd: &mut Command, jail: &Arc<NetJail>, uid: u32, gid: u32) {
    let jail = jail.clone();
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY: the closure only makes raw syscalls on values owned by `jail`, which the
    // closure (hence the Command) keeps alive; nothing allocates or takes a lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(jail.netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return fail();
            }
            if let Some(resolv) = &jail.resolv {
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        resolv.as_ptr(),
                        c"/etc/resolv.conf".as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return fail();
                }
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return fail();
            }
            Ok(())
        });
    }
}

/// Directory name for a source: last path component without `.git`, made safe.
pub fn repo_name(source: &str) -> String {
    let trimmed = source.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    let last = last.strip_suffix(".git").unwrap_or(last);
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('.').to_string();
    if cleaned.is_empty() {
        "repo".to_string()
    } else {
        cleaned
    }
}

/// Checks a source before anything is created; a local path must be a git repository.
pub fn validate_source(source: &str) -> Result<(), NodeError> {
    if source.is_empty() {
        return Err(NodeError::Invalid(
            "source is empty: give a git URL or a local repository path".into(),
        ));
    }
    if source.starts_with('-') {
        return Err(NodeError::Invalid(format!("invalid source {source:?}")));
    }
    let lower = source.to_ascii_lowercase();
    for scheme in ["https://", "http://", "ssh://", "git://", "file://"] {
        if lower.starts_with(scheme) {
            return Ok(());
        }
    }
    if source.contains("::") {
        return Err(NodeError::Invalid(format!(
            "source {source:?} uses an unsupported git transport (allowed: https, http, ssh, git, file, local path)"
        )));
    }
    let p = Path::new(source);
    if p.is_absolute() {
        if !p.exists() {
            return Err(NodeError::Invalid(format!(
                "source {source}: no such directory"
            )));
        }
        if !(p.join(".git").exists() || (p.join("HEAD").is_file() && p.join("objects").is_dir())) {
            return Err(NodeError::Invalid(format!(
                "source {source} is not a git repository"
            )));
        }
        return Ok(());
    }
    // scp-like ssh syntax: user@host:path or host:path
    if let Some((host, _)) = source.split_once(':') {
        if !host.is_empty() && !host.contains('/') {
            return Ok(());
        }
    }
    Err(NodeError::Invalid(format!(
        "source {source:?} is neither a git URL nor an absolute path to a local repository"
    )))
}

/// A `git` command as `uid`/`gid` with the node's transport rules: an empty environment
/// but `PATH`, no system or user config but the node's `gitconfig`, allowed protocols
/// only, never a prompt; in `jail`'s network (and without `file`) when given.
fn git(gitconfig: &Path, uid: u32, gid: u32, jail: Option<&Arc<NetJail>>) -> Command {
    let mut c = Command::new("git");
    c.current_dir("/")
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", "/nonexistent")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", gitconfig)
        .env(
            "GIT_ALLOW_PROTOCOL",
            match jail {
                Some(_) => NETWORK_PROTOCOLS,
                None => ALLOWED_PROTOCOLS,
            },
        )
        .env("GIT_TERMINAL_PROMPT", "0")
        .env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
        );
    match jail {
        Some(jail) => confine(&mut c, jail, uid, gid),
        None => {
            c.uid(uid).gid(gid);
        }
    }
    c
}

/// Checks a branch name before it reaches git (as `--branch=NAME`, never as an option of
/// its own): git's ref rules that matter here, and no leading `-`.
pub fn validate_branch(branch: &str) -> Result<(), NodeError> {
    let bad = branch.is_empty()
        || branch.len() > 255
        || branch.starts_with(['-', '/', '.'])
        || branch.ends_with(['/', '.'])
        || branch.ends_with(".lock")
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch
            .chars()
            .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'));
    if bad {
        return Err(NodeError::Invalid(format!(
            "invalid branch name {branch:?}"
        )));
    }
    Ok(())
}

/// Checks a commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn validate_commit(commit: &str) -> Result<(), NodeError> {
    if matches!(commit.len(), 40 | 64)
        && commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!("invalid commit id {commit:?}")))
    }
}

/// Clones `source` into `dest` (which must not exist) as `uid`/`gid`: `rev.branch` (the
/// default branch when `None`), reset to `rev.commit` when given, so the files are those
/// of the commit the control plane read the devcontainer.json from even if the branch
/// moved meanwhile.
pub fn clone(
    source: &str,
    rev: &Revision,
    dest: &Path,
    uid: u32,
    gid: u32,
    git_env: &GitEnv,
    progress: &Progress,
) -> Result<(), NodeError> {
    let GitEnv { gitconfig, jail } = *git_env;
    let parent = dest.parent().ok_or_else(|| {
        NodeError::Internal(format!("clone target {} has no parent", dest.display()))
    })?;
    if let Some(b) = &rev.branch {
        validate_branch(b)?;
    }
    if let Some(c) = &rev.commit {
        validate_commit(c)?;
    }
    let mut cmd = git(gitconfig, uid, gid, jail);
    cmd.args(["clone", "--progress", "--no-hardlinks"]);
    if let Some(b) = &rev.branch {
        cmd.arg(format!("--branch={b}"));
    }
    if rev.commit.is_some() {
        // Checked out once, at the commit, below.
        cmd.arg("--no-checkout");
    }
    let mut child = cmd
        .arg("--")
        .arg(source)
        .arg(dest)
        .current_dir(parent)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NodeError::Internal(format!("cannot run git: {e} (apt-get install git)")))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| NodeError::Internal("git stderr not captured".into()))?;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let mut line = Vec::new();
    loop {
        let n = match stderr.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                if !line.is_empty() {
                    let _ = progress.send(format!("git: {}", String::from_utf8_lossy(&line)));
                    all.extend_from_slice(&line);
                    all.push(b'\n');
                    line.clear();
                }
            } else {
                line.push(b);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| NodeError::Internal(format!("waiting for git: {e}")))?;
    if status.success() {
        let Some(commit) = &rev.commit else {
            return Ok(());
        };
        // The branch stays checked out, at the commit (`git status` then says how far
        // behind its remote it is).
        let out = git(gitconfig, uid, gid, jail)
            .arg("-C")
            .arg(dest)
            .args(["reset", "--hard", "--quiet", commit, "--"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| NodeError::Internal(format!("cannot run git: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        return Err(NodeError::Conflict(format!(
            "{source} no longer has commit {commit}, which its devcontainer.json was read \
             from (force-pushed?); try again: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&all);
    // git's error lines, and the line after one that ends in ':' (where `unable to
    // connect to HOST:` puts its errno).
    let mut reason: Vec<&str> = Vec::new();
    let mut continued = false;
    for l in text.lines() {
        if continued
            || l.starts_with("fatal:")
            || l.starts_with("error:")
            || l.starts_with("remote:")
        {
            reason.push(l);
            continued = !continued && l.ends_with(':');
        }
    }
    let reason = if reason.is_empty() {
        text.lines().last().unwrap_or("no output").to_string()
    } else {
        reason.join("; ")
    };
    Err(NodeError::Invalid(format!(
        "git clone of {source} failed: {reason}"
    )))
}

/// Host uid and gid that read a repository's devcontainer.json before its workspace exists:
/// below every workspace's range and above what distributions hand out, so it can read
/// only what any unprivileged user can (as the clone, which runs as the workspace's uid).
pub const PROBE_UID: u32 = crate::ID_BASE - 1;

/// The devcontainer.json of the tip of `source`'s `branch` (default branch: `None`; see
/// [`crate::NodeApi::devcontainer_config`]): a bare, depth-1, blobless clone into a
/// temporary directory under `tmp_parent`, made and read as [`PROBE_UID`] with the
/// clone's transport rules; symlinks in the tree are followed only inside it.
pub fn read_devcontainer(
    source: &str,
    branch: Option<&str>,
    name: Option<&str>,
    git_env: &GitEnv,
    tmp_parent: &Path,
) -> Result<Option<crate::RepoConfig>, NodeError> {
    let GitEnv { gitconfig, jail } = *git_env;
    validate_source(source)?;
    if let Some(b) = branch {
        validate_branch(b)?;
    }
    let tmp = tempfile::Builder::new()
        .prefix(".devcontainer-probe-")
        .tempdir_in(tmp_parent)
        .map_err(NodeError::io("mkdir", tmp_parent))?;
    std::os::unix::fs::chown(tmp.path(), Some(PROBE_UID), Some(PROBE_UID))
        .map_err(NodeError::io("chown", tmp.path()))?;
    let gitconfig = gitconfig.to_path_buf();
    let jail = jail.cloned();
    let git: hearth_devcontainer::GitCommand =
        Box::new(move || git(&gitconfig, PROBE_UID, PROBE_UID, jail.as_ref()));
    let err = |e: hearth_devcontainer::Error| match e {
        hearth_devcontainer::Error::Io { .. } => NodeError::Internal(e.to_string()),
        hearth_devcontainer::Error::Git { message, .. } => NodeError::Invalid(format!(
            "cannot read the devcontainer configuration of {source}: {message}"
        )),
        other => NodeError::Invalid(other.to_string()),
    };
    let repo = hearth_devcontainer::GitRepo::clone_branch(
        source,
        branch,
        &tmp.path().join("repo.git"),
        git,
    )
    .map_err(err)?;
    let found = hearth_devcontainer::find(&repo, name).map_err(err)?;
    Ok(found.map(|f| crate::RepoConfig {
        path: f.path,
        text: f.text,
        commit: repo.commit().to_string(),
    }))
}

/// Largest dotfiles clone (`.git` included) handed to a workspace, as a tar archive.
pub const MAX_DOTFILES_BYTES: usize = 64 << 20;

/// A `Vec` that refuses to grow past a limit, so a huge repository fails the archive
/// instead of the node's memory.
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_DOTFILES_BYTES {
            return Err(std::io::Error::other("too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A dotfiles repository as a tar archive of its clone (see
/// [`crate::NodeApi::dotfiles_archive`]): cloned as `uid` (the workspace's root) with the
/// clone's transport rules into a fresh directory under `tmp_parent` (on the workspace's
/// own disk, so its size counts there), archived without following symlinks (a link to a
/// host file stays a link) and with owners and times left out, then deleted.
pub fn dotfiles_archive(
    url: &str,
    uid: u32,
    git_env: &GitEnv,
    tmp_parent: &Path,
) -> Result<Vec<u8>, NodeError> {
    validate_source(url)?;
    let tmp = tempfile::Builder::new()
        .prefix(".dotfiles-")
        .tempdir_in(tmp_parent)
        .map_err(NodeError::io("mkdir", tmp_parent))?;
    std::os::unix::fs::chown(tmp.path(), Some(uid), Some(uid))
        .map_err(NodeError::io("chown", tmp.path()))?;
    let dest = tmp.path().join("dotfiles");
    // Nobody reads git's progress here; the install's own lines say what happens.
    let (progress, _unread) = tokio::sync::mpsc::unbounded_channel();
    clone(
        url,
        &Revision::default(),
        &dest,
        uid,
        uid,
        git_env,
        &progress,
    )?;
    let mut tar = tar::Builder::new(Bounded(Vec::new()));
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    let too_big = || {
        NodeError::Invalid(format!(
            "dotfiles repository {url} is larger than {} MiB",
            MAX_DOTFILES_BYTES >> 20
        ))
    };
    tar.append_dir_all(".", &dest).map_err(|_| too_big())?;
    let out = tar.into_inner().map_err(|_| too_big())?;
    Ok(out.0)
}

/// Ref a [`update_bundle`] bundle carries its commit under.
pub const UPDATE_REF: &str = "refs/heads/hearth-update";

/// The newest of `bases` (commits, newest first) that is an ancestor of `commit` on
/// `source`'s `branch` (default: `None`), and a git bundle of what `commit` adds to it
/// (its tip under [`UPDATE_REF`]); `None` when no base is an ancestor, or the bundle is
/// over `max` bytes. A bare clone into a temporary directory under `tmp_parent`, made
/// as [`PROBE_UID`] with the clone's transport rules.
pub fn update_bundle(
    source: &str,
    branch: Option<&str>,
    commit: &str,
    bases: &[String],
    max: u64,
    git_env: &GitEnv,
    tmp_parent: &Path,
) -> Result<Option<(String, Vec<u8>)>, NodeError> {
    let GitEnv { gitconfig, jail } = *git_env;
    validate_source(source)?;
    if let Some(b) = branch {
        validate_branch(b)?;
    }
    validate_commit(commit)?;
    for b in bases {
        validate_commit(b)?;
    }
    let tmp = tempfile::Builder::new()
        .prefix(".prebuild-update-")
        .tempdir_in(tmp_parent)
        .map_err(NodeError::io("mkdir", tmp_parent))?;
    std::os::unix::fs::chown(tmp.path(), Some(PROBE_UID), Some(PROBE_UID))
        .map_err(NodeError::io("chown", tmp.path()))?;
    let repo = tmp.path().join("repo.git");
    let run = |args: &[&std::ffi::OsStr]| -> Result<std::process::Output, NodeError> {
        git(gitconfig, PROBE_UID, PROBE_UID, jail)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| NodeError::Internal(format!("cannot run git: {e}")))
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let mut clone = vec![
        os("clone"),
        os("--quiet"),
        os("--bare"),
        os("--no-local"),
        os("--single-branch"),
    ];
    if let Some(b) = branch {
        clone.push(os(&format!("--branch={b}")));
    }
    clone.extend([os("--"), os(source), repo.clone().into_os_string()]);
    let refs: Vec<&std::ffi::OsStr> = clone.iter().map(|s| s.as_os_str()).collect();
    let out = run(&refs)?;
    if !out.status.success() {
        return Err(NodeError::Invalid(format!(
            "git clone of {source} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let in_repo = |args: &[&str]| {
        let mut all = vec![os("--git-dir"), repo.clone().into_os_string()];
        all.extend(args.iter().map(|a| os(a)));
        let refs: Vec<&std::ffi::OsStr> = all.iter().map(|s| s.as_os_str()).collect();
        run(&refs)
    };
    let mut found = None;
    for b in bases {
        if b != commit
            && in_repo(&["merge-base", "--is-ancestor", b, commit])?
                .status
                .success()
        {
            found = Some(b.clone());
            break;
        }
    }
    let Some(base) = found else {
        return Ok(None);
    };
    let bundle = tmp.path().join("update.bundle");
    let steps: [&[&str]; 2] = [
        &["update-ref", UPDATE_REF, commit],
        &[
            "bundle",
            "create",
            "--quiet",
            &bundle.to_string_lossy(),
            UPDATE_REF,
            &format!("^{base}"),
        ],
    ];
    for args in steps {
        let out = in_repo(args)?;
        if !out.status.success() {
            return Err(NodeError::Internal(format!(
                "git {} in a clone of {source} failed: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    let size = std::fs::metadata(&bundle)
        .map_err(NodeError::io("stat", &bundle))?
        .len();
    if size > max {
        tracing::info!(
            source,
            size,
            max,
            "update from the prebuild too large; cloning instead"
        );
        return Ok(None);
    }
    let data = std::fs::read(&bundle).map_err(NodeError::io("read", &bundle))?;
    Ok(Some((base, data)))
}

/// Runs a probe `git` to its end; its stderr's last lines are the error.
fn run_probe(mut cmd: Command, what: &str, source: &str) -> Result<(), NodeError> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| NodeError::Internal(format!("cannot run git: {e} (apt-get install git)")))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let reason: Vec<&str> = text.lines().rev().take(3).collect();
    Err(NodeError::Invalid(format!(
        "git {what} of {source} failed: {}",
        reason.into_iter().rev().collect::<Vec<_>>().join("; ")
    )))
}

/// `commit` of `source` as a tar of its tree (`git archive`), in an unlinked temporary
/// file: the build context of a repository's Dockerfile. Fetched like
/// [`read_devcontainer`] (bare, depth 1, as [`PROBE_UID`]), the commit itself asked for
/// when the tip moved on; `export-ignore` attributes apply as `git archive` has them.
pub fn archive(
    source: &str,
    commit: &str,
    git_env: &GitEnv,
    tmp_parent: &Path,
) -> Result<std::fs::File, NodeError> {
    let GitEnv { gitconfig, jail } = *git_env;
    validate_source(source)?;
    validate_commit(commit)?;
    let tmp = tempfile::Builder::new()
        .prefix(".archive-")
        .tempdir_in(tmp_parent)
        .map_err(NodeError::io("mkdir", tmp_parent))?;
    std::os::unix::fs::chown(tmp.path(), Some(PROBE_UID), Some(PROBE_UID))
        .map_err(NodeError::io("chown", tmp.path()))?;
    let dest = tmp.path().join("repo.git");
    let mut clone = git(gitconfig, PROBE_UID, PROBE_UID, jail);
    clone
        .args([
            "clone",
            "--quiet",
            "--bare",
            "--no-local",
            "--depth",
            "1",
            "--single-branch",
            "--",
        ])
        .arg(source)
        .arg(&dest);
    run_probe(clone, "clone", source)?;
    let in_repo = |args: &[&str]| {
        let mut c = git(gitconfig, PROBE_UID, PROBE_UID, jail);
        c.arg("--git-dir").arg(&dest).args(args);
        c
    };
    let has = in_repo(&["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        run_probe(
            in_repo(&["fetch", "--quiet", "--depth", "1", "origin", commit]),
            "fetch",
            source,
        )?;
    }
    let mut out = tempfile::tempfile_in(tmp_parent).map_err(NodeError::io("create", tmp_parent))?;
    let mut cmd = in_repo(&["archive", "--format=tar", commit]);
    cmd.stdout(out.try_clone().map_err(NodeError::io("dup", tmp_parent))?);
    run_probe(cmd, "archive", source)?;
    use std::io::Seek;
    out.rewind().map_err(NodeError::io("seek", tmp_parent))?;
    Ok(out)
}

/// Largest Dockerfile [`build_inputs`] reads.
const MAX_DOCKERFILE: u64 = 1 << 20;

/// What a build of `dockerfile` in `context` at `commit` of `source` reads from the
/// repository (see [`crate::NodeApi::build_inputs`]). Cloned like [`read_devcontainer`]
/// (bare, depth 1, no blobs but the Dockerfile's, as [`PROBE_UID`]); the commit itself is
/// fetched when `branch`'s tip moved on since.
pub fn build_inputs(
    source: &str,
    branch: Option<&str>,
    commit: &str,
    dockerfile: &str,
    context: &str,
    git_env: &GitEnv,
    tmp_parent: &Path,
) -> Result<crate::BuildInputs, NodeError> {
    let GitEnv { gitconfig, jail } = *git_env;
    validate_source(source)?;
    if let Some(b) = branch {
        validate_branch(b)?;
    }
    validate_commit(commit)?;
    let tmp = tempfile::Builder::new()
        .prefix(".build-inputs-")
        .tempdir_in(tmp_parent)
        .map_err(NodeError::io("mkdir", tmp_parent))?;
    std::os::unix::fs::chown(tmp.path(), Some(PROBE_UID), Some(PROBE_UID))
        .map_err(NodeError::io("chown", tmp.path()))?;
    let probe = || -> hearth_devcontainer::GitCommand {
        let gitconfig = gitconfig.to_path_buf();
        let jail = jail.cloned();
        Box::new(move || git(&gitconfig, PROBE_UID, PROBE_UID, jail.as_ref()))
    };
    let err = |e: hearth_devcontainer::Error| match e {
        hearth_devcontainer::Error::Io { .. } => NodeError::Internal(e.to_string()),
        other => NodeError::Invalid(format!("cannot read the build of {source}: {other}")),
    };
    let dest = tmp.path().join("repo.git");
    let tip =
        hearth_devcontainer::GitRepo::clone_branch(source, branch, &dest, probe()).map_err(err)?;
    if tip.commit() != commit {
        let mut fetch = git(gitconfig, PROBE_UID, PROBE_UID, jail);
        fetch.arg("--git-dir").arg(&dest).args([
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "--filter=blob:none",
            "origin",
            commit,
        ]);
        run_probe(fetch, "fetch", source)?;
    }
    let repo = hearth_devcontainer::GitRepo::new(dest.clone(), commit.to_string(), probe());
    use hearth_devcontainer::Repo;
    let text = repo
        .read(dockerfile, MAX_DOCKERFILE)
        .map_err(err)?
        .ok_or_else(|| {
            NodeError::Invalid(format!(
                "{source} has no Dockerfile {dockerfile} at commit {commit}"
            ))
        })?;
    let context_tree = repo.tree_id(context).map_err(err)?.ok_or_else(|| {
        NodeError::Invalid(format!(
            "{source} has no build context directory {context} at commit {commit}"
        ))
    })?;
    Ok(crate::BuildInputs {
        dockerfile: String::from_utf8_lossy(&text).into_owned(),
        context_tree,
    })
}

pub fn dest_for(upper: &Path, source: &str) -> PathBuf {
    upper.join("workspace").join(repo_name(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(repo_name("https://github.com/a/hearth.git"), "hearth");
        assert_eq!(repo_name("git@github.com:a/b.git"), "b");
        assert_eq!(repo_name("/srv/repos/my repo/"), "my-repo");
        assert_eq!(repo_name("/"), "repo");
        assert_eq!(repo_name("host:.."), "repo");
    }

    #[test]
    fn branches_and_commits() {
        for ok in ["main", "feature/x", "release-1.2", "a_b"] {
            assert!(validate_branch(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-b",
            "--upload-pack=x",
            "a..b",
            "a b",
            "x.lock",
            "/x",
            "x/",
            "a@{1}",
            "a:b",
            "a\nb",
        ] {
            assert!(validate_branch(bad).is_err(), "{bad:?}");
        }
        assert!(validate_commit(&"a".repeat(40)).is_ok());
        assert!(validate_commit(&"0".repeat(64)).is_ok());
        for bad in ["HEAD", "abc", &"A".repeat(40), &"g".repeat(40), "--all"] {
            assert!(validate_commit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sources() {
        assert!(validate_source("https://example.com/x.git").is_ok());
        assert!(validate_source("git@example.com:x/y.git").is_ok());
        assert!(validate_source("ext::sh -c touch% /tmp/pwned").is_err());
        assert!(validate_source("--upload-pack=touch /tmp/x").is_err());
        assert!(validate_source("relative/path").is_err());
        assert!(validate_source("/nonexistent/repo").is_err());
        let t = tempfile::tempdir().unwrap();
        assert!(validate_source(t.path().to_str().unwrap()).is_err());
    }

    /// A jailed child runs in the netns (only its loopback there), with the given
    /// resolv.conf in a mount namespace of its own (the host's is untouched), as the uid.
    /// Needs root, as the whole suite does.
    #[test]
    fn a_jailed_child_has_the_netns_resolv_conf_and_uid() {
        struct Ns(String);
        impl Drop for Ns {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
            }
        }
        let ns = Ns(format!("hearth-jail-test-{}", std::process::id()));
        let st = Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add (root needed)");
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
        let jail = NetJail::open(&Path::new("/run/netns").join(&ns.0), Some(&resolv)).unwrap();
        let mut c = Command::new("sh");
        // /proc/net is the reader's netns (sysfs would show the mounter's).
        c.args([
            "-c",
            "cat /etc/resolv.conf; sed -n '3,$s/:.*//p' /proc/net/dev | tr -d ' '; id -u; id -g",
        ]);
        confine(&mut c, &jail, 65534, 65533);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "nameserver 192.0.2.53\nlo\n65534\n65533\n"
        );
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        assert!(!host.contains("192.0.2.53"), "{host}");
    }

    #[test]
    fn local_sources() {
        for local in [
            "/srv/repo",
            " /srv/repo",
            "file:///etc",
            "FILE:///etc",
            "file:/etc",
        ] {
            assert!(is_local_source(local), "{local}");
        }
        for remote in [
            "https://example.com/x.git",
            "git://10.0.0.1/x",
            "ssh://h/srv/repo",
            "git@h:/srv/repo",
            "fil",
        ] {
            assert!(!is_local_source(remote), "{remote}");
        }
    }
}
