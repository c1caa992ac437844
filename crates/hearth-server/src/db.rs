//! State in SQLite (the default: `hearth.db` in the data dir) or PostgreSQL (several
//! servers, one database), through sqlx with plain SQL.
//!
//! One schema, one set of migrations and one text per query for both: each query is written
//! once inside [`with_pool!`], which compiles it for each backend's own driver (so SQLite
//! keeps its file options and PostgreSQL its native types). Rows are read through
//! [`DbRow`]; the few things the two dialects say differently (row locks, byte-order
//! sorting, a write transaction's start) come from [`Dialect`]. Queries use what both
//! accept: `$N` placeholders, `ON CONFLICT`, `RETURNING`; never `rowid`, `INSERT OR
//! REPLACE`, or an `INTEGER` column read as `i64` (PostgreSQL's is 32 bits: `BIGINT`).
//! Migrations follow the same rule except for SQLite's type name `BLOB`, which
//! PostgreSQL runs as `BYTEA` (see [`postgres_migrator`]).
//!
//! ```ignore
//! pub async fn owner(&self, id: &str) -> Result<Option<String>, StoreError> {
//!     with_pool!(self, p => {
//!         let row = sqlx::query("SELECT owner FROM workspaces WHERE id = $1")
//!             .bind(id)
//!             .fetch_optional(p)
//!             .await
//!             .map_err(query_err(id))?;
//!         row.map(|r| r.try_get("owner").map_err(query_err(id))).transpose()
//!     })
//! }
//! ```

use std::borrow::Cow;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hearth_node::{EgressPolicy, Limits, WorkspaceId, WorkspaceSpec};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Postgres, Sqlite, SqlitePool};

use hearth_api::WorkspaceState;

pub mod audit;
mod deliveries;
mod links;
mod nodes;
mod ports;
mod prebuilds;
pub mod quotas;
pub mod scratch;
mod servers;
mod sessions;
mod users;

pub use deliveries::DeliveryClaim;
pub use links::JoinRefusal;
pub use nodes::NodeRecord;
pub use prebuilds::{PrebuildRecord, PrebuildRunRecord};
pub use quotas::{QuotaExceeded, QuotaLimits, QuotaUsage};
pub use servers::ServerRow;
pub use sessions::{OidcLogin, SessionRecord};
pub use users::{Removal, UserRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connections per server to PostgreSQL (SQLite has its own, smaller, pool).
const PG_CONNECTIONS: u32 = 16;

/// Where the state lives: `hearth server --database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://user:password@host:port/db`; `?host=/run/postgresql`
    /// for a unix socket); the database must exist, its tables are made here.
    Postgres(String),
}

impl Database {
    /// `postgres://...` or `postgresql://...`, `sqlite://PATH` or `sqlite:PATH`.
    pub fn parse(s: &str) -> Result<Database, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            // Checked now, so a typo fails at the command line, not at first use.
            PgConnectOptions::from_str(s).map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
            Ok(Database::Postgres(s.to_string()))
        } else if let Some(path) = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(
                    "sqlite: needs a file path (sqlite:///var/lib/hearth/hearth.db)".into(),
                );
            }
            Ok(Database::Sqlite(PathBuf::from(path)))
        } else {
            Err(format!(
                "unknown database {:?}: use postgres://USER@HOST/DB or sqlite:PATH",
                redact(s)
            ))
        }
    }

    /// How logs and errors name it: never with a password.
    pub fn display(&self) -> String {
        match self {
            Database::Sqlite(p) => p.display().to_string(),
            Database::Postgres(url) => redact(url),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }
}

/// A PostgreSQL URL as user@host:port/db (no password, whatever the URL held); anything
/// else as it is.
fn redact(url: &str) -> String {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return url.to_string();
    }
    match PgConnectOptions::from_str(url) {
        Ok(o) => {
            let host = match o.get_socket() {
                Some(dir) => dir.display().to_string(),
                None => o.get_host().to_string(),
            };
            format!(
                "postgres://{}@{host}:{}/{}",
                o.get_username(),
                o.get_port(),
                o.get_database().unwrap_or("")
            )
        }
        Err(_) => "postgres://(invalid URL)".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {db}: {source}")]
    Open {
        db: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate database {db}: {source}")]
    Migrate {
        db: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("workspace {0} already exists")]
    NameTaken(String),
    /// Another server's create took the slot between our read and our insert.
    #[error("slot {0} is taken")]
    SlotTaken(u32),
    #[error("user {0} already exists")]
    UserTaken(String),
    #[error("database error on users: {0}")]
    Users(#[source] sqlx::Error),
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    #[error("database error on nodes: {0}")]
    Nodes(#[source] sqlx::Error),
    #[error("database error on workspace {id}: {source}")]
    Query {
        id: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("corrupt record for workspace {id}: {message}")]
    Corrupt { id: String, message: String },
}

/// The pool of whichever backend the store was opened on.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the store's pool (`&SqlitePool` or `&PgPool`): the body
/// is compiled once per backend, so a query is written once and runs on both. `?` and
/// `return` in the body act on the enclosing function.
macro_rules! with_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match $store.pool() {
            $crate::db::Pool::Sqlite($p) => $body,
            $crate::db::Pool::Postgres($p) => $body,
        }
    };
}
pub(crate) use with_pool;

/// A value both backends decode (text, integers, booleans, bytes, and options of them).
pub(crate) trait DbValue:
    for<'r> sqlx::Decode<'r, Sqlite>
    + sqlx::Type<Sqlite>
    + for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
{
}

impl<T> DbValue for T where
    T: for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
{
}

/// A row of either backend, so one function decodes a table's rows for both.
pub(crate) trait DbRow {
    fn try_get<T: DbValue>(&self, column: &str) -> Result<T, sqlx::Error>;
}

impl DbRow for SqliteRow {
    fn try_get<T: DbValue>(&self, column: &str) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, column)
    }
}

impl DbRow for PgRow {
    fn try_get<T: DbValue>(&self, column: &str) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, column)
    }
}

/// What the two backends spell differently, asked of the pool inside [`with_pool!`].
pub(crate) trait Dialect {
    type Db: sqlx::Database;
    /// Appended to a `SELECT` whose rows the transaction goes on to change on the strength
    /// of what it read. SQLite has no row locks and needs none: its write transactions
    /// hold the database's write lock from their start ([`Dialect::begin_write`]).
    fn for_update(&self) -> &'static str;
    /// As [`Dialect::for_update`] for rows that must not change or go away meanwhile.
    fn for_share(&self) -> &'static str;
    /// Appended to a text `ORDER BY` column: byte order on both (SQLite's default;
    /// PostgreSQL's default follows the database's locale).
    fn bytewise(&self) -> &'static str;
    /// A transaction that will write: SQLite's `BEGIN IMMEDIATE` takes the write lock up
    /// front, so two such transactions queue instead of failing to upgrade a read lock.
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl Dialect for SqlitePool {
    type Db = Sqlite;
    fn for_update(&self) -> &'static str {
        ""
    }
    fn for_share(&self) -> &'static str {
        ""
    }
    fn bytewise(&self) -> &'static str {
        ""
    }
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error>> + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl Dialect for PgPool {
    type Db = Postgres;
    fn for_update(&self) -> &'static str {
        " FOR UPDATE"
    }
    fn for_share(&self) -> &'static str {
        " FOR SHARE"
    }
    fn bytewise(&self) -> &'static str {
        " COLLATE \"C\""
    }
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Postgres>, sqlx::Error>> + Send
    {
        self.begin()
    }
}

/// The migrations as PostgreSQL runs them: the same files, with SQLite's `BLOB` type (a
/// whole word, in migrations only ever a column type) as `BYTEA`, PostgreSQL's name for
/// it, and SQLite's byte-order collation `BINARY` (only ever after `COLLATE`) as `"C"`.
/// Each keeps its file's checksum, so the rule may grow without failing the check of
/// databases migrated before.
fn postgres_migrator() -> sqlx::migrate::Migrator {
    let migrations = MIGRATOR
        .iter()
        .map(|m| {
            let mut pg = m.clone();
            pg.sql = Cow::Owned(postgres_sql(&m.sql));
            pg
        })
        .collect::<Vec<_>>();
    sqlx::migrate::Migrator {
        migrations: Cow::Owned(migrations),
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

fn postgres_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(if word.eq_ignore_ascii_case("BLOB") {
            "BYTEA"
        } else if word.eq_ignore_ascii_case("BINARY") {
            "\"C\""
        } else {
            word
        });
        word.clear();
    };
    for c in sql.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// One row of `workspaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRecord {
    pub spec: WorkspaceSpec,
    pub state: WorkspaceState,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Id of the last snapshot taken, and the error of the last attempt if it failed.
    pub last_snapshot: Option<String>,
    pub snapshot_error: Option<String>,
    /// Name of the user the workspace belongs to.
    pub owner: String,
    /// The node its calls go to: where its local copy is (or is being made).
    pub node: String,
    /// Labels a node must carry to take it (`hearth up --node-selector`); empty: any.
    pub node_selector: crate::fleet::Labels,
    /// When `last_snapshot` was taken.
    pub last_snapshot_at: Option<String>,
    /// Idle auto-stop (see [`crate::manager::idle`]): seconds (0 never; `None` the
    /// server's default), the last activity flushed here, why it last stopped.
    pub idle: IdleRecord,
}

/// The idle auto-stop columns of a workspace row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdleRecord {
    pub timeout: Option<u64>,
    pub last_active: Option<String>,
    pub stop_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// This server's id ([`Store::set_operator`]), recorded in `op_server` with every
    /// transitional state it writes; shared by clones.
    operator: Arc<std::sync::OnceLock<String>>,
}

/// RFC 3339 with a fixed 9-digit fraction, for rows ordered by time where two can fall in
/// one second (prebuilds of one series made back to back): fixed width keeps the text
/// order the time order.
pub fn now_precise() -> String {
    fixed_time(time::OffsetDateTime::now_utc())
}

/// `t` in [`now_precise`]'s fixed-width form (cutoffs compared with such times as text).
pub fn fixed_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let (d, c) = (t.date(), t.time());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        c.hour(),
        c.minute(),
        c.second(),
        c.nanosecond()
    )
}

/// RFC 3339 UTC time, second precision.
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub(crate) fn query_err(id: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |source| StoreError::Query {
        id: id.to_string(),
        source,
    }
}

/// Whether `e` is a unique (or primary key) violation, on either backend.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

const COLUMNS: &str =
    "id, name, image, source, slot, limits, state, error, created_at, updated_at, egress, \
     last_snapshot, snapshot_error, owner, node, generation, node_selector, last_snapshot_at, \
     op_server";
/// Read with [`COLUMNS`]; written by their own updates (a create sets the timeout after
/// its insert).
const IDLE_COLUMNS: &str = "idle_timeout, last_active, stop_reason";

fn record(row: &impl DbRow) -> Result<WorkspaceRecord, StoreError> {
    let id: String = row.try_get("id").map_err(query_err("?"))?;
    let get_err = |source| StoreError::Query {
        id: id.clone(),
        source,
    };
    let corrupt = |message: String| StoreError::Corrupt {
        id: id.clone(),
        message,
    };
    let slot: i64 = row.try_get("slot").map_err(get_err)?;
    let limits: String = row.try_get("limits").map_err(get_err)?;
    let state: String = row.try_get("state").map_err(get_err)?;
    let egress: String = row.try_get("egress").map_err(get_err)?;
    let idle_timeout: Option<i64> = row.try_get("idle_timeout").map_err(get_err)?;
    let generation: i64 = row.try_get("generation").map_err(get_err)?;
    let selector: Option<String> = row.try_get("node_selector").map_err(get_err)?;
    Ok(WorkspaceRecord {
        spec: WorkspaceSpec {
            id: WorkspaceId::new(id.as_str()).map_err(|e| corrupt(e.to_string()))?,
            name: row.try_get("name").map_err(get_err)?,
            image: row.try_get("image").map_err(get_err)?,
            source: row.try_get("source").map_err(get_err)?,
            slot: u32::try_from(slot).map_err(|_| corrupt(format!("slot {slot} out of range")))?,
            limits: serde_json::from_str::<Limits>(&limits)
                .map_err(|e| corrupt(format!("limits: {e}")))?,
            egress: serde_json::from_str::<EgressPolicy>(&egress)
                .map_err(|e| corrupt(format!("egress: {e}")))?,
            generation: u64::try_from(generation)
                .map_err(|_| corrupt(format!("generation {generation}")))?,
        },
        state: WorkspaceState::parse(&state).ok_or_else(|| corrupt(format!("state {state:?}")))?,
        error: row.try_get("error").map_err(get_err)?,
        created_at: row.try_get("created_at").map_err(get_err)?,
        updated_at: row.try_get("updated_at").map_err(get_err)?,
        last_snapshot: row.try_get("last_snapshot").map_err(get_err)?,
        snapshot_error: row.try_get("snapshot_error").map_err(get_err)?,
        owner: row.try_get("owner").map_err(get_err)?,
        node: row.try_get("node").map_err(get_err)?,
        node_selector: selector
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt(format!("node selector: {e}"))))
            .transpose()?
            .unwrap_or_default(),
        last_snapshot_at: row.try_get("last_snapshot_at").map_err(get_err)?,
        idle: IdleRecord {
            timeout: idle_timeout
                .map(|t| u64::try_from(t).map_err(|_| corrupt(format!("idle timeout {t}"))))
                .transpose()?,
            last_active: row.try_get("last_active").map_err(get_err)?,
            stop_reason: row.try_get("stop_reason").map_err(get_err)?,
        },
    })
}

/// Inserts workspace row `$rec` (a `&WorkspaceRecord`) on connection `$conn` (within a
/// transaction), as `Result<_, sqlx::Error>`.
macro_rules! insert_workspace_row {
    ($conn:expr, $rec:expr, $limits:expr, $egress:expr, $op:expr) => {{
        let s = &$rec.spec;
        sqlx::query(&format!(
            "INSERT INTO workspaces ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        ))
        .bind(s.id.as_str())
        .bind(&s.name)
        .bind(&s.image)
        .bind(&s.source)
        .bind(i64::from(s.slot))
        .bind($limits)
        .bind($rec.state.as_str())
        .bind(&$rec.error)
        .bind(&$rec.created_at)
        .bind(&$rec.updated_at)
        .bind($egress)
        .bind(&$rec.last_snapshot)
        .bind(&$rec.snapshot_error)
        .bind(&$rec.owner)
        .bind(&$rec.node)
        .bind(i64::try_from(s.generation).unwrap_or(i64::MAX))
        .bind(
            (!$rec.node_selector.is_empty())
                .then(|| serde_json::to_string(&$rec.node_selector).unwrap_or_default()),
        )
        .bind(&$rec.last_snapshot_at)
        .bind($op)
        .execute($conn)
        .await
    }};
}

impl Store {
    /// Opens (creating if needed) a SQLite database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Store::connect(&Database::Sqlite(path.to_path_buf())).await
    }

    /// Opens `db` and brings its schema up to date. Servers sharing one PostgreSQL
    /// database may start together: sqlx migrates under a PostgreSQL advisory lock.
    pub async fn connect(db: &Database) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            db: db.display(),
            source,
        };
        let migrate_err = |source| StoreError::Migrate {
            db: db.display(),
            source,
        };
        let pool = match db {
            Database::Sqlite(path) => {
                let opts = SqliteConnectOptions::from_str("sqlite:")
                    .map_err(open_err)?
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(opts)
                    .await
                    .map_err(open_err)?;
                MIGRATOR.run(&pool).await.map_err(migrate_err)?;
                Pool::Sqlite(pool)
            }
            Database::Postgres(url) => {
                let opts = PgConnectOptions::from_str(url).map_err(open_err)?;
                let pool = PgPoolOptions::new()
                    .max_connections(PG_CONNECTIONS)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts)
                    .await
                    .map_err(open_err)?;
                postgres_migrator().run(&pool).await.map_err(migrate_err)?;
                Pool::Postgres(pool)
            }
        };
        Ok(Store {
            pool,
            operator: Default::default(),
        })
    }

    /// For queries kept next to their feature, through [`with_pool!`].
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether this store is on PostgreSQL (several servers may share it).
    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    pub async fn list(&self) -> Result<Vec<WorkspaceRecord>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS}, {IDLE_COLUMNS} FROM workspaces ORDER BY name{}",
                p.bytewise()
            ))
            .fetch_all(p)
            .await
            .map_err(query_err("*"))?;
            rows.iter().map(record).collect()
        })
    }

    pub async fn get(&self, name: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        with_pool!(self, p => {
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS}, {IDLE_COLUMNS} FROM workspaces WHERE name = $1"
            ))
            .bind(name)
            .fetch_optional(p)
            .await
            .map_err(query_err(name))?;
            row.as_ref().map(record).transpose()
        })
    }

    /// Slots in use, ascending.
    pub async fn used_slots(&self) -> Result<Vec<u32>, StoreError> {
        let slots: Vec<i64> = with_pool!(self, p => {
            sqlx::query_scalar("SELECT slot FROM workspaces ORDER BY slot")
                .fetch_all(p)
                .await
                .map_err(query_err("*"))?
        });
        Ok(slots
            .into_iter()
            .filter_map(|s| u32::try_from(s).ok())
            .collect())
    }

    /// The lowest slot no workspace holds ([`lowest_free_slot`] of [`Store::used_slots`]),
    /// found through the slot index instead of reading every row.
    pub async fn free_slot(&self) -> Result<u32, StoreError> {
        let slot: Option<i64> = with_pool!(self, p => {
            sqlx::query_scalar(
                "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM workspaces WHERE slot = 0) THEN 0 \
                 ELSE (SELECT MIN(w.slot) + 1 FROM workspaces w WHERE NOT EXISTS \
                 (SELECT 1 FROM workspaces x WHERE x.slot = w.slot + 1)) END",
            )
            .fetch_one(p)
            .await
            .map_err(query_err("*"))?
        });
        let slot = slot.unwrap_or(0);
        u32::try_from(slot).map_err(|_| StoreError::Corrupt {
            id: "*".into(),
            message: format!("free slot {slot} out of range"),
        })
    }

    /// One page of [`Store::list`]: names after `after` (bytewise), at most `limit`, only
    /// `owner`'s when given, builder workspaces (names under `hide_prefix`) left out, so a
    /// page is short only at the end.
    pub async fn list_page(
        &self,
        owner: Option<&str>,
        after: Option<&str>,
        limit: u32,
        hide_prefix: &str,
    ) -> Result<Vec<WorkspaceRecord>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS}, {IDLE_COLUMNS} FROM workspaces \
                 WHERE ($1 IS NULL OR owner = $1) AND ($2 IS NULL OR name{c} > $2) \
                 AND substr(name, 1, $3) <> $4 \
                 ORDER BY name{c} LIMIT $5",
                c = p.bytewise()
            ))
            .bind(owner)
            .bind(after)
            .bind(i32::try_from(hide_prefix.len()).unwrap_or(i32::MAX))
            .bind(hide_prefix)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
            .map_err(query_err("*"))?;
            rows.iter().map(record).collect()
        })
    }

    /// Inserts a new workspace; a taken name is [`StoreError::NameTaken`], a taken slot
    /// [`StoreError::SlotTaken`] (another server's create got there first).
    pub async fn insert(&self, rec: &WorkspaceRecord) -> Result<(), StoreError> {
        self.insert_or_revive(rec, false).await
    }

    /// The row of a new or revived (`revive`: taken out of `deleted_workspaces` in the same
    /// transaction) workspace.
    async fn insert_or_revive(
        &self,
        rec: &WorkspaceRecord,
        revive: bool,
    ) -> Result<(), StoreError> {
        let s = &rec.spec;
        let id = s.id.as_str();
        let limits = serde_json::to_string(&s.limits).map_err(|e| StoreError::Corrupt {
            id: id.to_string(),
            message: format!("limits: {e}"),
        })?;
        let egress = egress_json(s)?;
        let inserted = with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(query_err(id))?;
            if quotas::is_counted(&s.name) {
                // Locks the owner's row too: two creates cannot both take the last slot.
                quotas::charge_quota!(
                    p,
                    tx,
                    rec.owner.as_str(),
                    QuotaUsage::new_workspace(&s.limits)
                )?;
            } else {
                // The owner stays while its new workspace goes in (users::delete_user).
                sqlx::query(&format!(
                    "SELECT name FROM users WHERE name = $1{}",
                    p.for_share()
                ))
                .bind(&rec.owner)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_err(id))?;
            }
            if revive {
                sqlx::query("DELETE FROM deleted_workspaces WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_err(id))?;
            }
            let op = self.op_for(rec.state);
            match insert_workspace_row!(&mut *tx, rec, limits, egress, op) {
                Ok(_) => tx.commit().await.map(|_| true).map_err(query_err(id))?,
                Err(e) if is_unique_violation(&e) => false,
                Err(e) => return Err(query_err(id)(e)),
            }
        });
        if inserted {
            return Ok(());
        }
        // Which one: the transaction is over, so look as anyone would.
        if self.get(&s.name).await?.is_some() {
            Err(StoreError::NameTaken(s.name.clone()))
        } else if self.used_slots().await?.contains(&s.slot) {
            Err(StoreError::SlotTaken(s.slot))
        } else {
            Err(StoreError::Corrupt {
                id: id.to_string(),
                message: "id already in use".into(),
            })
        }
    }

    /// Sets this store's server id: the operator recorded with transitional states.
    pub fn set_operator(&self, id: &str) {
        let _ = self.operator.set(id.to_string());
    }

    /// This server's id, if set.
    pub fn operator(&self) -> Option<&str> {
        self.operator.get().map(String::as_str)
    }

    /// What `op_server` says with `state`: this server while an operation is under way.
    pub(crate) fn op_for(&self, state: WorkspaceState) -> Option<String> {
        state
            .is_transitional()
            .then(|| self.operator().map(str::to_string))
            .flatten()
    }

    pub async fn set_state(
        &self,
        id: &str,
        state: WorkspaceState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query(
                "UPDATE workspaces SET state = $1, error = $2, updated_at = $3, op_server = $5 \
                 WHERE id = $4",
            )
            .bind(state.as_str())
            .bind(error)
            .bind(now())
            .bind(id)
            .bind(self.op_for(state))
            .execute(p)
            .await
            .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Records a snapshot attempt: a success sets the last snapshot and clears the error,
    /// a failure keeps the last snapshot and sets the error. Only for the placement
    /// `generation` (an attempt on an older copy changes nothing).
    pub async fn set_snapshot_result(
        &self,
        id: &str,
        generation: u64,
        res: Result<&str, &str>,
    ) -> Result<(), StoreError> {
        let generation = i64::try_from(generation).unwrap_or(i64::MAX);
        with_pool!(self, p => {
            match res {
                Ok(snap) => sqlx::query(
                    "UPDATE workspaces SET last_snapshot = $1, last_snapshot_at = $2, \
                     snapshot_error = NULL WHERE id = $3 AND generation = $4",
                )
                .bind(snap)
                .bind(now()),
                Err(e) => sqlx::query(
                    "UPDATE workspaces SET snapshot_error = $1 WHERE id = $2 AND generation = $3",
                )
                .bind(e),
            }
            .bind(id)
            .bind(generation)
            .execute(p)
            .await
            .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Replaces a workspace's egress policy.
    pub async fn set_egress(&self, spec: &WorkspaceSpec) -> Result<(), StoreError> {
        self.set_json(&spec.id, "egress", egress_json(spec)?).await
    }

    /// Replaces a workspace's limits.
    pub async fn set_limits(&self, spec: &WorkspaceSpec) -> Result<(), StoreError> {
        let limits = serde_json::to_string(&spec.limits).map_err(|e| StoreError::Corrupt {
            id: spec.id.to_string(),
            message: format!("limits: {e}"),
        })?;
        self.set_json(&spec.id, "limits", limits).await
    }

    /// Sets JSON column `column` (one of ours, never input) of workspace `id`.
    async fn set_json(
        &self,
        id: &str,
        column: &'static str,
        json: String,
    ) -> Result<(), StoreError> {
        let sql = format!("UPDATE workspaces SET {column} = $1, updated_at = $2 WHERE id = $3");
        with_pool!(self, p => {
            sqlx::query(&sql)
                .bind(&json)
                .bind(now())
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Sets a workspace's idle timeout (`None`: the server's default).
    pub async fn set_idle_timeout(&self, id: &str, secs: Option<u64>) -> Result<(), StoreError> {
        let secs = secs.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
        with_pool!(self, p => {
            sqlx::query("UPDATE workspaces SET idle_timeout = $1, updated_at = $2 WHERE id = $3")
                .bind(secs)
                .bind(now())
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Records when workspace `id` was last active (RFC 3339).
    pub async fn set_last_active(&self, id: &str, at: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("UPDATE workspaces SET last_active = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Records why workspace `id` stopped (`None` clears it, at a start).
    pub async fn set_stop_reason(&self, id: &str, reason: Option<&str>) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("UPDATE workspaces SET stop_reason = $1 WHERE id = $2")
                .bind(reason)
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }

    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("DELETE FROM workspaces WHERE id = $1")
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        self.forget_workspace_dotfiles(id).await?;
        self.forget_handover(id).await?;
        self.forget_devcontainer(id).await
    }

    /// Records the devcontainer settings (JSON) a workspace was made from.
    pub async fn set_devcontainer(&self, id: &str, config: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO workspace_devcontainers (id, config) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET config = excluded.config, done = NULL",
            )
            .bind(id)
            .bind(config)
            .execute(p)
            .await
            .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Gives workspace `to` the settings of `from` and how far its lifecycle got: a fork
    /// starts from `from`'s files, so it is the same devcontainer, past the same steps.
    pub async fn copy_devcontainer(&self, from: &str, to: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO workspace_devcontainers (id, config, done) \
                 SELECT $2, config, done FROM workspace_devcontainers WHERE id = $1",
            )
            .bind(from)
            .bind(to)
            .execute(p)
            .await
            .map_err(query_err(to))?;
        });
        Ok(())
    }

    /// A workspace's devcontainer settings (JSON) and its last finished create-time step.
    pub async fn devcontainer(
        &self,
        id: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        with_pool!(self, p => {
            sqlx::query_as("SELECT config, done FROM workspace_devcontainers WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await
                .map_err(query_err(id))
        })
    }

    /// Replaces the settings, keeping how far the lifecycle got.
    pub async fn update_devcontainer(&self, id: &str, config: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("UPDATE workspace_devcontainers SET config = $2 WHERE id = $1")
                .bind(id)
                .bind(config)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }

    pub async fn set_devcontainer_done(&self, id: &str, step: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("UPDATE workspace_devcontainers SET done = $2 WHERE id = $1")
                .bind(id)
                .bind(step)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Records that workspace `id`'s clone is still to be handed to its session user.
    pub async fn set_handover(&self, id: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("INSERT INTO workspace_handovers (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Whether workspace `id`'s clone is still to be handed over.
    pub async fn handover(&self, id: &str) -> Result<bool, StoreError> {
        with_pool!(self, p => {
            sqlx::query_scalar::<_, String>("SELECT id FROM workspace_handovers WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await
                .map(|r| r.is_some())
                .map_err(query_err(id))
        })
    }

    pub async fn forget_handover(&self, id: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("DELETE FROM workspace_handovers WHERE id = $1")
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }

    async fn forget_devcontainer(&self, id: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("DELETE FROM workspace_devcontainers WHERE id = $1")
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }
}

/// A removed workspace whose snapshots are kept until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedRecord {
    /// As it was at removal; `spec.id` keys its snapshots in the store.
    pub spec: WorkspaceSpec,
    pub owner: String,
    /// RFC 3339.
    pub deleted_at: String,
    pub expires_at: String,
}

fn deleted_record(row: &impl DbRow) -> Result<DeletedRecord, StoreError> {
    let id: String = row.try_get("id").map_err(query_err("?"))?;
    let get_err = |source| StoreError::Query {
        id: id.clone(),
        source,
    };
    let spec: String = row.try_get("spec").map_err(get_err)?;
    let spec: WorkspaceSpec = serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
        id: id.clone(),
        message: format!("deleted workspace spec: {e}"),
    })?;
    if spec.id.as_str() != id {
        return Err(StoreError::Corrupt {
            id,
            message: format!("deleted workspace spec names id {}", spec.id),
        });
    }
    Ok(DeletedRecord {
        spec,
        owner: row.try_get("owner").map_err(get_err)?,
        deleted_at: row.try_get("deleted_at").map_err(get_err)?,
        expires_at: row.try_get("expires_at").map_err(get_err)?,
    })
}

impl Store {
    /// Moves a workspace's row to `deleted_workspaces` in one transaction: from now on
    /// only its snapshots (stored under its id) are left, until `expires_at`.
    pub async fn retire(
        &self,
        rec: &WorkspaceRecord,
        deleted_at: &str,
        expires_at: &str,
    ) -> Result<(), StoreError> {
        let id = rec.spec.id.as_str();
        let spec = serde_json::to_string(&rec.spec).map_err(|e| StoreError::Corrupt {
            id: id.to_string(),
            message: format!("spec: {e}"),
        })?;
        with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(query_err(id))?;
            sqlx::query(
                "INSERT INTO deleted_workspaces (id, name, owner, spec, deleted_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
            )
            .bind(id)
            .bind(&rec.spec.name)
            .bind(&rec.owner)
            .bind(&spec)
            .bind(deleted_at)
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(query_err(id))?;
            sqlx::query("DELETE FROM workspaces WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(query_err(id))?;
            tx.commit().await.map_err(query_err(id))
        })
    }

    /// Removed workspaces, most recently removed first.
    pub async fn deleted(&self) -> Result<Vec<DeletedRecord>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT id, name, owner, spec, deleted_at, expires_at FROM deleted_workspaces \
                 ORDER BY deleted_at{0} DESC, id{0}",
                p.bytewise()
            ))
            .fetch_all(p)
            .await
            .map_err(query_err("*"))?;
            rows.iter().map(deleted_record).collect()
        })
    }

    pub async fn forget_deleted(&self, id: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("DELETE FROM deleted_workspaces WHERE id = $1")
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        self.forget_handover(id).await?;
        self.forget_devcontainer(id).await
    }

    /// Brings a removed workspace back as `rec` (same id, so its snapshots are its own
    /// again), in one transaction; a taken name is [`StoreError::NameTaken`], a taken slot
    /// [`StoreError::SlotTaken`].
    pub async fn revive(&self, rec: &WorkspaceRecord) -> Result<(), StoreError> {
        self.insert_or_revive(rec, true).await
    }
}

fn egress_json(spec: &WorkspaceSpec) -> Result<String, StoreError> {
    serde_json::to_string(&spec.egress).map_err(|e| StoreError::Corrupt {
        id: spec.id.to_string(),
        message: format!("egress: {e}"),
    })
}

/// Lowest slot not in `used` (which is ascending).
pub fn lowest_free_slot(used: &[u32]) -> u32 {
    let mut want = 0;
    for &s in used {
        if s == want {
            want += 1;
        } else if s > want {
            break;
        }
    }
    want
}

/// The same tests on both backends: `on_both_backends!(t)` turns `async fn t(b: Backend)`
/// into tests `t::sqlite` and `t::postgres`; [`testdb::TestDb`] gives each its database.
#[cfg(test)]
pub(crate) mod testdb {
    use super::{scratch::ScratchDb, Database, Store};

    /// A workspace row of user admin in state creating, for tests that put rows in a store.
    pub(crate) fn rec(id: &str, name: &str, slot: u32) -> super::WorkspaceRecord {
        super::WorkspaceRecord {
            spec: super::WorkspaceSpec {
                id: hearth_node::WorkspaceId::new(id).unwrap(),
                name: name.into(),
                image: "sha256:abc".into(),
                source: "/src/x".into(),
                slot,
                limits: hearth_node::Limits::default(),
                egress: hearth_node::EgressPolicy::default(),
                generation: 0,
            },
            state: super::WorkspaceState::Creating,
            error: None,
            created_at: super::now(),
            updated_at: super::now(),
            last_snapshot: None,
            snapshot_error: None,
            owner: "admin".into(),
            node: "local".into(),
            node_selector: Default::default(),
            last_snapshot_at: None,
            idle: super::IdleRecord::default(),
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Backend {
        Sqlite,
        Postgres,
    }

    /// A fresh database of one backend, removed on drop.
    pub(crate) struct TestDb {
        /// The SQLite file's directory (also handy as a data dir).
        pub(crate) dir: tempfile::TempDir,
        pub(crate) database: Database,
        _pg: Option<ScratchDb>,
    }

    impl TestDb {
        pub(crate) fn new(b: Backend) -> TestDb {
            let dir = tempfile::tempdir().unwrap();
            let (database, pg) = match b {
                Backend::Sqlite => (Database::Sqlite(dir.path().join("hearth.db")), None),
                Backend::Postgres => {
                    let db = ScratchDb::new().unwrap();
                    (db.database(), Some(db))
                }
            };
            TestDb {
                dir,
                database,
                _pg: pg,
            }
        }

        pub(crate) async fn store(&self) -> Store {
            Store::connect(&self.database).await.unwrap()
        }
    }

    macro_rules! on_both_backends {
        ($($test:ident),* $(,)?) => {$(
            mod $test {
                #[tokio::test]
                async fn sqlite() {
                    super::$test($crate::db::testdb::Backend::Sqlite).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$test($crate::db::testdb::Backend::Postgres).await
                }
            }
        )*};
    }
    pub(crate) use on_both_backends;
}

#[cfg(test)]
mod tests {
    use super::testdb::{on_both_backends, rec, Backend, TestDb};
    use super::*;

    on_both_backends!(
        removed_rows_keep_their_id_and_come_back_under_it,
        store_round_trips_and_enforces_unique_names,
        concurrent_creates_get_distinct_slots_and_lose_nothing,
        text_sorts_bytewise,
        free_slot_is_the_lowest_gap,
        pages_cover_the_list_once_in_order,
    );

    async fn free_slot_is_the_lowest_gap(b: Backend) {
        let db = TestDb::new(b);
        let store = db.store().await;
        assert_eq!(store.free_slot().await.unwrap(), 0);
        for (i, slot) in [1u32, 2, 4].into_iter().enumerate() {
            store
                .insert(&rec(&format!("aaaaaaaaaa{i:02}"), &format!("w{i}"), slot))
                .await
                .unwrap();
        }
        assert_eq!(store.free_slot().await.unwrap(), 0);
        store.insert(&rec("bbbbbbbbbbbb", "z", 0)).await.unwrap();
        assert_eq!(store.free_slot().await.unwrap(), 3);
        store.insert(&rec("cccccccccccc", "y", 3)).await.unwrap();
        assert_eq!(store.free_slot().await.unwrap(), 5);
        assert_eq!(
            store.free_slot().await.unwrap(),
            lowest_free_slot(&store.used_slots().await.unwrap())
        );
    }

    async fn pages_cover_the_list_once_in_order(b: Backend) {
        let db = TestDb::new(b);
        let store = db.store().await;
        let names = ["b", "a", "B", "builder-x", "c-1", "c", "d"];
        for (i, n) in names.iter().enumerate() {
            let mut r = rec(&format!("dddddddddd{i:02}"), n, i as u32);
            if *n == "d" {
                r.owner = "alice".into();
            }
            store.insert(&r).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .list_page(None, after.as_deref(), 2, "builder-")
                .await
                .unwrap();
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = Some(last.spec.name.clone());
            seen.extend(page.into_iter().map(|r| r.spec.name));
        }
        // Bytewise, as the full list, without the builder.
        let all: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.spec.name)
            .filter(|n| !n.starts_with("builder-"))
            .collect();
        assert_eq!(seen, all);
        assert_eq!(seen, ["B", "a", "b", "c", "c-1", "d"]);
        let alice = store
            .list_page(Some("alice"), None, 10, "builder-")
            .await
            .unwrap();
        assert_eq!(alice.len(), 1);
        assert_eq!(alice[0].spec.name, "d");
    }

    async fn removed_rows_keep_their_id_and_come_back_under_it(b: Backend) {
        let db = TestDb::new(b);
        let store = db.store().await;
        let mut a = rec("aaaaaaaaaaaa", "a", 0);
        a.owner = "alice".into();
        store.insert(&a).await.unwrap();
        store.retire(&a, "t0", "t1").await.unwrap();
        assert!(store.get("a").await.unwrap().is_none());
        // The name is free again; the new workspace is another id.
        store.insert(&rec("bbbbbbbbbbbb", "a", 0)).await.unwrap();
        let d = store.deleted().await.unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (
                d[0].spec.clone(),
                d[0].owner.as_str(),
                d[0].expires_at.as_str()
            ),
            (a.spec.clone(), "alice", "t1")
        );
        // Back under its id: refused while the name is taken, then as another name.
        let mut back = a.clone();
        assert!(matches!(
            store.revive(&back).await,
            Err(StoreError::NameTaken(_))
        ));
        assert_eq!(
            store.deleted().await.unwrap().len(),
            1,
            "a refused revive kept it"
        );
        back.spec.name = "a2".into();
        assert!(
            matches!(store.revive(&back).await, Err(StoreError::SlotTaken(0))),
            "slot 0 is b's"
        );
        assert_eq!(store.deleted().await.unwrap().len(), 1);
        back.spec.slot = 1;
        store.revive(&back).await.unwrap();
        assert!(store.deleted().await.unwrap().is_empty());
        assert_eq!(store.get("a2").await.unwrap().unwrap().spec.id, a.spec.id);
        store.retire(&back, "t2", "t3").await.unwrap();
        store.forget_deleted("aaaaaaaaaaaa").await.unwrap();
        assert!(store.deleted().await.unwrap().is_empty());
    }

    /// A plain pool on a new database file, without the store's migrations: what an
    /// older server left behind is written through it.
    async fn raw_sqlite(path: &std::path::Path) -> sqlx::SqlitePool {
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(path)
            .create_if_missing(true);
        SqlitePoolOptions::new().connect_with(opts).await.unwrap()
    }

    #[tokio::test]
    async fn rows_from_before_egress_allow_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        // A database at migration 1, with a row, as an older server left it.
        {
            let pool = raw_sqlite(&path).await;
            let m = sqlx::migrate::Migrator {
                migrations: std::borrow::Cow::Owned(
                    MIGRATOR.migrations.iter().take(1).cloned().collect(),
                ),
                ..sqlx::migrate::Migrator::DEFAULT
            };
            m.run(&pool).await.unwrap();
            sqlx::query(
                "INSERT INTO workspaces (id, name, image, source, slot, limits, state, \
                 created_at, updated_at) VALUES ('aaaaaaaaaaaa', 'old', 'sha256:x', '/s', 0, \
                 '{\"memory_bytes\":1,\"pids\":1,\"cpu_weight\":1}', 'stopped', 't', 't')",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        let old = store.get("old").await.unwrap().unwrap();
        assert_eq!(old.spec.egress, EgressPolicy::default());
    }

    /// A database written before PostgreSQL support (migrations 1 to 14, as
    /// `testdata/hearth-0014.sql` dumps it: users, a workspace, a secret, a port, a
    /// removed workspace, a prebuild) opens unchanged: the migrations' checksums still
    /// match and its rows read back.
    #[tokio::test]
    async fn sqlite_database_from_before_postgres_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        {
            let pool = raw_sqlite(&path).await;
            sqlx::raw_sql(include_str!("../testdata/hearth-0014.sql"))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        let names: Vec<String> = store
            .users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["admin", "alice"]);
        let ws = store.get("old-one").await.unwrap().unwrap();
        assert_eq!((ws.owner.as_str(), ws.spec.slot), ("alice", 3));
        assert_eq!(
            store.ports(ws.spec.id.as_str()).await.unwrap(),
            [(8080, true)]
        );
        assert_eq!(store.secret_count().await.unwrap(), 1);
        assert_eq!(store.deleted().await.unwrap().len(), 1);
        assert_eq!(store.prebuilds(None).await.unwrap().len(), 1);
        // And it is still written to.
        store.insert(&rec("bbbbbbbbbbbb", "new", 0)).await.unwrap();
        assert_eq!(store.used_slots().await.unwrap(), [0, 3]);
    }

    #[test]
    fn postgres_runs_blob_as_bytea_and_keeps_the_checksums() {
        let pg = postgres_migrator();
        assert_eq!(pg.migrations.len(), MIGRATOR.migrations.len());
        for (p, s) in pg.iter().zip(MIGRATOR.iter()) {
            assert_eq!(p.checksum, s.checksum, "migration {}", s.version);
            assert_eq!(
                p.sql.replace("BYTEA", "BLOB").replace("\"C\"", "BINARY"),
                s.sql,
                "migration {}",
                s.version
            );
        }
        assert_eq!(
            postgres_sql("value BLOB NOT NULL, blobs TEXT, x_blob TEXT, b blob"),
            "value BYTEA NOT NULL, blobs TEXT, x_blob TEXT, b BYTEA"
        );
        assert_eq!(
            postgres_sql("ON t (name COLLATE BINARY)"),
            "ON t (name COLLATE \"C\")"
        );
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            Database::parse("sqlite:///var/lib/h.db").unwrap(),
            Database::Sqlite("/var/lib/h.db".into())
        );
        assert_eq!(
            Database::parse("sqlite:rel.db").unwrap(),
            Database::Sqlite("rel.db".into())
        );
        let pg = Database::parse("postgres://hearth:s3cret@db.example:5433/hearth").unwrap();
        assert!(pg.is_postgres());
        assert_eq!(pg.display(), "postgres://hearth@db.example:5433/hearth");
        let sock = Database::parse("postgresql://u@localhost/d?host=/run/postgresql").unwrap();
        assert_eq!(sock.display(), "postgres://u@/run/postgresql:5432/d");
        for bad in [
            "mysql://x/y",
            "sqlite:",
            "/var/lib/h.db",
            "postgres://u:p@h:notaport/d",
        ] {
            let e = Database::parse(bad).unwrap_err();
            assert!(!e.contains("p@"), "{e}");
        }
    }

    #[test]
    fn lowest_free_slot_fills_gaps() {
        assert_eq!(lowest_free_slot(&[]), 0);
        assert_eq!(lowest_free_slot(&[0, 1, 2]), 3);
        assert_eq!(lowest_free_slot(&[1, 2]), 0);
        assert_eq!(lowest_free_slot(&[0, 2, 3]), 1);
    }

    async fn store_round_trips_and_enforces_unique_names(b: Backend) {
        let db = TestDb::new(b);
        let store = db.store().await;
        let mut a = rec("aaaaaaaaaaaa", "a", 0);
        a.idle.timeout = None;
        store.insert(&a).await.unwrap();
        assert_eq!(store.get("a").await.unwrap().unwrap(), a);
        assert!(matches!(
            store.insert(&rec("bbbbbbbbbbbb", "a", 1)).await,
            Err(StoreError::NameTaken(n)) if n == "a"
        ));
        assert!(matches!(
            store.insert(&rec("bbbbbbbbbbbb", "b", 0)).await,
            Err(StoreError::SlotTaken(0))
        ));
        store.insert(&rec("cccccccccccc", "c", 2)).await.unwrap();
        assert_eq!(store.used_slots().await.unwrap(), vec![0, 2]);
        store
            .set_state("aaaaaaaaaaaa", WorkspaceState::Failed, Some("boom"))
            .await
            .unwrap();
        let got = store.get("a").await.unwrap().unwrap();
        assert_eq!(got.state, WorkspaceState::Failed);
        assert_eq!(got.error.as_deref(), Some("boom"));
        let mut with_policy = got.spec.clone();
        with_policy.egress = EgressPolicy::parse(&["10.0.0.0/8", "1.2.3.4:53/udp"]).unwrap();
        store.set_egress(&with_policy).await.unwrap();
        assert_eq!(
            store.get("a").await.unwrap().unwrap().spec.egress,
            with_policy.egress
        );
        store
            .set_idle_timeout("aaaaaaaaaaaa", Some(u64::MAX))
            .await
            .unwrap();
        store
            .set_last_active("aaaaaaaaaaaa", "2026-01-01T00:00:00Z")
            .await
            .unwrap();
        store
            .set_stop_reason("aaaaaaaaaaaa", Some("idle"))
            .await
            .unwrap();
        let idle = store.get("a").await.unwrap().unwrap().idle;
        assert_eq!(
            idle,
            IdleRecord {
                timeout: Some(i64::MAX as u64),
                last_active: Some("2026-01-01T00:00:00Z".into()),
                stop_reason: Some("idle".into()),
            }
        );
        // Ports: private is no row; rows go with their workspace.
        store
            .set_port_public("aaaaaaaaaaaa", 8080, true)
            .await
            .unwrap();
        store
            .set_port_public("aaaaaaaaaaaa", 8080, true)
            .await
            .unwrap();
        store
            .set_port_public("aaaaaaaaaaaa", 22, true)
            .await
            .unwrap();
        store
            .set_port_public("aaaaaaaaaaaa", 22, false)
            .await
            .unwrap();
        assert_eq!(store.ports("aaaaaaaaaaaa").await.unwrap(), [(8080, true)]);
        assert!(store.port_public("aaaaaaaaaaaa", 8080).await.unwrap());
        assert!(!store.port_public("aaaaaaaaaaaa", 22).await.unwrap());
        // Devcontainer settings: replaced, then the step done kept by an update.
        store.set_devcontainer("aaaaaaaaaaaa", "{}").await.unwrap();
        store
            .set_devcontainer_done("aaaaaaaaaaaa", "onCreate")
            .await
            .unwrap();
        store
            .update_devcontainer("aaaaaaaaaaaa", "{\"x\":1}")
            .await
            .unwrap();
        assert_eq!(
            store.devcontainer("aaaaaaaaaaaa").await.unwrap(),
            Some(("{\"x\":1}".into(), Some("onCreate".into())))
        );
        store.set_devcontainer("aaaaaaaaaaaa", "{}").await.unwrap();
        assert_eq!(
            store.devcontainer("aaaaaaaaaaaa").await.unwrap(),
            Some(("{}".into(), None))
        );
        // Snapshot outcomes: a failure keeps the last good id, a success clears the error.
        store
            .set_snapshot_result("cccccccccccc", 0, Ok("s1"))
            .await
            .unwrap();
        store
            .set_snapshot_result("cccccccccccc", 0, Err("store unreachable"))
            .await
            .unwrap();
        let c = store.get("c").await.unwrap().unwrap();
        assert_eq!(c.last_snapshot.as_deref(), Some("s1"));
        assert_eq!(c.snapshot_error.as_deref(), Some("store unreachable"));
        store.delete("aaaaaaaaaaaa").await.unwrap();
        assert!(store.get("a").await.unwrap().is_none());
        assert!(store.ports("aaaaaaaaaaaa").await.unwrap().is_empty());
        assert_eq!(store.devcontainer("aaaaaaaaaaaa").await.unwrap(), None);
        store.close().await;
        // Reopening keeps data (migrations are not re-applied destructively).
        let store = db.store().await;
        let names: Vec<_> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.spec.name)
            .collect();
        assert_eq!(names, vec!["c"]);
        let c = store.get("c").await.unwrap().unwrap();
        assert_eq!(c.snapshot_error.as_deref(), Some("store unreachable"));
    }

    /// Creates from many servers at once (a store each, as separate processes would have):
    /// every name gets exactly one row, slots never collide, nothing is lost.
    async fn concurrent_creates_get_distinct_slots_and_lose_nothing(b: Backend) {
        const SERVERS: usize = 4;
        const EACH: usize = 6;
        let db = TestDb::new(b);
        let mut stores = Vec::new();
        for _ in 0..SERVERS {
            stores.push(db.store().await);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (s, store) in stores.iter().enumerate() {
            for i in 0..EACH {
                let store = store.clone();
                tasks.spawn(async move {
                    // Each name twice (by two servers): one wins, the other is told so.
                    let name = format!("w{i}-{}", s / 2);
                    let id = format!("{s:02}{i:02}aaaaaaaa");
                    loop {
                        let slot = lowest_free_slot(&store.used_slots().await.unwrap());
                        match store.insert(&rec(&id, &name, slot)).await {
                            Err(StoreError::SlotTaken(_)) => continue,
                            other => return (name, other.map_err(|e| e.to_string())),
                        }
                    }
                });
            }
        }
        let mut won = std::collections::BTreeMap::<String, usize>::new();
        while let Some(res) = tasks.join_next().await {
            let (name, res) = res.unwrap();
            match res {
                Ok(()) => *won.entry(name).or_default() += 1,
                Err(e) => assert!(e.contains("already exists"), "{name}: {e}"),
            }
        }
        assert_eq!(won.len(), SERVERS / 2 * EACH, "{won:?}");
        assert!(won.values().all(|n| *n == 1), "{won:?}");
        let rows = stores[0].list().await.unwrap();
        assert_eq!(rows.len(), SERVERS / 2 * EACH);
        let mut slots: Vec<u32> = rows.iter().map(|r| r.spec.slot).collect();
        slots.sort();
        assert_eq!(
            slots,
            (0..rows.len() as u32).collect::<Vec<_>>(),
            "no gaps, no twins"
        );
    }

    /// Listings sort names byte by byte on both (upper case first, `_` between), whatever
    /// the PostgreSQL database's locale (the scratch server's is ICU's en-US).
    async fn text_sorts_bytewise(b: Backend) {
        let db = TestDb::new(b);
        let store = db.store().await;
        for (i, name) in ["ab", "a_b", "B", "a"].iter().enumerate() {
            store
                .insert(&rec(&format!("{i:012}"), name, i as u32))
                .await
                .unwrap();
        }
        let names: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.spec.name)
            .collect();
        assert_eq!(names, ["B", "a", "a_b", "ab"]);
    }
}
