//! The CLI's verbs over the API client: build the request, call, render the answer.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Context;
use hearth_api::client::Client;
use hearth_api::{
    BuildImage, CreateWorkspace, EgressEdit, EgressInfo, LimitsRequest, LoadImage, PullImage,
    WorkspaceInspect, WorkspaceLimits,
};

mod join;
mod nodes;
mod ports;
mod prebuilds;
mod quotas;
mod secrets;
mod snapshots;
mod ssh;
mod users;

pub use nodes::parse_labels;
pub use quotas::{QuotaChange, QuotaValue};

/// The verbs that talk to a server.
pub struct Commands {
    pub api: Client,
}

/// Whether `source` names a remote repository rather than a local path.
pub fn is_remote(source: &str) -> bool {
    if source.contains("://") {
        return true;
    }
    // scp-like `user@host:path`
    match (source.find(':'), source.find('/')) {
        (Some(c), Some(s)) => c < s && source[..c].contains('@'),
        (Some(c), None) => source[..c].contains('@'),
        _ => false,
    }
}

/// Sends local paths as absolute paths, since the server resolves them on its own.
pub fn absolute_source(source: &str) -> anyhow::Result<String> {
    if is_remote(source) {
        return Ok(source.to_string());
    }
    let p = std::path::absolute(source)
        .with_context(|| format!("cannot make {source} an absolute path"))?;
    Ok(p.to_string_lossy().into_owned())
}

impl Commands {
    pub fn new(data_dir: &Path, url: Option<&str>, token: Option<&str>) -> anyhow::Result<Self> {
        Ok(Commands {
            api: Client::new(data_dir, url, token)?,
        })
    }

    /// A file is uploaded (the server may be elsewhere, and reading server paths is for
    /// admins); a directory (an OCI layout) is read by the server from its path.
    pub async fn load_image(&self, path: &Path, name: Option<String>) -> anyhow::Result<()> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_file() {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            eprintln!("uploading {} ({})", path.display(), human_size(meta.len()));
            let img = self
                .api
                .upload_image(file, meta.len(), name.as_deref())
                .await?;
            println!("{}", img.id);
            return Ok(());
        }
        let abs = std::path::absolute(path)
            .with_context(|| format!("cannot make {} absolute", path.display()))?;
        let req = LoadImage {
            path: abs.to_string_lossy().into_owned(),
            name,
        };
        let mut view = ProgressView::new(std::io::stderr().is_terminal());
        let res = self.api.load_image(&req, view.printer()).await;
        view.done();
        let img = res?;
        println!("{}", img.id);
        Ok(())
    }

    /// Tars `dir` (symlinks as links, nothing outside it) into a temporary file and sends it
    /// to be built.
    pub async fn build_image(
        &self,
        dir: &Path,
        file: Option<&Path>,
        name: &str,
        build_args: &[String],
        target: Option<String>,
    ) -> anyhow::Result<()> {
        let meta =
            std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        anyhow::ensure!(meta.is_dir(), "{} is not a directory", dir.display());
        let dockerfile = match file {
            None => "Dockerfile".to_string(),
            Some(f) => {
                let abs_dir = std::fs::canonicalize(dir)
                    .with_context(|| format!("cannot resolve {}", dir.display()))?;
                let abs = std::fs::canonicalize(f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                let rel = abs.strip_prefix(&abs_dir).map_err(|_| {
                    anyhow::anyhow!(
                        "{} is not inside {}: the Dockerfile must be part of the context",
                        f.display(),
                        dir.display()
                    )
                })?;
                rel.to_string_lossy().into_owned()
            }
        };
        let mut args = std::collections::BTreeMap::new();
        for a in build_args {
            let (k, v) = a
                .split_once('=')
                .with_context(|| format!("--build-arg {a}: use KEY=VALUE"))?;
            args.insert(k.to_string(), v.to_string());
        }
        let tmp = tar_dir(dir).await?;
        let len = tmp.metadata()?.len();
        eprintln!("sending {} ({})", dir.display(), human_size(len));
        let req = BuildImage {
            name: name.to_string(),
            dockerfile: Some(dockerfile),
            target,
            args: (!args.is_empty())
                .then(|| serde_json::to_string(&args))
                .transpose()?,
        };
        let mut view = ProgressView::new(std::io::stderr().is_terminal());
        let res = self
            .api
            .build_image(tokio::fs::File::from_std(tmp), len, &req, view.printer())
            .await;
        view.done();
        let img = res?;
        println!("{}", img.id);
        Ok(())
    }

    pub async fn pull_image(
        &self,
        reference: &str,
        username: Option<String>,
        password: Option<String>,
    ) -> anyhow::Result<()> {
        let req = PullImage {
            reference: reference.to_string(),
            username,
            password,
        };
        let mut view = ProgressView::new(std::io::stderr().is_terminal());
        let res = self.api.pull_image(&req, view.printer()).await;
        view.done();
        let img = res?;
        println!("{}", img.id);
        Ok(())
    }

    pub async fn inspect(&self, name: &str, json: bool) -> anyhow::Result<()> {
        let i = self.api.inspect(name).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&i)?);
        } else {
            print!("{}", render_inspect(&i));
        }
        Ok(())
    }

    pub async fn list_images(&self, json: bool) -> anyhow::Result<()> {
        let images = self.api.images().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&images)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = images
            .iter()
            .map(|i| {
                vec![
                    short_id(&i.id),
                    if i.names.is_empty() {
                        "-".into()
                    } else {
                        i.names.join(",")
                    },
                    human_size(i.size),
                    i.layers.to_string(),
                    i.loaded_at.clone(),
                ]
            })
            .collect();
        print_table(&["ID", "NAMES", "SIZE", "LAYERS", "LOADED"], &rows);
        Ok(())
    }

    pub async fn remove_image(&self, reference: &str) -> anyhow::Result<()> {
        self.api.remove_image(reference).await?;
        Ok(())
    }

    /// Creates and starts a workspace (`req.source` as given on the command line).
    pub async fn up(&self, mut req: CreateWorkspace) -> anyhow::Result<()> {
        req.source = absolute_source(&req.source)?;
        let mut view = ProgressView::new(std::io::stderr().is_terminal());
        let res = self.api.create(&req, view.printer()).await;
        view.done();
        let w = res?;
        println!("workspace {} is {}", w.name, w.state);
        println!("get in with: hearth shell {}", w.name);
        Ok(())
    }

    /// Changes the limits `req` sets, then the idle timeout if given.
    pub async fn update(
        &self,
        name: &str,
        req: &LimitsRequest,
        idle_timeout: Option<u64>,
    ) -> anyhow::Result<()> {
        if *req != LimitsRequest::default() {
            let w = self.api.set_limits(name, req).await?;
            println!("{}: {}", w.name, render_limits(&w.limits));
        }
        if let Some(secs) = idle_timeout {
            let up = hearth_api::WorkspaceUpdate {
                idle_timeout: Some(secs),
            };
            let w = self.api.update_workspace(name, &up).await?;
            println!(
                "{}: idle timeout {}",
                w.name,
                render_idle_timeout(w.idle_timeout)
            );
        }
        Ok(())
    }

    /// Shows the policy when `change` is empty, else has the server edit the deny list
    /// (it validates and applies it).
    pub async fn egress(&self, name: &str, change: &EgressEdit, json: bool) -> anyhow::Result<()> {
        if change.is_empty() {
            let i = self.api.inspect(name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i.egress)?);
            } else {
                print!("{}", render_egress(&i.egress));
            }
            return Ok(());
        }
        let w = self.api.edit_egress(name, change).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&w.egress)?);
        } else if w.egress.deny.is_empty() {
            println!(
                "workspace {}: all egress allowed (node denials still apply)",
                w.name
            );
        } else {
            println!(
                "workspace {}: egress denied to {}",
                w.name,
                w.egress.deny.join(", ")
            );
        }
        Ok(())
    }

    pub async fn list(&self, json: bool) -> anyhow::Result<()> {
        if json {
            let ws = self.api.workspaces().await?;
            println!("{}", serde_json::to_string_pretty(&ws)?);
            return Ok(());
        }
        // Admins see everyone's workspaces, so they get an OWNER column.
        let (ws, me) = tokio::join!(self.api.workspaces(), self.api.me());
        let (ws, admin) = (ws?, me?.admin);
        let now = time::OffsetDateTime::now_utc();
        let rows: Vec<Vec<String>> = ws
            .iter()
            .map(|w| {
                let mut row = vec![
                    w.name.clone(),
                    match &w.paused {
                        Some(_) => format!("{} (PAUSED, see below)", w.state),
                        None => w.state.to_string(),
                    },
                    w.image_name.clone().unwrap_or_else(|| short_id(&w.image)),
                    w.ip.clone().unwrap_or_else(|| "-".into()),
                    match (&w.snapshot_error, &w.last_snapshot) {
                        (Some(_), _) => "FAILED (see below)".into(),
                        (None, Some(id)) => id.chars().take(12).collect(),
                        (None, None) => "-".into(),
                    },
                    last_active(w.last_active.as_deref(), now),
                    w.created_at.clone(),
                ];
                if admin {
                    row.insert(1, w.owner.clone());
                }
                row
            })
            .collect();
        let mut header = vec![
            "NAME",
            "STATE",
            "IMAGE",
            "IP",
            "SNAPSHOT",
            "LAST ACTIVE",
            "CREATED",
        ];
        if admin {
            header.insert(1, "OWNER");
        }
        print_table(&header, &rows);
        for w in &ws {
            if let Some(p) = &w.paused {
                eprintln!("warning: {}: {p}", w.name);
            }
            if let Some(e) = &w.snapshot_error {
                eprintln!(
                    "warning: {}: last snapshot failed (local data kept, retrying): {e}",
                    w.name
                );
            }
        }
        Ok(())
    }

    pub async fn start(&self, name: &str) -> anyhow::Result<()> {
        let w = self.api.start(name).await?;
        println!("workspace {} is {}", w.name, w.state);
        Ok(())
    }

    pub async fn stop(&self, name: &str) -> anyhow::Result<()> {
        let w = self.api.stop(name).await?;
        println!("workspace {} is {}", w.name, w.state);
        if let Some(e) = &w.snapshot_error {
            eprintln!("warning: final snapshot failed (local data kept, retrying): {e}");
        }
        Ok(())
    }

    pub async fn remove(&self, name: &str, purge: bool) -> anyhow::Result<()> {
        self.api.remove(name, purge).await?;
        if purge {
            println!("workspace {name} removed, its snapshots too");
            return Ok(());
        }
        // What the server kept: the newest removal of that name, if it keeps any.
        let kept = self.api.deleted().await.ok().and_then(|v| {
            v.into_iter()
                .find(|d| d.name == name)
                .map(|d| (d.expires_at, d.snapshots.len()))
        });
        match kept {
            Some((until, n)) => println!(
                "workspace {name} removed; its {n} snapshot(s) are kept until {until} \
                 (hearth restore {name} brings it back, hearth snapshots --deleted lists them)"
            ),
            None => println!("workspace {name} removed, its snapshots too"),
        }
        Ok(())
    }

    pub async fn logs(&self, name: &str, follow: bool) -> anyhow::Result<()> {
        if follow {
            let mut out = std::io::stdout();
            return self
                .api
                .follow_logs(name, |chunk| {
                    out.write_all(chunk).and_then(|()| out.flush())
                })
                .await
                .with_context(|| format!("cannot follow the logs of {name}"));
        }
        let bytes = self
            .api
            .logs(name)
            .await
            .with_context(|| format!("cannot read logs of {name}"))?;
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)
            .and_then(|()| out.flush())
            .context("cannot write to stdout")?;
        Ok(())
    }
}

/// `0`: never; else `30m`, `2h 30m`.
fn render_idle_timeout(secs: u64) -> String {
    if secs == 0 {
        "never (0)".into()
    } else {
        humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
    }
}

/// `3m ago` from an RFC 3339 time (the largest unit only); `-` when unknown.
fn last_active(at: Option<&str>, now: time::OffsetDateTime) -> String {
    let Some(at) = at else {
        return "-".into();
    };
    let Ok(t) = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
    else {
        return at.to_string();
    };
    let secs = (now - t).whole_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn short_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.chars().take(12).collect()
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Shows streamed progress: on a terminal, successive lines about the same blob overwrite
/// each other; elsewhere every line is kept.
struct ProgressView {
    tty: bool,
    /// Key of the line left open (no newline yet) on the terminal.
    open: Option<String>,
}

/// `layer 1/2 sha256:abc: 1 MB / 2 MB` is about blob `layer 1/2 sha256:abc`.
fn blob_key(line: &str) -> Option<&str> {
    let at = line.find(" sha256:")?;
    let end = at + line[at..].find(": ")?;
    Some(&line[..end])
}

impl ProgressView {
    fn new(tty: bool) -> Self {
        ProgressView { tty, open: None }
    }

    /// What to write to stderr for one progress line.
    fn render(&mut self, line: &str) -> String {
        if !self.tty {
            return format!("{line}\n");
        }
        let key = blob_key(line).map(str::to_string);
        let out = match (&self.open, &key) {
            (Some(open), Some(k)) if open == k => format!("\r\x1b[K{line}"),
            (Some(_), _) => format!("\n{line}"),
            (None, _) => line.to_string(),
        };
        match key {
            Some(k) => {
                self.open = Some(k);
                out
            }
            None => {
                self.open = None;
                out + "\n"
            }
        }
    }

    /// Ends a line left open.
    fn finish(&mut self) -> String {
        match self.open.take() {
            Some(_) => "\n".into(),
            None => String::new(),
        }
    }

    /// A callback that shows each progress line on stderr.
    fn printer(&mut self) -> impl FnMut(&str) + '_ {
        |line| {
            let _ = std::io::stderr().write_all(self.render(line).as_bytes());
        }
    }

    /// Ends the progress display on stderr.
    fn done(&mut self) {
        let _ = std::io::stderr().write_all(self.finish().as_bytes());
    }
}

fn render_egress(e: &EgressInfo) -> String {
    let deny = if e.deny.is_empty() {
        "- (everything else allowed)".to_string()
    } else {
        e.deny.join(", ")
    };
    format!(
        "egress deny: {deny}
node deny:   {}
connections: {} new/s (burst {}), {} at once
",
        e.node_deny.join(", "),
        e.rate,
        e.burst,
        e.max_conns
    )
}

fn render_limits(l: &WorkspaceLimits) -> String {
    let cpus = match l.cpus_milli {
        0 => String::new(),
        m => format!(", cpus {}", cores(m)),
    };
    format!(
        "memory {}, disk {}, pids {}, cpu weight {}{cpus}",
        human_size(l.memory_bytes),
        human_size(l.disk_bytes),
        l.pids,
        l.cpu_weight
    )
}

/// Thousandths of a core as cores: 1500 -> `1.5`, 2000 -> `2`.
fn cores(milli: u64) -> String {
    let s = format!("{}.{:03}", milli / 1000, milli % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One line of the CPU controller's view: class, knobs in force, recent use and budget.
fn render_cpu(c: &hearth_api::CpuInfo) -> String {
    let class = match c.class {
        hearth_api::CpuClass::Interactive => "interactive",
        hearth_api::CpuClass::Batch => "batch",
        hearth_api::CpuClass::Limited => "limited",
        hearth_api::CpuClass::Unmanaged => "unmanaged",
    };
    let quota = match c.quota_millicores {
        Some(q) => format!("quota {} cores", cores(q)),
        None => "no quota".into(),
    };
    let pressure = match c.pressure_some_avg10 {
        Some(p) => format!(", waiting {p:.1}%"),
        None => String::new(),
    };
    format!(
        "{class}{} since {}: weight {}, {quota}; using {} cores{pressure}, budget {:.1}s, throttled {:.1}s",
        if c.idle { " (idle)" } else { "" },
        c.since,
        c.weight,
        cores(c.usage_millicores),
        c.budget_ms as f64 / 1000.0,
        c.throttled_us_total as f64 / 1e6,
    )
}

fn render_inspect(i: &WorkspaceInspect) -> String {
    let w = &i.workspace;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut rows: Vec<(&str, String)> = vec![
        ("id", w.id.clone()),
        ("name", w.name.clone()),
        ("state", w.state.to_string()),
        (
            "image",
            match &w.image_name {
                Some(n) => format!("{n} ({})", short_id(&w.image)),
                None => w.image.clone(),
            },
        ),
        ("source", w.source.clone()),
        (
            "uid/gid range",
            format!("{}..{} (host)", i.uid_range.first, i.uid_range.last),
        ),
        ("pid", opt(i.pid.map(|p| p.to_string()))),
        ("limits", render_limits(&w.limits)),
    ];
    if let Some(e) = &w.error {
        rows.push(("error", e.clone()));
    }
    if let Some(p) = &i.paused {
        rows.push(("paused", p.clone()));
    }
    if let Some(h) = &i.hydration {
        let mut v = format!(
            "{}/{} files, {}/{} from snapshot {}{}",
            h.files_done,
            h.files_total,
            human_size(h.bytes_done),
            human_size(h.bytes_total),
            h.snapshot,
            if h.active { "" } else { " (resumes at start)" }
        );
        if let Some(e) = &h.last_error {
            v.push_str(&format!("; {} failed fetches, last: {e}", h.failures));
        }
        rows.push(("hydrating", v));
    }
    match &i.network {
        Some(n) => {
            rows.push(("ip", format!("{}/{}", n.ip, n.prefix_len)));
            rows.push(("gateway", n.gateway.clone()));
            rows.push((
                "host veth",
                format!("{} (bridge {})", opt(n.host_veth.clone()), n.bridge),
            ));
            rows.push(("netns", n.netns.clone()));
        }
        None => rows.push(("network", "-".into())),
    }
    if i.cgroups.is_empty() {
        rows.push(("cgroups", "-".into()));
    }
    for (n, c) in i.cgroups.iter().enumerate() {
        rows.push((if n == 0 { "cgroups" } else { "" }, c.clone()));
    }
    let e = &i.egress;
    rows.push((
        "egress deny",
        if e.deny.is_empty() {
            "- (everything else allowed)".into()
        } else {
            e.deny.join(", ")
        },
    ));
    rows.push(("node deny", e.node_deny.join(", ")));
    rows.push((
        "connections",
        format!(
            "{} new/s (burst {}), {} at once",
            e.rate, e.burst, e.max_conns
        ),
    ));
    let u = &i.usage;
    rows.push((
        "cpu",
        match (u.cpu_ns, u.cpu_percent) {
            (Some(ns), Some(p)) => format!("{:.2}s total, {p:.1}% now", ns as f64 / 1e9),
            (Some(ns), None) => format!("{:.2}s total", ns as f64 / 1e9),
            _ => "-".into(),
        },
    ));
    if let Some(c) = &i.cpu {
        rows.push(("cpu control", render_cpu(c)));
    }
    rows.push((
        "memory",
        match (u.memory_bytes, u.memory_high_bytes) {
            (Some(m), Some(h)) => format!("{} (reclaim above {})", human_size(m), human_size(h)),
            (m, _) => opt(m.map(human_size)),
        },
    ));
    if let Some(n) = u.oom_kill_count.filter(|&n| n > 0) {
        rows.push(("oom kills", format!("{n} since start")));
    }
    for (n, k) in i.oom_kills.iter().enumerate() {
        let pid = match k.pid {
            Some(p) => format!("pid {p}, host pid {}", k.host_pid),
            None => format!("host pid {}", k.host_pid),
        };
        let why = match k.limit_bytes {
            Some(l) => format!("limit {}", human_size(l)),
            None => "host out of memory".into(),
        };
        rows.push((
            if n == 0 { "killed (oom)" } else { "" },
            format!("{} {} ({pid}), {why}", k.at, k.process),
        ));
    }
    rows.push(("pids", opt(u.pids.map(|p| p.to_string()))));
    rows.push((
        "disk",
        format!(
            "{} of {} used",
            human_size(u.disk_bytes),
            human_size(u.disk_size)
        ),
    ));
    rows.push((
        "snapshots",
        i.store.as_ref().map_or_else(
            || "- (store not readable)".into(),
            |s| {
                format!(
                    "{} in the store, {} stored ({} only theirs)",
                    s.snapshots,
                    human_size(s.referenced_bytes),
                    human_size(s.unique_bytes)
                )
            },
        ),
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| {
            let label = if k.is_empty() {
                String::new()
            } else {
                format!("{k}:")
            };
            format!("{label:<w$} {v}\n", w = width + 1)
        })
        .collect()
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = *w));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// `dir` as a tar (symlinks as links, nothing outside it) in an unlinked temporary file,
/// read from its start: a build context to send.
pub(crate) async fn tar_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let tmp = tempfile::tempfile().context("cannot create a temporary file")?;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
        let mut b = tar::Builder::new(std::io::BufWriter::new(tmp));
        b.follow_symlinks(false);
        b.append_dir_all(".", &dir)
            .with_context(|| format!("cannot read {}", dir.display()))?;
        let mut f = b.into_inner()?.into_inner().map_err(|e| e.into_error())?;
        use std::io::Seek;
        f.rewind()?;
        Ok(f)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_sources_are_recognised() {
        assert!(is_remote("https://github.com/a/b.git"));
        assert!(is_remote("git@github.com:a/b.git"));
        assert!(!is_remote("/src/repo"));
        assert!(!is_remote("repo"));
        assert!(!is_remote("./dir:with/colon"));
    }

    #[test]
    fn local_sources_become_absolute() {
        let s = absolute_source("some/repo").unwrap();
        assert!(s.starts_with('/') && s.ends_with("some/repo"), "{s}");
        assert_eq!(absolute_source("https://x/y").unwrap(), "https://x/y");
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
    }

    #[test]
    fn progress_overwrites_only_on_a_terminal() {
        let a1 = "layer 1/2 sha256:aaaa: 1 MB / 2 MB (1 MB/s)";
        let a2 = "layer 1/2 sha256:aaaa: done (2 MB)";
        let b1 = "layer 2/2 sha256:bbbb: 1 MB / 2 MB (1 MB/s)";
        let mut v = ProgressView::new(true);
        let out: String = ["pulling x", a1, a2, b1, "unpacking"]
            .iter()
            .map(|l| v.render(l))
            .collect::<String>()
            + &v.finish();
        assert_eq!(
            out,
            format!("pulling x\n{a1}\r\x1b[K{a2}\n{b1}\nunpacking\n")
        );
        let mut v = ProgressView::new(true);
        assert_eq!(v.render(a1) + &v.finish(), format!("{a1}\n"));
        let mut v = ProgressView::new(false);
        assert_eq!(v.render(a1) + &v.render(a2), format!("{a1}\n{a2}\n"));
        assert_eq!(v.finish(), "");
        assert_eq!(blob_key(a1), Some("layer 1/2 sha256:aaaa"));
        assert_eq!(blob_key("cloning /x"), None);
    }
}
