//! A private PostgreSQL server in a temporary directory, for tests and `hearth bench api`.
//!
//! Debian's `postgresql` package provides the binaries (`initdb`, `pg_ctl`, `createdb`,
//! `dropdb`); the server runs as user `postgres` (PostgreSQL refuses root), listens only
//! on a unix socket in its directory, trusts local connections, and skips fsync (nothing
//! it holds outlives it). Databases sort text by ICU's en-US rules, not bytes. The package's own cluster service is not needed. The server is
//! stopped and its directory removed when its last handle is dropped; each
//! [`ScratchDb`] is a fresh database, dropped with its handle.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::Database;

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error(
        "PostgreSQL's initdb not found (looked in $HEARTH_PG_BIN, /usr/lib/postgresql/*/bin \
         and PATH): install Debian's postgresql package (scripts/install-deps.sh --test)"
    )]
    NotInstalled,
    #[error("no user postgres (Debian's postgresql package makes it)")]
    NoUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    Failed {
        what: String,
        status: std::process::ExitStatus,
        output: String,
    },
}

/// A running scratch server; see the module docs.
#[derive(Debug)]
pub struct ScratchPostgres {
    bin: PathBuf,
    /// Holds the cluster (`data/`), the socket and the log; removed on drop.
    dir: tempfile::TempDir,
    /// Run commands as this user (`runuser`), or as ourselves when we are not root.
    user: Option<&'static str>,
}

static SHARED: Mutex<Weak<ScratchPostgres>> = Mutex::new(Weak::new());
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

impl ScratchPostgres {
    /// The process's shared server, started if nobody holds it now: tests running at
    /// once share one (a database each), and it stops once none of them needs it.
    pub fn shared() -> Result<Arc<ScratchPostgres>, ScratchError> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shared.upgrade() {
            return Ok(s);
        }
        let s = Arc::new(ScratchPostgres::start()?);
        *shared = Arc::downgrade(&s);
        Ok(s)
    }

    /// Initializes and starts a new server.
    pub fn start() -> Result<ScratchPostgres, ScratchError> {
        let bin = find_bin()?;
        let user = if nix::unistd::geteuid().is_root() {
            Some("postgres")
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("hearth-pg-")
            .tempdir()
            .map_err(|source| ScratchError::Io {
                what: "cannot make a temporary directory".into(),
                source,
            })?;
        if user.is_some() {
            let (uid, gid) = postgres_ids()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|source| {
                ScratchError::Io {
                    what: format!("cannot give {} to user postgres", dir.path().display()),
                    source,
                }
            })?;
        }
        let pg = ScratchPostgres { bin, dir, user };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=400",
            pg.socket_dir().display()
        );
        pg.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                pg.dir.path().join("log").as_os_str(),
                "-o".as_ref(),
                opts.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "120".as_ref(),
                "start".as_ref(),
            ],
        )
        .map_err(|e| match e {
            ScratchError::Failed {
                what,
                status,
                output,
            } => ScratchError::Failed {
                what,
                status,
                output: format!("{output}\n{}", pg.log()),
            },
            other => other,
        })?;
        Ok(pg)
    }

    /// A new, empty database on this server.
    pub fn database(self: &Arc<Self>) -> Result<ScratchDb, ScratchError> {
        let name = format!(
            "hearth_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        // A locale whose order is not bytes' (as on most real servers), so tests see what
        // an ORDER BY without Dialect::bytewise would.
        self.client(
            "createdb",
            &[
                "--template=template0",
                "--locale-provider=icu",
                "--icu-locale=en-US",
                &name,
            ],
        )?;
        Ok(ScratchDb {
            server: self.clone(),
            name,
        })
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost/{db}?host={}",
            self.socket_dir().display()
        )
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Runs a client tool (`createdb`, `dropdb`) against the server.
    fn client(&self, tool: &str, args: &[&str]) -> Result<(), ScratchError> {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.arg("-h")
            .arg(self.socket_dir())
            .args(["-U", "postgres"])
            .args(args);
        output(cmd, tool)
    }

    /// Runs a server tool (`initdb`, `pg_ctl`) as the server's user.
    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<(), ScratchError> {
        let exe = self.bin.join(tool);
        let mut cmd = match self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.args(args).current_dir(self.dir.path());
        output(cmd, tool)
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let res = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot stop the scratch PostgreSQL server");
        }
    }
}

/// A fresh database on a [`ScratchPostgres`], dropped (its connections closed) with this.
#[derive(Debug)]
pub struct ScratchDb {
    server: Arc<ScratchPostgres>,
    name: String,
}

impl ScratchDb {
    /// A database on the process's shared server.
    pub fn new() -> Result<ScratchDb, ScratchError> {
        ScratchPostgres::shared()?.database()
    }

    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }

    pub fn database(&self) -> Database {
        Database::Postgres(self.url())
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let Err(e) = self.server.client("dropdb", &["--force", &self.name]) {
            tracing::warn!(db = self.name, error = %e, "cannot drop a scratch database");
        }
    }
}

fn output(mut cmd: Command, what: &str) -> Result<(), ScratchError> {
    let out = cmd.output().map_err(|source| ScratchError::Io {
        what: format!("cannot run {what}"),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(ScratchError::Failed {
        what: what.to_string(),
        status: out.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// The directory holding `initdb` and friends: `$HEARTH_PG_BIN`, Debian's newest
/// `/usr/lib/postgresql/<version>/bin`, or wherever PATH finds `initdb`.
fn find_bin() -> Result<PathBuf, ScratchError> {
    if let Some(dir) = std::env::var_os("HEARTH_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(ScratchError::NotInstalled)
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("initdb").is_file())
        .ok_or(ScratchError::NotInstalled)
}

/// Uid and gid of user `postgres`.
fn postgres_ids() -> Result<(u32, u32), ScratchError> {
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => Err(ScratchError::NoUser),
        Err(e) => Err(ScratchError::Io {
            what: "cannot look user postgres up".into(),
            source: e.into(),
        }),
    }
}
