-- hearth.db as the SQLite code of migrations 1 to 14 wrote it (before PostgreSQL support),
-- dumped with `sqlite3 .dump`: its _sqlx_migrations checksums are those files' SHA-384s.
-- Never regenerate it: db::tests::sqlite_database_from_before_postgres_opens checks that
-- such a database still opens.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
);
INSERT INTO _sqlx_migrations VALUES(1,'workspaces','2026-12-07 02:14:39',1,X'5aa79c18043356926a2dd2e6714bfdaf0b2bdeee18c00bf4c7f862ebbb705b98c386cf3d1ae72d0db52a4d603cf8991d',9590407);
INSERT INTO _sqlx_migrations VALUES(2,'egress','2026-12-07 02:14:39',1,X'5a83373c3bec4c2f92604f09ac53c752fbfce83242e2fe012d0695bae2cf9279faaecf817b008479d087b731bffae77f',11338679);
INSERT INTO _sqlx_migrations VALUES(3,'snapshot status','2026-12-07 02:14:39',1,X'2771ef4e6910e3a23acebdfde50e6bf054d83e86a8e81be7b29f12a35c78d6785b7a1a9215411778716239fcc99a06f2',13154918);
INSERT INTO _sqlx_migrations VALUES(4,'users','2026-12-07 02:14:39',1,X'71a4549a31156c89e383d0a9c3e6fb0ad18dcdacd636140e5cb7e9f544610ec77be18cec46f25c40dcf4182db952a64f',15826063);
INSERT INTO _sqlx_migrations VALUES(5,'deleted workspaces','2026-12-07 02:14:39',1,X'b1d5a9893e56f48b098aca80d8843e5b72759419ee214c131d440e51d5b44c6d79b1eb3e697a761100d8eddca4f3f717',7304201);
INSERT INTO _sqlx_migrations VALUES(6,'ssh keys','2026-12-07 02:14:39',1,X'27716e086646540b75a88bf78c0c6b86e61e34e2a8e06664b3c68d52b75fa0249c7bdc33d7ca3e9c7cfc2b9d513734a7',6900628);
INSERT INTO _sqlx_migrations VALUES(7,'ports','2026-12-07 02:14:39',1,X'e3555519d6f3d228897e68518a6213dd39b13126ab5a62bad30729ebe2b5550ff8694c9d3fe2f5bd55c93acec4b16cfb',9689752);
INSERT INTO _sqlx_migrations VALUES(8,'idle','2026-12-07 02:14:39',1,X'1a57f705e089a43076e81a0716cc9fd14c7090bff32fc6978acad903b8e5e2f61a7ed66ff45e111fe6032d3500139cd6',8087382);
INSERT INTO _sqlx_migrations VALUES(11,'devcontainer','2026-12-07 02:14:39',1,X'22271a12633f92a31eb11c43883d725d49cbaf9a9a0c7d558f10717624f1f7e23e6c03c139b828f08f9cebf719516f3f',2848746);
INSERT INTO _sqlx_migrations VALUES(13,'secrets dotfiles','2026-12-07 02:14:39',1,X'48ff66300afc6cefc0870542a6ffea29f505dd7ad124b482dd494c33c24434c9fec38b854559ac47d7ebf7169fa7eab6',13240428);
INSERT INTO _sqlx_migrations VALUES(14,'prebuilds','2026-12-07 02:14:39',1,X'49e4490826755e0a981763915ca22c8d2bdbee5859d56cd85e2d9ebe0b840cf22a2ae092d3de8cb30cc4e55acef11fa9',7849829);
CREATE TABLE workspaces (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    source TEXT NOT NULL,
    slot BIGINT NOT NULL UNIQUE,
    limits TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
, egress TEXT NOT NULL DEFAULT '{}', last_snapshot TEXT, snapshot_error TEXT, owner TEXT NOT NULL DEFAULT 'admin', idle_timeout BIGINT, last_active TEXT, stop_reason TEXT);
INSERT INTO workspaces VALUES('0123456789abcdef','old-one','sha256:ab','/src/old',3,'{"memory_bytes":4294967296,"pids":4096,"cpu_weight":100}','stopped',NULL,'2026-12-01T10:02:00Z','2026-12-01T10:03:00Z','{}',NULL,NULL,'alice',600,NULL,NULL);
CREATE TABLE users (
    name TEXT PRIMARY KEY NOT NULL,
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
, dotfiles TEXT);
INSERT INTO users VALUES('admin',1,'aa11','2026-12-01T10:00:00Z',NULL);
INSERT INTO users VALUES('alice',0,'bb22','2026-12-01T10:01:00Z',NULL);
CREATE TABLE deleted_workspaces (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    -- The WorkspaceSpec at removal (image, source, limits, egress) as JSON.
    spec TEXT NOT NULL,
    deleted_at TEXT NOT NULL,
    -- When the background store gc forgets its snapshots (RFC 3339, like deleted_at).
    expires_at TEXT NOT NULL
);
INSERT INTO deleted_workspaces VALUES('fedcba9876543210','gone','alice','{"id":"fedcba9876543210","name":"gone","image":"sha256:ab","source":"/src/gone","slot":1,"limits":{"memory_bytes":4294967296,"pids":4096,"cpu_weight":100}}','2026-12-01T10:05:00Z','2026-12-08T10:05:00Z');
CREATE TABLE ssh_keys (
    id          TEXT PRIMARY KEY,
    user_name   TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    public_key  TEXT NOT NULL,
    comment     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE ports (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    port INTEGER NOT NULL,
    public BOOLEAN NOT NULL,
    PRIMARY KEY (workspace_id, port)
);
INSERT INTO ports VALUES('0123456789abcdef',8080,1);
CREATE TABLE workspace_devcontainers (
    id TEXT PRIMARY KEY NOT NULL,
    config TEXT NOT NULL,
    done TEXT
);
CREATE TABLE secrets (
    user_name TEXT NOT NULL,
    repo TEXT NOT NULL DEFAULT '',
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (user_name, repo, key)
);
INSERT INTO secrets VALUES('alice','','TOKEN',X'00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899','2026-12-01T10:04:00Z','2026-12-01T10:04:00Z');
CREATE TABLE workspace_dotfiles (
    id TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL
);
CREATE TABLE prebuilds (
    snapshot TEXT PRIMARY KEY NOT NULL,
    series TEXT NOT NULL,
    owner TEXT NOT NULL,
    -- Made by an admin (or a webhook): every user's `up` may start from it.
    shared BOOLEAN NOT NULL,
    source TEXT NOT NULL,
    -- NULL: the source's default branch.
    branch TEXT,
    commit_id TEXT NOT NULL,
    -- SHA-256 of the devcontainer settings and the image id (see manager/prebuilds.rs).
    config_hash TEXT NOT NULL,
    -- The image id the prebuild ran on.
    image TEXT NOT NULL,
    config_file TEXT NOT NULL,
    created_at TEXT NOT NULL
);
INSERT INTO prebuilds VALUES('snap1','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','admin',1,'/src/old',NULL,'c0ffee','h','sha256:ab','.devcontainer/devcontainer.json','2026-12-01T10:06:00Z');
CREATE INDEX workspaces_owner ON workspaces (owner);
CREATE INDEX deleted_workspaces_name ON deleted_workspaces (name);
CREATE INDEX ssh_keys_user ON ssh_keys (user_name);
CREATE INDEX prebuilds_source ON prebuilds (source, config_hash);
COMMIT;
