//! The command line: `contextfs serve` and the REST client commands.

mod background;
mod commands;
pub mod config;
pub mod daytona;
mod doctor;
pub mod e2b;
mod mount;
mod ops;
mod sandbox;
mod sync;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::server::{Limits, ServeConfig};

#[derive(Parser, Debug)]
#[command(
    name = "contextfs",
    version,
    about = "A shared, versioned workspace for AI agents: a REST service and the files it serves",
    long_about = "contextfs keeps a versioned file tree per project (`contextfs serve`) and lets agents, \
people and pipelines read and write it. Every write is a new version; concurrent edits are merged \
three ways (JSON by key, text by line) and nothing is ever lost.\n\n\
Client commands need a server, a token and usually a project: set CONTEXTFS_SERVER, CONTEXTFS_TOKEN \
(or --token-file FILE) and CONTEXTFS_PROJECT, pass --server/--project, or save them with `contextfs login`. \
--token works too but shows the secret to other users in `ps`."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Server URL [default: from `contextfs login`, else http://127.0.0.1:8420]
    #[arg(long, global = true, env = "CONTEXTFS_SERVER")]
    pub server: Option<String>,
    /// Bearer token (admin or project). Other users on this machine can read
    /// it in `ps`: prefer $CONTEXTFS_TOKEN, --token-file or `contextfs login`
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Read the bearer token from FILE (first line; keep it mode 0600)
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "CONTEXTFS_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// Project to work in
    #[arg(long, short = 'p', global = true, env = "CONTEXTFS_PROJECT")]
    pub project: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the workspace service (SQLite metadata and blob files under --data)
    Serve(ServeArgs),
    /// Copy a data directory into PostgreSQL + S3 (or into another data directory)
    Migrate(crate::migrate::MigrateArgs),
    /// Create and list projects, set their retention (admin token)
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Create, list and revoke project tokens (admin token)
    #[command(subcommand)]
    Token(TokenCommand),
    /// List a directory of the project (the root by default)
    Ls {
        path: Option<String>,
        /// List everything below, not just the directory's entries
        #[arg(short, long)]
        recursive: bool,
        /// Show id, version, mode, size and hash
        #[arg(short, long)]
        long: bool,
        /// Print the listing as JSON (the tree route's entries)
        #[arg(long)]
        json: bool,
    },
    /// Print a file (its head, or --version N)
    Cat {
        path: String,
        #[arg(long)]
        version: Option<i64>,
    },
    /// Write a file from FILE or standard input, as a new version
    #[command(
        long_about = "Write a file from FILE (or standard input when FILE is omitted) as a new version.\n\n\
By default the upload replaces whatever the head holds now. With --base N the commit is based on version N: \
if the file moved on since, the server merges both changes (JSON by key, text by line) and a true conflict \
falls back to last-writer-wins, keeping the other version in history."
    )]
    Put {
        path: String,
        file: Option<PathBuf>,
        /// The version this content was edited from (enables three-way merge)
        #[arg(long)]
        base: Option<i64>,
        /// Mark the file executable (mode 755)
        #[arg(long)]
        executable: bool,
        #[arg(long, env = "CONTEXTFS_AGENT_ID")]
        agent_id: Option<String>,
        #[arg(long, short)]
        message: Option<String>,
    },
    /// A file's versions, or without PATH the project's activity (newest first)
    #[command(
        long_about = "With PATH: the file's versions (number, time, agent, status, op, size, message), newest first; \
versions removed by retention show as `pruned before version N`.\n\n\
Without PATH: the project's activity, one line per version of any file: change-feed sequence, time, agent, op, \
status, version and path, newest first. Filter with --agent, --since (RFC 3339 or a duration back from now: 90m, 2h, 7d) \
and --path-prefix."
    )]
    Log {
        path: Option<String>,
        /// How many entries to show (newest first)
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: u32,
        /// Only versions written by this agent id (project log)
        #[arg(long)]
        agent: Option<String>,
        /// Only versions written since then: RFC 3339 or a duration ago (30m, 2h, 7d) (project log)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only this path and what is below it (project log)
        #[arg(long, value_name = "PATH")]
        path_prefix: Option<String>,
        /// Print JSON (docs/OPERATIONS.md describes the shape)
        #[arg(long)]
        json: bool,
    },
    /// Unified diff between two versions of a file, or with --since a summary per changed file
    Diff {
        /// The file (with V1 V2), or with --since a path prefix to limit the summary to
        path: Option<String>,
        v1: Option<i64>,
        v2: Option<i64>,
        /// Summarise every file changed since then: RFC 3339 or a duration ago (30m, 2h, 7d)
        #[arg(long, value_name = "TIME", conflicts_with_all = ["v1", "v2"])]
        since: Option<String>,
        /// Print JSON (with --since)
        #[arg(long, requires = "since")]
        json: bool,
    },
    /// Restore a file to an earlier version (as a new version; nothing is lost)
    Rollback {
        path: String,
        version: i64,
        #[arg(long, env = "CONTEXTFS_AGENT_ID")]
        agent_id: Option<String>,
    },
    /// Create a directory and any missing parents
    Mkdir { path: String },
    /// Move or rename a file or directory
    Mv {
        from: String,
        to: String,
        /// Replace an existing target (it stays restorable from history)
        #[arg(long)]
        replace: bool,
    },
    /// Delete a file or directory (restorable with `rollback`)
    Rm {
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
    /// Publish or list the read-only skills every project sees
    #[command(subcommand)]
    Skills(SkillsCommand),
    /// Show a project as a folder (FUSE); writes are committed when files are closed
    Mount(MountCommand),
    /// Commit what is pending, report per file, and unmount
    #[command(
        long_about = "Waits for pending commits (with a progress line if that takes more than a second), \
prints one line per file committed since the mount with its outcome (clean, merged, lww, still queued), then unmounts.\n\n\
Exits non-zero, naming the journal, if anything is still only queued (for example because the server is down); \
the next mount of the same project at the same place commits it."
    )]
    Umount { mountpoint: PathBuf },
    /// Show a mount's pending and queued files and recent outcomes
    Status {
        mountpoint: PathBuf,
        /// Print JSON: queue depth, oldest queued age, commit lag, cache use, passthrough mode
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a Docker container with the project at /workspace
    Run(sandbox::RunCommand),
    /// Serve Docker's volume plugin protocol (`docker volume create -d contextfs`)
    DockerPlugin(sandbox::DockerPluginCommand),
    /// Save a server and token as defaults in ~/.config/contextfs/config.toml
    Login {
        /// Also save a default project
        #[arg(long = "default-project")]
        default_project: Option<String>,
    },
    /// Daytona sandboxes with the project at /workspace: create, exec, destroy
    Daytona(daytona::DaytonaCommand),
    /// E2B sandboxes with the project at /workspace: create, exec, destroy
    E2b(e2b::E2bCommand),
    /// Keep a local folder in two-way sync with the project (no FUSE needed)
    Sync(sync::SyncCommand),
    /// Download the project into a local folder, once (the first half of `sync`)
    Checkout(sync::FolderArgs),
    /// Send a synced folder's local changes once and print each file's outcome
    Push(sync::FolderArgs),
    /// Write the project's changes into a synced folder once
    Pull(sync::FolderArgs),
    /// Prune old versions and delete blobs nothing refers to (admin token)
    #[command(
        long_about = "Runs garbage collection on the server: first every project's versions past its retention policy \
(`contextfs project set P --keep-days D --keep-versions N`, or the server's --keep-days/--keep-versions default) are \
pruned, then blobs no version or skill refers to are deleted from the blob folder or S3. A blob uploaded within the \
server's --gc-grace (default 1h) stays, so a commit that has not landed yet never loses its blob. Prints what it \
freed, and every referenced blob that is missing or has the wrong size (exit status 1 then).\n\n\
With --dry-run nothing changes; the report says what would go."
    )]
    Gc {
        /// Report what would be pruned and deleted; change nothing
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Check what a mount needs on this machine, with a one-line fix for each problem
    Doctor(doctor::DoctorArgs),
    /// Print shell completions for bash, zsh or fish
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (contextfs.1 and one per subcommand) into DIR
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Args, Debug)]
#[command(
    long_about = "Shows PROJECT at MOUNTPOINT as a POSIX folder, with the published skills read-only under skills/ \
(or, with --skills-dir DIR, at a separate read-only mount point).\n\n\
Reads come from a content-addressed cache shared by every mount on this machine. A file is committed when it is closed: \
the change is first written to a durable journal, so close() succeeds even when the server is down, and a background \
task sends it with retries. Editors' save-by-rename becomes one commit on the original file. Changes made elsewhere \
appear within about a second.\n\n\
Runs in the foreground until Ctrl-C / SIGTERM / `contextfs umount`, which flush first; --daemon returns once the mount is ready."
)]
pub struct MountCommand {
    /// Where to show the project (created if missing)
    pub mountpoint: PathBuf,
    /// Agent id recorded with every commit [default: the host name]
    #[arg(long, env = "CONTEXTFS_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Let other users (and containers) use the mount
    #[arg(long)]
    pub allow_other: bool,
    /// Return once the mount is ready and keep serving in the background
    #[arg(long)]
    pub daemon: bool,
    /// Refuse every write (EROFS)
    #[arg(long)]
    pub read_only: bool,
    /// Shared blob cache [default: ~/.cache/contextfs]
    #[arg(long, env = "CONTEXTFS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Cache size limit, e.g. 10G, 500M [default: 10G]
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub cache_size: u64,
    /// Extra FUSE mount options, comma-separated
    #[arg(short = 'o')]
    pub options: Vec<String>,
    /// If the server is unreachable, mount the tree this mount point last saw
    /// (reads from the cache work; writes queue in the journal)
    #[arg(long)]
    pub offline: bool,
    /// Mount the published skills read-only at DIR instead of under
    /// MOUNTPOINT/skills/ (a second mount, served by the same process; then a
    /// project may have its own `skills` entry). DIR is created if missing and
    /// must be an empty directory outside MOUNTPOINT; writes there fail with
    /// EROFS. It is unmounted together with MOUNTPOINT (Ctrl-C, SIGTERM,
    /// `contextfs umount MOUNTPOINT`); --offline, --daemon, --allow-other
    /// and -o apply to it too
    #[arg(long, value_name = "DIR")]
    pub skills_dir: Option<PathBuf>,
    /// Which files the kernel reads straight from the cache (FUSE
    /// passthrough: local-disk read speed, no round trip to this process;
    /// Linux >= 6.9, as root; elsewhere every read goes through the mount).
    /// `all`: every clean file; while a process holds a file open this way,
    /// opening it for writing (or truncating it) waits up to 2 s for that
    /// reader to close and then fails with ETXTBSY. With `all` the kernel
    /// also writes files created through this mount itself, with no request
    /// per write (write passthrough; only while the server's --max-file-bytes
    /// is the default 1 TiB). `reads`: as `all`, but every write goes through
    /// the mount process. `read-only`: only files nobody can write here
    /// (skills, read-only mounts), so writers never wait. `off`: never
    #[arg(long, value_enum, value_name = "MODE", default_value_t = crate::vfs::PassthroughPolicy::All)]
    pub passthrough: crate::vfs::PassthroughPolicy,
    /// What close() waits for. `local` (default, like a local disk): the
    /// change is in the mount's journal, so it survives the mount process
    /// dying at once, and a power loss once the next group fsync ran (at
    /// most --group-sync-ms later; ext4 commits every 5 s). `strict`: every
    /// close() waits for its own fsync of the journal. Either way fsync(2)
    /// and fsync of a directory make every change durable at once, and
    /// mkdir, rename, unlink, rmdir, chmod and truncate become durable with
    /// the next group fsync
    #[arg(long, value_enum, value_name = "MODE", default_value_t = DurabilityMode::Local)]
    pub durability: DurabilityMode,
    /// Longest time between a change and the group fsync that makes it
    /// survive a power loss (milliseconds, 1-10000)
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub group_sync_ms: u64,
    /// Raise inotify events for changes other agents make (IN_CREATE,
    /// IN_MODIFY, IN_CLOSE_WRITE, IN_DELETE, IN_MOVED_FROM/TO, IN_ATTRIB), so
    /// editors reload and build watchers rebuild: the mount repeats each
    /// remote change through the mount point, a few FUSE requests each.
    /// `off` saves those requests when nothing watches the folder
    #[arg(long, value_name = "on|off", default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub inotify: bool,
    /// Longest wait for the server's answer to a commit, mkdir, rename or
    /// delete (seconds, 1-3600). Past it the server counts as unreachable:
    /// the change stays queued and is sent again (a retry is applied once).
    /// Guards against a stuck server and a half-open connection
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout: u64,
}

/// `contextfs mount --durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityMode {
    Local,
    Strict,
}

impl MountCommand {
    pub fn durability(&self) -> crate::vfs::Durability {
        match self.durability {
            DurabilityMode::Local => crate::vfs::Durability::Local {
                group_sync: std::time::Duration::from_millis(self.group_sync_ms),
            },
            DurabilityMode::Strict => crate::vfs::Durability::Strict,
        }
    }
}

/// Parses sizes like `10G`, `512M`, `4096`.
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{raw:?} is not a size (examples: 4096, 500M, 10G)"))?;
    let factor: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("{raw} is too large"))
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory for the SQLite database, blobs and the generated admin token
    #[arg(long, env = "CONTEXTFS_DATA", default_value = "./contextfs-data")]
    pub data: PathBuf,
    /// Address to listen on (port 0 picks a free port; the chosen one is printed)
    #[arg(long, env = "CONTEXTFS_LISTEN", default_value = "127.0.0.1:8420")]
    pub listen: SocketAddr,
    /// Largest blob in bytes (K, M, G, T suffixes allowed): one blob upload,
    /// and one chunk of a large file sent whole, which the server cuts into
    /// chunks of at most 8 MiB (larger → 413; keep it at least 8M)
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub max_blob_bytes: u64,
    /// Largest accepted JSON request body in bytes (larger → 413)
    #[arg(long, default_value_t = 8 << 20)]
    pub max_request_bytes: usize,
    /// Largest file in bytes (K, M, G, T suffixes allowed): files of 16 MiB
    /// and more are uploaded as chunks, so this may be far above
    /// --max-blob-bytes (larger → 413, and the mount refuses the write)
    #[arg(long, env = "CONTEXTFS_MAX_FILE_BYTES", default_value = "1T", value_parser = parse_size)]
    pub max_file_bytes: u64,
    /// Metadata in PostgreSQL instead of the embedded SQLite: postgres://user:pass@host:port/db
    #[arg(long, env = "CONTEXTFS_DATABASE")]
    pub database: Option<String>,
    /// Blobs in S3-compatible storage instead of DATA/blobs: s3://bucket[/prefix]
    /// (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
    #[arg(long, env = "CONTEXTFS_BLOBS")]
    pub blobs: Option<String>,
    /// S3 endpoint URL for non-AWS storage (MinIO, Garage, moto, ...)
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    /// Seconds a client has to send a complete request header; also how long
    /// an idle keep-alive connection stays open
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub header_timeout: u64,
    /// Seconds a request body may go without sending a byte before it fails
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub body_timeout: u64,
    /// Most connections served at once; more wait in the listen backlog
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,
    #[command(flatten)]
    pub ops: ops::ServeOpsArgs,
}

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Create a project
    Create { name: String },
    /// List the projects this token can see
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Set a project's retention policy (admin token); with neither limit, clear it
    #[command(
        long_about = "Sets how long project NAME keeps superseded versions. A version is pruned by the next \
`contextfs gc` (or the server's --gc-interval run) when it is older than --keep-days or not among its file's \
--keep-versions newest. Heads, the version a live file was last merged from, and lww losers younger than \
--keep-days always stay; history shows `pruned before version N` where versions went; audit rows stay.\n\n\
--clear (or giving neither limit) removes the policy: the server default (serve --keep-days/--keep-versions) applies."
    )]
    Set {
        name: String,
        /// Versions older than DAYS may be pruned (at least 1)
        #[arg(long, value_name = "DAYS", allow_negative_numbers = true)]
        keep_days: Option<i64>,
        /// Keep at most N versions per file (at least 1)
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        keep_versions: Option<i64>,
        /// Remove the project's policy
        #[arg(long, conflicts_with_all = ["keep_days", "keep_versions"])]
        clear: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show a project's retention policy
    Show {
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token scoped to one project and print it
    Create {
        /// Make it read-only (default: read-write)
        #[arg(long)]
        read_only: bool,
        /// A note to recognise it by
        #[arg(long)]
        label: Option<String>,
    },
    /// List a project's tokens (never their secrets)
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id (tok_...)
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum SkillsCommand {
    /// Upload DIR as the published skills: each skill is a folder with a SKILL.md
    Publish { dir: PathBuf },
    /// List the published skills
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Status { .. } | Command::Ls { .. } | Command::Cat { .. } | Command::Log { .. } | Command::Diff { .. }
    ) {
        // `contextfs status | head` ends quietly, as `ls | head` does (Rust
        // ignores SIGPIPE, so println! would panic on the closed pipe).
        // Only for commands that print and exit: a server or a mount must
        // see EPIPE on a socket, not die of it.
        // SAFETY: resetting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Err(e) = cli.global.resolve_token() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONTEXTFS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match cli.command {
            Command::Serve(_) | Command::Mount(_) | Command::DockerPlugin(_) | Command::Sync(_) => {
                "info,tower_http=warn"
            }
            _ => "warn",
        })
    });
    // Colour codes only on a terminal: a log file or journal gets plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // mount owns its own runtime (FUSE threads call into it), so it runs outside this one.
    let cli = match cli.command {
        Command::Mount(args) => {
            drop(runtime);
            return report(mount::run(cli.global, args));
        }
        Command::Umount { mountpoint } => return report(mount::umount(&mountpoint)),
        Command::Run(args) => return report(sandbox::run(cli.global, args)),
        Command::Status { mountpoint, json } => return report(mount::status(&mountpoint, json)),
        Command::Completions { shell } => return report(ops::completions(shell)),
        Command::Man { dir } => return report(ops::man_pages(&dir)),
        _ => cli,
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = ServeConfig {
                data_dir: args.data,
                listen: args.listen,
                limits: Limits {
                    max_blob_bytes: args.max_blob_bytes,
                    max_request_bytes: args.max_request_bytes,
                    max_file_bytes: args.max_file_bytes,
                    ..Limits::default()
                },
                backends: crate::server::Backends {
                    database: args.database,
                    blobs: args.blobs,
                    s3_endpoint: args.s3_endpoint,
                    s3_region: args.s3_region,
                },
                conn: crate::server::listen::ConnLimits {
                    header_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
                    body_timeout: std::time::Duration::from_secs(args.body_timeout.max(1)),
                    max_connections: args.max_connections.max(1),
                    ..Default::default()
                },
                ops: args.ops.config(),
            };
            crate::server::serve(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(args) => crate::migrate::run(args).await,
        Command::Daytona(cmd) => daytona::run(&cli.global, cmd).await,
        Command::E2b(cmd) => e2b::run(&cli.global, cmd).await,
        Command::DockerPlugin(args) => sandbox::docker_plugin(cli.global.clone(), args).await,
        Command::Sync(cmd) => sync::run(&cli.global, cmd).await,
        Command::Checkout(args) => sync::one_shot(&cli.global, args, sync::OneShot::Checkout).await,
        Command::Push(args) => sync::one_shot(&cli.global, args, sync::OneShot::Push).await,
        Command::Pull(args) => sync::one_shot(&cli.global, args, sync::OneShot::Pull).await,
        Command::Doctor(args) => doctor::run(&cli.global, args).await,
        other => commands::run(&cli.global, other).await,
    }
}

/// Environment variable holding the bearer token (preferred over `--token`).
pub const TOKEN_ENV: &str = "CONTEXTFS_TOKEN";

impl GlobalArgs {
    /// Settles where the token comes from: `--token-file`, else `--token`
    /// (with a warning: it is visible in `ps`), else `$CONTEXTFS_TOKEN`;
    /// `contextfs login`'s file fills in later if none of them is set.
    pub fn resolve_token(&mut self) -> anyhow::Result<()> {
        use anyhow::Context;
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim().to_string();
            anyhow::ensure!(!token.is_empty(), "the token file {} is empty", path.display());
            self.token = Some(token);
        } else if self.token.is_some() {
            eprintln!(
                "warning: --token puts the secret on the command line, where other users can see it (ps, /proc); \
                 use ${TOKEN_ENV}, --token-file FILE or `contextfs login` instead"
            );
        } else {
            self.token = std::env::var(TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|t| t.trim().to_string());
        }
        Ok(())
    }

    /// Fills what flags and environment left open from `contextfs login`'s file.
    pub fn with_saved_defaults(mut self) -> anyhow::Result<Self> {
        if self.server.is_some() && self.token.is_some() && self.project.is_some() {
            return Ok(self);
        }
        let saved = config::load()?;
        self.server = self.server.or(saved.server);
        self.token = self.token.or(saved.token);
        self.project = self.project.or(saved.project);
        Ok(self)
    }

    pub fn server_url(&self) -> String {
        self.server
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:8420".to_string())
    }
}
