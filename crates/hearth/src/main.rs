//! `hearth`: the command line client and `hearth server`.

mod bench;
mod commands;
mod exec;
mod node;
mod server;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands::Commands;

#[derive(Parser, Debug)]
#[command(name = "hearth", version, about = "Self-hosted development workspaces")]
struct Cli {
    /// Where the server keeps its state; the CLI finds server.json and token there.
    #[arg(
        long,
        global = true,
        env = "HEARTH_DATA_DIR",
        default_value = "/var/lib/hearth"
    )]
    data_dir: PathBuf,
    /// Server URL; read from <data-dir>/server.json when absent.
    #[arg(long, global = true, env = "HEARTH_URL")]
    url: Option<String>,
    /// API token (`hearth user add` prints one); read from <data-dir>/token, the admin's,
    /// when absent.
    #[arg(long, global = true, env = "HEARTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the control plane and the local node.
    Server(Box<server::ServerArgs>),
    /// Run a node on this host for a control plane elsewhere (`--server URL`), or manage
    /// the nodes workspaces run on (admins only).
    #[command(args_conflicts_with_subcommands = true)]
    Node {
        #[command(subcommand)]
        cmd: Option<NodeCmd>,
        #[command(flatten)]
        daemon: Box<node::NodeDaemonArgs>,
    },
    /// Manage images.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Create and start a workspace from a git repository.
    Up {
        /// Git URL or local repository path.
        source: String,
        /// Image name or id (default: the repository's devcontainer.json `image`, else the
        /// server's --default-image); a registry reference (host[:port]/name:tag) that is
        /// not present is pulled first.
        #[arg(long)]
        image: Option<String>,
        /// Use the repository's `.devcontainer/NAME/devcontainer.json` (when it has several).
        #[arg(long = "config", value_name = "NAME")]
        devcontainer_config: Option<String>,
        /// Branch to check out (default: the repository's default branch).
        #[arg(long)]
        branch: Option<String>,
        /// Workspace name (default: the repository's name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
        /// Deny outbound traffic to RULE: CIDR[:PORT[-PORT][/tcp|/udp]], e.g. 10.0.0.0/8 or
        /// 192.0.2.7:5432/tcp (repeatable; everything else is allowed).
        #[arg(long = "deny-egress", value_name = "RULE")]
        deny_egress: Vec<String>,
        /// Stop the workspace after this long without a session (SSH, exec, shell,
        /// port-forward) or proxied request, e.g. 2h; 0 never (default: the server's
        /// --idle-timeout).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        idle_timeout: Option<std::time::Duration>,
        /// Run only on a node with label KEY=VALUE (repeatable; `hearth node label`).
        #[arg(long = "node-selector", value_name = "KEY=VALUE")]
        node_selector: Vec<String>,
    },
    /// Change a workspace's limits or idle timeout; the ones not given stay.
    ///
    /// Memory, pids and CPU weight apply at once to a running workspace; the disk grows in
    /// place (running or not) and never shrinks.
    Update {
        name: String,
        #[command(flatten)]
        limits: LimitFlags,
        /// Stop the workspace after this long without a session or proxied request, e.g.
        /// 45m; 0 never.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        idle_timeout: Option<std::time::Duration>,
    },
    /// Show or change a workspace's outbound policy (applied at once while it runs).
    ///
    /// Everything is allowed except the deny list; the node's own addresses, loopback,
    /// link-local (cloud metadata) and operator-chosen networks are always denied.
    Egress {
        name: String,
        /// Add a denied destination: CIDR[:PORT[-PORT][/tcp|/udp]] (repeatable).
        #[arg(long, value_name = "RULE")]
        deny: Vec<String>,
        /// Remove a rule from the deny list (repeatable).
        #[arg(long, value_name = "RULE")]
        undeny: Vec<String>,
        /// Clear the deny list first (then apply any --deny).
        #[arg(long)]
        allow_all: bool,
        #[arg(long)]
        json: bool,
    },
    /// List your workspaces (an admin sees every workspace, with its owner).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a workspace's host details and current resource use.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped workspace.
    Start { name: String },
    /// Stop a workspace; its files are kept.
    Stop { name: String },
    /// Remove a workspace and its files; its snapshots are kept for the server's grace
    /// period (hearth snapshots --deleted, hearth restore).
    Rm {
        name: String,
        /// Forget its snapshots now too (their space is freed by the next store gc); also
        /// works on a workspace already removed.
        #[arg(long)]
        purge: bool,
    },
    /// Show a workspace's console output.
    Logs {
        name: String,
        /// Keep printing what the workspace writes (background lifecycle steps too) until
        /// it stops, or Ctrl-C.
        #[arg(short, long)]
        follow: bool,
    },
    /// List the ports listening in a workspace, with their URLs and visibility.
    Ports {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Make a port's URL public (anyone) or private (its owner and admins; the default).
    Port {
        name: String,
        port: u16,
        #[arg(long, conflicts_with = "private", required_unless_present = "private")]
        public: bool,
        #[arg(long)]
        private: bool,
    },
    /// Forward a TCP port of a workspace to 127.0.0.1:LOCAL here (REMOTE[:LOCAL]; LOCAL
    /// defaults to REMOTE, 0 picks a free one), over the API, until interrupted.
    PortForward { name: String, ports: String },
    /// Run a command in a workspace.
    Exec(ExecArgs),
    /// Open an interactive shell in a workspace.
    Shell { name: String },
    /// Measure create/start/stop/exec latency on this host beside the OCI runtime floor
    /// (needs root; uses its own data dir, bridge and cgroups, not the server's).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Bench {
        #[command(subcommand)]
        what: Option<BenchCmd>,
        /// Workspaces to cycle through (create, start, stop, start, 5 execs, remove).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Image to run: an image archive or OCI layout, as `hearth image load` takes
        /// (scripts/make-image.sh busybox busybox.tar makes a small one).
        /// Required unless a subcommand is given (the derive cannot require it only then).
        #[arg(long, env = "HEARTH_BENCH_IMAGE", required = true)]
        image: Option<PathBuf>,
        /// OCI runtime: crun, runc or a path (default: crun if installed).
        #[arg(long)]
        runtime: Option<String>,
        /// The static hearth-agent binary (default: next to this executable).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Also time `podman run --rm` of the same image (needs podman and skopeo).
        #[arg(long)]
        podman: bool,
        /// Instead, time ls, inspect, create and server restart with this many idle
        /// workspaces running, e.g. 10,100,500 (each needs a loop device, ~64 MiB of
        /// memory limit and a sparse 256 MiB disk).
        #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
        scale: Vec<usize>,
        /// Instead, compare the SSH gateway with OpenSSH's own sshd on this machine: 1 GiB
        /// throughput and one-byte echo round trips (needs openssh-server installed).
        #[arg(long, conflicts_with = "scale")]
        ssh: bool,
        /// Instead (or with --ssh, in the same run), compare the port proxy with direct HTTP
        /// to the workspace: throughput and small-request latency against busybox httpd.
        #[arg(long, conflicts_with = "scale")]
        proxy: bool,
    },
    /// Prebuild a repository: a workspace from its devcontainer.json through
    /// updateContentCommand, kept as a snapshot that `hearth up` of it starts from.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Prebuild {
        #[command(subcommand)]
        cmd: Option<PrebuildCmd>,
        /// Git URL or local repository path.
        /// Required unless a subcommand is given (the derive cannot require it only then).
        #[arg(required = true)]
        source: Option<String>,
        /// Branch to prebuild (default: the repository's default branch, which `up` uses).
        #[arg(long)]
        branch: Option<String>,
        /// Use the repository's `.devcontainer/NAME/devcontainer.json` (when it has several).
        #[arg(long = "config", value_name = "NAME")]
        devcontainer_config: Option<String>,
    },
    /// List the prebuilds your `hearth up` may start from, newest first, then the latest
    /// run of each repository and branch (running, ready, or failed and why).
    Prebuilds {
        #[arg(long)]
        json: bool,
    },
    /// Snapshot a workspace's files now.
    Snapshot { name: String },
    /// List a workspace's snapshots, oldest first, and what they hold in the store.
    Snapshots {
        /// Workspace name (with --deleted: only removed workspaces of that name).
        #[arg(required_unless_present = "deleted")]
        name: Option<String>,
        /// List removed workspaces whose snapshots are still kept.
        #[arg(long)]
        deleted: bool,
        #[arg(long)]
        json: bool,
    },
    /// Bring back a removed workspace from its newest (or the given) snapshot and start it.
    Restore {
        name: String,
        /// Snapshot id (hearth snapshots --deleted lists them).
        #[arg(long)]
        snapshot: Option<String>,
        /// Name of the restored workspace (default: its old name).
        #[arg(long = "as", value_name = "NEWNAME")]
        as_name: Option<String>,
    },
    /// Create and start a new workspace from a snapshot of NAME.
    Fork {
        name: String,
        /// Snapshot id (hearth snapshots NAME lists them).
        #[arg(long)]
        snapshot: String,
        /// Name of the new workspace.
        #[arg(long = "name", value_name = "NEW")]
        new_name: String,
    },
    /// Manage your public keys for the SSH gateway.
    SshKey {
        #[command(subcommand)]
        cmd: SshKeyCmd,
    },
    /// Connect to a workspace with the system's ssh, through the server's SSH gateway.
    Ssh {
        name: String,
        /// Command to run instead of a login shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Write a `Host hearth.NAME` entry for each of your workspaces to ~/.ssh/config
    /// (between marker lines; the rest of the file is left alone).
    ConfigSsh,
    /// Check or clean the snapshot store.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Manage users and their API tokens (admins only), and your dotfiles.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Move a workspace to another node (admins only): it stops, is snapshotted, restored
    /// there and started again if it ran; the old copy goes once the new one is in place.
    Move {
        name: String,
        /// The node to move it to (default: the scheduler picks one).
        #[arg(long)]
        node: Option<String>,
    },
    /// Your secrets: environment variables of your workspaces, stored encrypted.
    Secret {
        #[command(subcommand)]
        cmd: SecretCmd,
    },
    /// Show the audit log, newest first: API changes, SSH logins, port visibility
    /// (admins see everyone's entries, users their own).
    Audit {
        /// Only this user's entries.
        #[arg(long)]
        user: Option<String>,
        /// Only entries since then: an RFC 3339 time or a duration ago (1h, 7d).
        #[arg(long, value_name = "TIME|DURATION", value_parser = parse_since)]
        since: Option<String>,
        /// How many entries (1..=1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Entries before this entry id (the next page).
        #[arg(long, value_name = "ID")]
        before: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Offline maintenance.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
}

#[derive(Subcommand, Debug)]
enum PrebuildCmd {
    /// Remove a prebuild (yours, or any as an admin): `up` no longer starts from it. The
    /// last one of a repository and branch takes its snapshots along and ends webhook
    /// refreshes of it.
    Rm {
        /// Its snapshot id, as `hearth prebuilds` lists it.
        snapshot: String,
    },
    /// List prebuild runs (`hearth prebuild` and webhooks'), newest first, with their
    /// outcome: running, ready, or failed and why.
    Runs {
        #[arg(long)]
        json: bool,
    },
    /// Show a prebuild run and the last lines of its output, also while it runs (a
    /// webhook's prebuild that failed says why here).
    Logs {
        /// The run's id, as `hearth prebuilds` and `hearth prebuild runs` list it.
        id: String,
        #[arg(long)]
        json: bool,
        /// Keep printing its output as it is written until the run ends, then its outcome
        /// (or Ctrl-C).
        #[arg(short, long, conflicts_with = "json")]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Dockerfile builds: a first build and rebuilds after a one-line change through
    /// Hearth's builder workspace, beside `podman build` on the host.
    Build {
        /// Base image archive the bench Dockerfile builds on (e.g. the Debian test image).
        #[arg(long, env = "HEARTH_BENCH_IMAGE")]
        image: PathBuf,
        /// Builder image archive (scripts/make-image.sh builder).
        #[arg(long, env = "HEARTH_TEST_BUILDER")]
        builder: PathBuf,
        /// Rebuilds after a one-line change.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// OCI runtime: crun, runc or a path (default: crun if installed).
        #[arg(long)]
        runtime: Option<String>,
        /// The static hearth-agent binary (default: next to this executable).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// CPU sharing between and inside workspaces under each CPU policy, side by side:
    /// burst from idle, a neighbour's probe latency under a hog / fork bomb / memory
    /// bomb, a probe beside an in-workspace build, fairness of two hogs (several minutes
    /// per mode; --quick for a smoke run).
    Cpu {
        /// Image to run (busybox is enough; the tools are hidden hearth-agent commands).
        #[arg(long, env = "HEARTH_BENCH_IMAGE")]
        image: PathBuf,
        /// CPU policies to compare, each on a node of its own ('' with --loop-cost: none).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "off,static,gitpod,hearth"
        )]
        modes: Vec<String>,
        /// Scenarios to run (default all): burst, hog, forkbomb, membomb, inside, fairness.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Shorter loads and fairness run (a smoke run; the numbers are rougher).
        #[arg(long)]
        quick: bool,
        /// Also measure the hearth controller's own CPU with N running (idle) busybox
        /// workspaces, quiet and with one spinning (each needs a loop device, 64 MiB).
        #[arg(long, value_name = "N")]
        loop_cost: Option<usize>,
        /// OCI runtime: crun, runc or a path (default: crun if installed).
        #[arg(long)]
        runtime: Option<String>,
        /// The static hearth-agent binary (default: next to this executable).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// The control plane's API with thousands of workspaces on simulated nodes: list,
    /// create, start, stop, inspect and the scheduler's decision, p50/p99 on SQLite and
    /// PostgreSQL side by side (targets: API p99 <= 50 ms, scheduler <= 1 ms).
    Api {
        /// Workspaces recorded before timing (half of them running).
        #[arg(long, default_value_t = 10_000)]
        workspaces: usize,
        /// Simulated nodes they spread over.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Timed requests per operation.
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Backends to measure (PostgreSQL: a scratch server the bench starts, from
        /// Debian's postgresql package).
        #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
        backends: Vec<String>,
    },
    /// One scheduler placement decision over simulated fleets of 10 to 1000 nodes (the
    /// pure function; target <= 1 ms).
    Scheduler {
        /// Decisions timed per fleet size.
        #[arg(long, default_value_t = 2000)]
        decisions: usize,
    },
    /// `hearth up` of a repository whose onCreateCommand takes long, without a prebuild
    /// and from one, until the repository's files read back in the running workspace.
    Prebuild {
        /// Image the repository's devcontainer.json names (busybox is enough).
        #[arg(long, env = "HEARTH_BENCH_IMAGE")]
        image: PathBuf,
        /// Seconds its onCreateCommand sleeps.
        #[arg(long, default_value_t = 60)]
        on_create: u64,
        /// Timed ups from the prebuild.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// OCI runtime: crun, runc or a path (default: crun if installed).
        #[arg(long)]
        runtime: Option<String>,
        /// The static hearth-agent binary (default: next to this executable).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// Time to a shell after a restore on a node without a local copy (a move, a start
    /// elsewhere, restore, fork): eager restore beside the default lazy one.
    Move {
        /// Image the workspaces run (busybox is enough).
        #[arg(long, env = "HEARTH_BENCH_IMAGE")]
        image: PathBuf,
        /// Workspace sizes in GB, comma separated (needs about 3x the largest free in
        /// /var/tmp).
        #[arg(long, value_delimiter = ',', default_value = "1,5")]
        sizes: Vec<u64>,
        /// OCI runtime: crun, runc or a path (default: crun if installed).
        #[arg(long)]
        runtime: Option<String>,
        /// The static hearth-agent binary (default: next to this executable).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum SshKeyCmd {
    /// Register a public key (e.g. ~/.ssh/id_ed25519.pub).
    Add { file: PathBuf },
    /// List your keys.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a key by id or fingerprint.
    Rm { key: String },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Load an OCI image layout (directory or tar archive) from this machine.
    Load {
        path: PathBuf,
        /// Name to give the image, e.g. busybox:latest.
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull an image from an OCI registry (loopback registries over plain http).
    Pull {
        /// e.g. registry.example.com/team/img:1 or 127.0.0.1:5000/busybox
        reference: String,
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the password from stdin (first line).
        #[arg(long, requires = "username")]
        password_stdin: bool,
    },
    /// Build an image from a Dockerfile: DIR is sent as the build context and built with
    /// podman in your builder workspace on the server (never on its host); the image is
    /// loaded under --name.
    Build {
        dir: PathBuf,
        /// The Dockerfile, a path inside DIR (default DIR/Dockerfile).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Name the image gets, e.g. team/app:1.
        #[arg(long)]
        name: String,
        /// A build arg, KEY=VALUE (repeatable).
        #[arg(long = "build-arg", value_name = "KEY=VALUE")]
        build_args: Vec<String>,
        /// The stage to build.
        #[arg(long)]
        target: Option<String>,
    },
    /// List loaded images.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove an image no workspace uses.
    Rm { reference: String },
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Verify every snapshot and chunk; exits 1 when something is wrong.
    Fsck {
        #[arg(long)]
        json: bool,
    },
    /// Delete chunks no snapshot needs, after forgetting snapshots outside the policy.
    Gc {
        /// Keep each workspace's newest N snapshots.
        #[arg(long)]
        keep_last: Option<usize>,
        /// Keep each workspace's newest snapshot of each of the last M days.
        #[arg(long)]
        keep_daily: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// List nodes with their state, labels, capacity and workspaces.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Place nothing new on a node and move its workspaces elsewhere.
    Drain { name: String },
    /// Let new workspaces go to a drained node again.
    Undrain { name: String },
    /// Replace a node's labels (what `hearth up --node-selector` matches).
    Label {
        name: String,
        /// KEY=VALUE (repeatable; none clears them).
        labels: Vec<String>,
    },
    /// Forget a node; refused while workspaces are on it. A remote node's credential
    /// goes too: it must join again.
    Rm { name: String },
    /// Make a join token (admins): `hearth node --server URL --join-token T` on another
    /// host exchanges it once for that node's credential.
    Token {
        /// How long the token can be used, e.g. 10m, 1h (at most 7d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
        ttl: std::time::Duration,
        /// Only the node of this name may join with it, replacing its credential if it
        /// joined before (a node whose data dir was lost).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Add a user and print its API token (shown only this once).
    Add {
        /// Lowercase letters, digits and '-', at most 32.
        name: String,
        /// Let the user see every workspace and manage users, images and the store.
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Make a user an admin (users an identity provider signs in start as plain users).
    Admin {
        name: String,
        /// Make the user a plain user again.
        #[arg(long)]
        revoke: bool,
    },
    /// Remove a user; its token stops working at once.
    Rm {
        name: String,
        /// Hand the user's workspaces to USER (without it, a user who owns workspaces
        /// is not removed).
        #[arg(long, value_name = "USER")]
        reassign_to: Option<String>,
    },
    /// Show or set a user's quota (admins; anyone may see their own): workspaces,
    /// running ones, total memory of running ones and total disk. A limit of `none`
    /// lifts it; limits not given keep their value.
    Quota {
        /// The user (default: you).
        #[arg(conflicts_with = "default")]
        user: Option<String>,
        /// The default quota, for users without one of their own.
        #[arg(long)]
        default: bool,
        #[arg(long, value_name = "N|none", value_parser = parse_quota_count)]
        max_workspaces: Option<commands::QuotaValue>,
        #[arg(long, value_name = "N|none", value_parser = parse_quota_count)]
        max_running: Option<commands::QuotaValue>,
        /// Total memory limit of the user's running workspaces (e.g. 8G).
        #[arg(long, value_name = "SIZE|none", value_parser = parse_quota_size)]
        memory: Option<commands::QuotaValue>,
        /// Total disk size of all the user's workspaces (e.g. 100G).
        #[arg(long, value_name = "SIZE|none", value_parser = parse_quota_size)]
        disk: Option<commands::QuotaValue>,
        /// Drop the user's own quota: the default applies to them again.
        #[arg(long, conflicts_with_all = ["default", "max_workspaces", "max_running", "memory", "disk"])]
        reset: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show, set or unset your dotfiles repository: new workspaces clone it to
    /// ~/dotfiles and run its install script (else link its dotfiles into ~).
    Dotfiles {
        /// Git URL or local repository path.
        #[arg(value_name = "URL")]
        repo: Option<String>,
        #[arg(long, conflicts_with = "repo")]
        unset: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SecretCmd {
    /// Set KEY to the value read from stdin (one trailing newline dropped).
    Set {
        key: String,
        /// Only for workspaces of this repository (git URL or local path).
        #[arg(long)]
        repo: Option<String>,
    },
    /// List your secrets (never their values).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret (the one of --repo when given).
    Rm {
        key: String,
        #[arg(long)]
        repo: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Stop every workspace and remove host-wide resources; needs the server stopped.
    Teardown {
        /// Also remove every workspace and delete the database.
        #[arg(long)]
        purge: bool,
        /// The server's `--database`, when it kept its state in PostgreSQL.
        #[arg(long, value_name = "URL", env = "HEARTH_DATABASE_URL", hide_env_values = true,
              value_parser = server::parse_database)]
        database: Option<hearth_server::db::Database>,
    },
}

#[derive(Args, Debug)]
struct ExecArgs {
    name: String,
    /// Allocate a terminal.
    #[arg(short, long)]
    tty: bool,
    /// User name or uid[:gid].
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory inside the workspace.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Extra environment, KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            1
        }
    };
    // Exit without dropping the runtime: a blocking stdin read must not hold us up.
    std::process::exit(code);
}

/// First line of stdin without its line ending, as `docker login --password-stdin` does.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| anyhow::anyhow!("cannot read the password from stdin: {e}"))?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        anyhow::bail!("--password-stdin: stdin holds no password");
    }
    Ok(pw)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let client = || Commands::new(&cli.data_dir, cli.url.as_deref(), cli.token.as_deref());
    match &cli.cmd {
        Cmd::Server(args) => server::serve(&cli.data_dir, args).await.map(|()| 0),
        Cmd::Node { cmd: None, daemon } => node::run(&cli.data_dir, daemon).await.map(|()| 0),
        Cmd::Admin {
            cmd: AdminCmd::Teardown { purge, database },
        } => server::teardown(&cli.data_dir, database.as_ref(), *purge)
            .await
            .map(|()| 0),
        Cmd::Image { cmd } => {
            let c = client()?;
            match cmd {
                ImageCmd::Load { path, name } => c.load_image(path, name.clone()).await?,
                ImageCmd::Pull {
                    reference,
                    username,
                    password_stdin,
                } => {
                    let password = if *password_stdin {
                        Some(read_password()?)
                    } else {
                        None
                    };
                    c.pull_image(reference, username.clone(), password).await?
                }
                ImageCmd::Build {
                    dir,
                    file,
                    name,
                    build_args,
                    target,
                } => {
                    c.build_image(dir, file.as_deref(), name, build_args, target.clone())
                        .await?
                }
                ImageCmd::Ls { json } => c.list_images(*json).await?,
                ImageCmd::Rm { reference } => c.remove_image(reference).await?,
            }
            Ok(0)
        }
        Cmd::Up {
            source,
            image,
            devcontainer_config,
            branch,
            name,
            limits,
            deny_egress,
            idle_timeout,
            node_selector,
        } => {
            let node_selector = commands::parse_labels(node_selector)?;
            client()?
                .up(hearth_api::CreateWorkspace {
                    source: source.clone(),
                    image: image.clone(),
                    name: name.clone(),
                    limits: limits.request(),
                    egress: (!deny_egress.is_empty()).then(|| hearth_api::Egress {
                        deny: deny_egress.clone(),
                    }),
                    idle_timeout: idle_timeout.map(|d| d.as_secs()),
                    devcontainer_config: devcontainer_config.clone(),
                    branch: branch.clone(),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector),
                })
                .await?;
            Ok(0)
        }
        Cmd::Update {
            name,
            limits,
            idle_timeout,
        } => {
            let req = limits.request();
            if req == hearth_api::LimitsRequest::default() && idle_timeout.is_none() {
                anyhow::bail!(
                    "nothing to change: give --memory, --disk, --pids, --cpu-weight or \
                     --idle-timeout (hearth inspect {name} shows the current settings)"
                );
            }
            client()?
                .update(name, &req, idle_timeout.map(|d| d.as_secs()))
                .await
                .map(|()| 0)
        }
        Cmd::Egress {
            name,
            deny,
            undeny,
            allow_all,
            json,
        } => {
            let change = hearth_api::EgressEdit {
                deny: deny.clone(),
                undeny: undeny.clone(),
                allow_all: *allow_all,
            };
            client()?.egress(name, &change, *json).await.map(|()| 0)
        }
        Cmd::Ls { json } => client()?.list(*json).await.map(|()| 0),
        Cmd::Inspect { name, json } => client()?.inspect(name, *json).await.map(|()| 0),
        Cmd::Start { name } => client()?.start(name).await.map(|()| 0),
        Cmd::Stop { name } => client()?.stop(name).await.map(|()| 0),
        Cmd::Rm { name, purge } => client()?.remove(name, *purge).await.map(|()| 0),
        Cmd::Logs { name, follow } => client()?.logs(name, *follow).await.map(|()| 0),
        Cmd::Ports { name, json } => client()?.ports(name, *json).await.map(|()| 0),
        Cmd::Port {
            name, port, public, ..
        } => client()?.set_port(name, *port, *public).await.map(|()| 0),
        Cmd::PortForward { name, ports } => client()?.port_forward(name, ports).await.map(|()| 0),
        Cmd::Prebuild {
            cmd: Some(PrebuildCmd::Rm { snapshot }),
            ..
        } => client()?.prebuild_remove(snapshot).await.map(|()| 0),
        Cmd::Prebuild {
            cmd: Some(PrebuildCmd::Runs { json }),
            ..
        } => client()?.prebuild_runs(*json).await.map(|()| 0),
        Cmd::Prebuild {
            cmd: Some(PrebuildCmd::Logs { id, json, follow }),
            ..
        } => client()?
            .prebuild_logs(id, *json, *follow)
            .await
            .map(|()| 0),
        Cmd::Prebuild {
            source,
            branch,
            devcontainer_config,
            ..
        } => client()?
            .prebuild(hearth_api::CreatePrebuild {
                source: source.clone().unwrap_or_default(),
                branch: branch.clone(),
                devcontainer_config: devcontainer_config.clone(),
            })
            .await
            .map(|()| 0),
        Cmd::Prebuilds { json } => client()?.prebuilds(*json).await.map(|()| 0),
        Cmd::Snapshot { name } => client()?.snapshot(name).await.map(|()| 0),
        Cmd::Snapshots {
            name,
            deleted: true,
            json,
        } => client()?.deleted(name.as_deref(), *json).await.map(|()| 0),
        Cmd::Snapshots { name, json, .. } => {
            let name = name.as_deref().unwrap_or_default();
            client()?.snapshots(name, *json).await.map(|()| 0)
        }
        Cmd::Restore {
            name,
            snapshot,
            as_name,
        } => client()?
            .restore(name, snapshot.clone(), as_name.clone())
            .await
            .map(|()| 0),
        Cmd::Fork {
            name,
            snapshot,
            new_name,
        } => client()?.fork(name, snapshot, new_name).await.map(|()| 0),
        Cmd::Store { cmd } => {
            let c = client()?;
            match cmd {
                StoreCmd::Fsck { json } => c.store_fsck(*json).await?,
                StoreCmd::Gc {
                    keep_last,
                    keep_daily,
                } => {
                    c.store_gc(hearth_api::StoreGc {
                        keep_last: *keep_last,
                        keep_daily: *keep_daily,
                    })
                    .await?
                }
            }
            Ok(0)
        }
        Cmd::User { cmd } => {
            let c = client()?;
            match cmd {
                UserCmd::Add { name, admin } => c.user_add(name, *admin).await?,
                UserCmd::Ls { json } => c.user_list(*json).await?,
                UserCmd::Admin { name, revoke } => c.user_admin(name, !*revoke).await?,
                UserCmd::Rm { name, reassign_to } => {
                    c.user_remove(name, reassign_to.as_deref()).await?
                }
                UserCmd::Dotfiles { repo, unset } => c.dotfiles(repo.as_deref(), *unset).await?,
                UserCmd::Quota {
                    user,
                    default,
                    max_workspaces,
                    max_running,
                    memory,
                    disk,
                    reset,
                    json,
                } => {
                    let change = commands::QuotaChange {
                        max_workspaces: *max_workspaces,
                        max_running: *max_running,
                        memory: *memory,
                        disk: *disk,
                    };
                    if *default {
                        c.default_quota(change, *json).await?
                    } else {
                        c.user_quota(user.as_deref(), change, *reset, *json).await?
                    }
                }
            }
            Ok(0)
        }
        Cmd::Audit {
            user,
            since,
            limit,
            before,
            json,
        } => {
            let filter = hearth_api::client::AuditFilter {
                user: user.clone(),
                since: since.clone(),
                before: before.clone(),
                limit: Some(*limit),
            };
            client()?.audit(&filter, *json).await?;
            Ok(0)
        }
        Cmd::Node { cmd: Some(cmd), .. } => {
            let c = client()?;
            match cmd {
                NodeCmd::Ls { json } => c.node_list(*json).await?,
                NodeCmd::Drain { name } => return c.node_drain(name).await,
                NodeCmd::Undrain { name } => c.node_undrain(name).await?,
                NodeCmd::Label { name, labels } => c.node_label(name, labels).await?,
                NodeCmd::Rm { name } => c.node_remove(name).await?,
                NodeCmd::Token { ttl, node } => c.node_token(*ttl, node.clone()).await?,
            }
            Ok(0)
        }
        Cmd::Move { name, node } => {
            client()?.move_workspace(name, node.as_deref()).await?;
            Ok(0)
        }
        Cmd::Secret { cmd } => {
            let c = client()?;
            match cmd {
                SecretCmd::Set { key, repo } => c.secret_set(key, repo.as_deref()).await?,
                SecretCmd::Ls { json } => c.secret_list(*json).await?,
                SecretCmd::Rm { key, repo } => c.secret_remove(key, repo.as_deref()).await?,
            }
            Ok(0)
        }
        Cmd::Exec(a) => {
            let mut env = Vec::new();
            for kv in &a.env {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("-e {kv}: expected KEY=VALUE"))?;
                env.push((k.to_string(), v.to_string()));
            }
            let req = hearth_api::ExecRequest {
                argv: a.command.clone(),
                env,
                cwd: a.workdir.clone(),
                user: a.user.clone(),
                tty: a.tty,
                rows: 0,
                cols: 0,
            };
            exec::exec(&client()?.api, &a.name, req).await
        }
        Cmd::Shell { name } => exec::shell(&client()?.api, name).await,
        Cmd::SshKey { cmd } => {
            let c = client()?;
            match cmd {
                SshKeyCmd::Add { file } => c.ssh_key_add(file).await?,
                SshKeyCmd::Ls { json } => c.ssh_key_ls(*json).await?,
                SshKeyCmd::Rm { key } => c.ssh_key_rm(key).await?,
            }
            Ok(0)
        }
        Cmd::Ssh { name, command } => client()?.ssh(name, command).await,
        Cmd::ConfigSsh => client()?.config_ssh().await.map(|()| 0),
        Cmd::Bench {
            what:
                Some(BenchCmd::Build {
                    image,
                    builder,
                    runs,
                    runtime,
                    agent,
                }),
            ..
        } => {
            let agent = bench_agent(agent)?;
            bench::run_build(bench::BuildArgs {
                base: image.clone(),
                builder: builder.clone(),
                runs: *runs,
                agent,
                runtime: runtime.clone(),
            })
            .await
            .map(|()| 0)
        }
        Cmd::Bench {
            what:
                Some(BenchCmd::Cpu {
                    image,
                    modes,
                    scenarios,
                    quick,
                    loop_cost,
                    runtime,
                    agent,
                }),
            ..
        } => {
            let agent = bench_agent(agent)?;
            bench::run_cpu(bench::CpuArgs {
                image: image.clone(),
                agent,
                runtime: runtime.clone(),
                modes: modes
                    .iter()
                    .filter(|m| !m.is_empty())
                    .map(|m| bench::CpuMode::parse(m))
                    .collect::<anyhow::Result<_>>()?,
                scenarios: scenarios
                    .iter()
                    .map(|s| bench::CpuScenario::parse(s))
                    .collect::<anyhow::Result<_>>()?,
                quick: *quick,
                loop_cost: *loop_cost,
            })
            .await
            .map(|()| 0)
        }
        Cmd::Bench {
            what:
                Some(BenchCmd::Api {
                    workspaces,
                    nodes,
                    samples,
                    backends,
                }),
            ..
        } => bench::run_api(bench::ApiArgs {
            workspaces: *workspaces,
            nodes: *nodes,
            samples: *samples,
            backends: backends.clone(),
        })
        .await
        .map(|()| 0),
        Cmd::Bench {
            what: Some(BenchCmd::Scheduler { decisions }),
            ..
        } => {
            bench::run_scheduler(&[10, 100, 300, 1000], *decisions);
            Ok(0)
        }
        Cmd::Bench {
            what:
                Some(BenchCmd::Prebuild {
                    image,
                    on_create,
                    runs,
                    runtime,
                    agent,
                }),
            ..
        } => bench::run_prebuild(bench::PrebuildArgs {
            image: image.clone(),
            agent: bench_agent(agent)?,
            runtime: runtime.clone(),
            on_create: *on_create,
            runs: *runs,
        })
        .await
        .map(|()| 0),
        Cmd::Bench {
            what:
                Some(BenchCmd::Move {
                    image,
                    sizes,
                    runtime,
                    agent,
                }),
            ..
        } => bench::run_move(bench::MoveArgs {
            image: image.clone(),
            agent: bench_agent(agent)?,
            runtime: runtime.clone(),
            sizes: sizes.clone(),
        })
        .await
        .map(|()| 0),
        Cmd::Bench {
            what: None,
            runs,
            image,
            runtime,
            agent,
            podman,
            scale,
            ssh,
            proxy,
        } => {
            let agent = bench_agent(agent)?;
            let image = image.as_ref().ok_or_else(|| {
                anyhow::anyhow!("hearth bench needs --image IMAGE (or HEARTH_BENCH_IMAGE)")
            })?;
            if *ssh || *proxy {
                return bench::run_access(bench::AccessArgs {
                    image: image.clone(),
                    agent,
                    runtime: runtime.clone(),
                    ssh: *ssh,
                    proxy: *proxy,
                })
                .await
                .map(|()| 0);
            }
            if !scale.is_empty() {
                return bench::run_scale(bench::ScaleArgs {
                    tiers: scale.clone(),
                    image: image.clone(),
                    agent,
                    runtime: runtime.clone(),
                })
                .await
                .map(|()| 0);
            }
            bench::run(bench::BenchArgs {
                runs: *runs,
                image: image.clone(),
                agent,
                runtime: runtime.clone(),
                podman: *podman,
            })
            .await
            .map(|()| 0)
        }
    }
}

/// `--agent`, else the hearth-agent next to this executable.
fn bench_agent(agent: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    agent
        .clone()
        .or_else(server::agent_next_to_exe)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "hearth-agent not found next to the hearth binary: build it with \
             scripts/build.sh or pass --agent PATH"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_cpu_is_a_subcommand_with_its_own_image() {
        let cli = Cli::try_parse_from([
            "hearth",
            "bench",
            "cpu",
            "--image",
            "bb.tar",
            "--modes",
            "off,hearth",
            "--quick",
            "--scenarios",
            "fairness,membomb",
        ])
        .unwrap();
        let Cmd::Bench {
            what:
                Some(BenchCmd::Cpu {
                    image,
                    modes,
                    scenarios,
                    quick,
                    ..
                }),
            ..
        } = cli.cmd
        else {
            panic!("not bench cpu")
        };
        assert_eq!(image, PathBuf::from("bb.tar"));
        assert_eq!(modes, vec!["off", "hearth"]);
        assert_eq!(
            scenarios
                .iter()
                .map(|s| bench::CpuScenario::parse(s).unwrap())
                .collect::<Vec<_>>(),
            [bench::CpuScenario::Fairness, bench::CpuScenario::MemBomb]
        );
        assert!(bench::CpuScenario::parse("bombs").is_err());
        assert!(quick);
        // The plain bench still parses its own flags.
        let cli = Cli::try_parse_from(["hearth", "bench", "--image", "bb.tar", "--runs", "3"]);
        assert!(matches!(
            cli.unwrap().cmd,
            Cmd::Bench {
                what: None,
                runs: 3,
                ..
            }
        ));
    }

    #[test]
    fn exec_takes_the_command_after_options() {
        let cli = Cli::try_parse_from([
            "hearth", "exec", "ws", "-t", "-e", "A=1", "--", "sh", "-c", "exit 3",
        ])
        .unwrap();
        let Cmd::Exec(a) = cli.cmd else {
            panic!("not exec")
        };
        assert_eq!(a.name, "ws");
        assert!(a.tty);
        assert_eq!(a.env, vec!["A=1"]);
        assert_eq!(a.command, vec!["sh", "-c", "exit 3"]);
        let cli = Cli::try_parse_from(["hearth", "exec", "ws", "ls", "-la"]).unwrap();
        let Cmd::Exec(a) = cli.cmd else {
            panic!("not exec")
        };
        assert_eq!(a.command, vec!["ls", "-la"]);
        assert!(Cli::try_parse_from(["hearth", "exec", "ws"]).is_err());
    }

    #[test]
    fn pull_takes_username_and_password_together() {
        let cli = Cli::try_parse_from([
            "hearth",
            "image",
            "pull",
            "127.0.0.1:5000/bb",
            "--username",
            "u",
            "--password-stdin",
        ])
        .unwrap();
        let Cmd::Image {
            cmd:
                ImageCmd::Pull {
                    reference,
                    username,
                    password_stdin,
                },
        } = cli.cmd
        else {
            panic!("not pull")
        };
        assert_eq!(reference, "127.0.0.1:5000/bb");
        assert_eq!(username.as_deref(), Some("u"));
        assert!(password_stdin);
        assert!(Cli::try_parse_from(["hearth", "image", "pull", "r", "--username", "u"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "image", "pull", "r", "--password-stdin"]).is_err());
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(one_line("a\n  b: c\n"), "a b: c");
    }
}

/// Limits a workspace is made or updated with; an absent flag means the default (up) or
/// the current value (update).
#[derive(clap::Args, Debug)]
struct LimitFlags {
    /// Memory limit, e.g. 8G (default 4G).
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Size of the workspace's disk, e.g. 50G (default 20G); it can grow later, not shrink.
    #[arg(long, value_parser = parse_size)]
    disk: Option<u64>,
    /// Maximum processes and threads (default 4096).
    #[arg(long)]
    pids: Option<u64>,
    /// CPU weight against other workspaces, 1..10000 (default 100).
    #[arg(long)]
    cpu_weight: Option<u64>,
    /// Cores the workspace may use over the long run, e.g. 1.5 (0: no limit, the
    /// default). Short bursts may use more; a workspace that keeps saturating cores is
    /// held to this.
    #[arg(long, value_name = "CORES", value_parser = parse_cpus)]
    cpus: Option<u64>,
}

impl LimitFlags {
    fn request(&self) -> hearth_api::LimitsRequest {
        hearth_api::LimitsRequest {
            memory_bytes: self.memory,
            pids: self.pids,
            cpu_weight: self.cpu_weight,
            disk_bytes: self.disk,
            cpus_milli: self.cpus,
        }
    }
}

/// Cores as a decimal (`1.5`, `0.25`, `2`) to thousandths of a core.
fn parse_cpus(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a number of cores (e.g. 0.5, 2)");
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 3 {
        return Err(format!("{s:?}: at most 3 decimals (thousandths of a core)"));
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    int.checked_mul(1000)
        .and_then(|m| m.checked_add(frac))
        .ok_or_else(bad)
}

/// A byte size: a number with an optional binary unit (K, M, G, T; `B`/`iB` allowed).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 20G)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A quota count, or `none` (no limit).
fn parse_quota_count(s: &str) -> Result<commands::QuotaValue, String> {
    match s.trim() {
        "none" | "unlimited" => Ok(commands::QuotaValue(None)),
        t => t
            .parse()
            .map(|n| commands::QuotaValue(Some(n)))
            .map_err(|_| format!("{s:?} is not a count or none")),
    }
}

/// A quota size (`8G`), or `none` (no limit).
fn parse_quota_size(s: &str) -> Result<commands::QuotaValue, String> {
    match s.trim() {
        "none" | "unlimited" => Ok(commands::QuotaValue(None)),
        t => parse_size(t).map(|n| commands::QuotaValue(Some(n))),
    }
}

/// `--since`: an RFC 3339 time as it is, or a duration ago as one.
fn parse_since(s: &str) -> Result<String, String> {
    let t = s.trim();
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    if time::OffsetDateTime::parse(t, rfc3339).is_ok() {
        return Ok(t.to_string());
    }
    let ago = humantime::parse_duration(t).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration (1h, 7d)")
    })?;
    let at = time::OffsetDateTime::now_utc()
        - time::Duration::try_from(ago).map_err(|_| format!("{s:?} is too long ago"))?;
    at.format(rfc3339).map_err(|e| e.to_string())
}

/// A duration: `30m`, `2h 30m`, `45s` (humantime units), or bare seconds (`90`, `0`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 30m, 2h, 0): {e}"))
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn cpus_parse_to_millicores() {
        use super::parse_cpus;
        assert_eq!(parse_cpus("1.5"), Ok(1500));
        assert_eq!(parse_cpus("0.25"), Ok(250));
        assert_eq!(parse_cpus(".5"), Ok(500));
        assert_eq!(parse_cpus("2"), Ok(2000));
        assert_eq!(parse_cpus("0"), Ok(0));
        for bad in ["", ".", "-1", "1.2345", "one", "1e3", "1.5.2"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        use super::parse_duration;
        use std::time::Duration;
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h 30m"), Ok(Duration::from_secs(9000)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "m", "-1m", "3 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        use super::parse_size;
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        for bad in ["", "G", "1.5G", "12Q", "-1G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
