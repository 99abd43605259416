//! `contextfs daytona`: Daytona sandboxes with the project inside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};

use super::GlobalArgs;
use crate::client::Client;
use crate::sandbox::daytona::{CreateSandbox, Daytona, DaytonaProvider, DEFAULT_API_URL};
use crate::sandbox::remote::{
    self, copy_mode, is_static_elf, shell_quote, CreateOptions, ExecOptions, ModeChoice, Provider, ProviderKind,
    SandboxRecord, SKILLS, WORKSPACE,
};

#[derive(Args, Debug)]
#[command(
    long_about = "Creates Daytona sandboxes with a contextfs project inside, runs commands in them and deletes them.\n\n\
`create` makes a token scoped to the project (with the admin token), creates a sandbox through Daytona's REST API, \
uploads a static contextfs binary and mounts the project at /workspace with the published skills read-only at /skills. \
Where the sandbox cannot mount FUSE, it falls back to sync mode: the tree is copied in before each `exec` and what \
changed is committed after it, with base versions so concurrent edits merge.\n\n\
The sandbox must reach the contextfs server at --sandbox-server (default: --server) for the mount; see docs/SANDBOXES.md."
)]
pub struct DaytonaCommand {
    #[command(flatten)]
    pub daytona: DaytonaArgs,
    #[command(subcommand)]
    pub command: DaytonaSub,
}

#[derive(Args, Debug, Clone)]
pub struct DaytonaArgs {
    /// Daytona's API URL [default: https://app.daytona.io/api]
    // This doc is the --help text, which shows the URL as it is.
    #[allow(rustdoc::bare_urls)]
    #[arg(long, global = true, env = "DAYTONA_API_URL")]
    pub api_url: Option<String>,
    /// Daytona API key
    #[arg(long, global = true, env = "DAYTONA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    /// Mount with FUSE; fall back to sync mode if the mount fails
    Auto,
    /// Mount with FUSE or fail
    Mount,
    /// Copy the tree in before each exec and commit changes after it
    Sync,
}

#[derive(Subcommand, Debug)]
pub enum DaytonaSub {
    /// Create a sandbox with the project (--project) at /workspace and the skills at /skills; prints its id
    Create {
        /// Daytona snapshot (image) to start from [default: Daytona's default]
        #[arg(long)]
        snapshot: Option<String>,
        /// Minutes of inactivity before Daytona stops the sandbox (0 disables)
        #[arg(long = "auto-stop", value_name = "MIN")]
        auto_stop: Option<i64>,
        /// Minutes after stopping before Daytona deletes it (negative disables)
        #[arg(long = "auto-delete", value_name = "MIN", allow_negative_numbers = true)]
        auto_delete: Option<i64>,
        /// A label for the sandbox, KEY=VALUE (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Static contextfs binary to upload [default: this one if static, else target/static/.../contextfs]
        #[arg(long, env = "CONTEXTFS_STATIC_BINARY")]
        binary: Option<PathBuf>,
        /// The contextfs server URL as seen from inside the sandbox [default: --server]
        #[arg(long, env = "CONTEXTFS_SANDBOX_SERVER")]
        sandbox_server: Option<String>,
        /// How the workspace gets into the sandbox
        #[arg(long, value_enum, default_value = "auto")]
        mode: ModeArg,
        /// Seconds to wait for the sandbox to start
        #[arg(long, default_value_t = 300)]
        start_timeout: u64,
    },
    /// Run a command in the sandbox; prints its output and exits with its exit code
    #[command(
        long_about = "Runs a command in the sandbox (in /workspace unless --cwd) and exits with its exit code.\n\n\
One argument is run as a shell script (`exec ID -- 'echo hi > out.md'`); several are quoted as one command \
(`exec ID -- ls -l`). Standard output and error come back combined. In sync mode the tree is brought up to date \
before the command and changes are committed after it; one line per file goes to standard error."
    )]
    Exec {
        id: String,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Commit what is pending in the sandbox, then delete it (and revoke its token)
    Destroy {
        id: String,
        /// Delete even if some changes could not be committed
        #[arg(long)]
        force: bool,
    },
    /// List the sandboxes created from this machine
    List {
        /// Print JSON: [{id, provider, project, mode, created_at, api_url}] (never tokens)
        #[arg(long)]
        json: bool,
    },
    /// (inside a sandbox) list a folder with blake3 hashes, as JSON, for sync mode
    #[command(hide = true)]
    Scan { dir: PathBuf },
}

fn progress(line: &str) {
    eprintln!("daytona: {line}");
}

fn daytona_client(args: &DaytonaArgs, record: Option<&SandboxRecord>) -> anyhow::Result<Daytona> {
    // A sandbox lives where it was created, whatever DAYTONA_API_URL says now.
    let url = record
        .map(|r| r.api_url.clone())
        .or_else(|| args.api_url.clone())
        .unwrap_or_else(|| DEFAULT_API_URL.to_string());
    Ok(Daytona::new(&url, args.api_key.as_deref().unwrap_or_default())?)
}

pub(super) fn key_value(raw: &str, what: &str) -> anyhow::Result<(String, String)> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("{what} {raw:?} is not KEY=VALUE"),
    }
}

/// The static binary to upload: --binary, else this executable if it is
/// static, else the one `scripts/static-build` makes next to this build.
pub(super) fn find_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find the contextfs executable")?;
    let mut candidates = vec![exe.clone()];
    let built = Path::new("static/x86_64-unknown-linux-gnu/release/contextfs");
    if let Some(target) = exe.parent().and_then(Path::parent) {
        candidates.push(target.join(built));
    }
    candidates.push(Path::new("target").join(built));
    for candidate in &candidates {
        if candidate.is_file() && is_static_elf(candidate).unwrap_or(false) {
            return Ok(candidate.clone());
        }
    }
    bail!(
        "no static contextfs binary to upload into the sandbox: this one ({}) is dynamically linked. \
         Build one with scripts/static-build and pass it with --binary (or CONTEXTFS_STATIC_BINARY)",
        exe.display()
    )
}

fn exit_code(code: i64) -> ExitCode {
    match u8::try_from(code) {
        Ok(c) => ExitCode::from(c),
        Err(_) => ExitCode::FAILURE,
    }
}

pub async fn run(global: &GlobalArgs, cmd: DaytonaCommand) -> anyhow::Result<ExitCode> {
    let args = cmd.daytona;
    match cmd.command {
        DaytonaSub::Scan { dir } => {
            let scan = copy_mode::scan(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
            println!("{}", serde_json::to_string(&scan)?);
            Ok(ExitCode::SUCCESS)
        }
        DaytonaSub::List { json } => list(ProviderKind::Daytona, json),
        DaytonaSub::Create {
            snapshot,
            auto_stop,
            auto_delete,
            labels,
            binary,
            sandbox_server,
            mode,
            start_timeout,
        } => {
            let provider = DaytonaProvider {
                api: daytona_client(&args, None)?,
                template: CreateSandbox {
                    snapshot,
                    auto_stop_interval: auto_stop,
                    auto_delete_interval: auto_delete,
                    ..CreateSandbox::default()
                },
                start_timeout: Duration::from_secs(start_timeout),
            };
            let labels = labels
                .iter()
                .map(|l| key_value(l, "label"))
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
            create_sandbox(global, &provider, labels, binary, sandbox_server, mode, None).await
        }
        DaytonaSub::Exec { id, exec } => {
            let record = load_record(ProviderKind::Daytona, &id)?;
            let provider = daytona_provider(&args, Some(&record))?;
            exec_in(&provider, &record, exec).await
        }
        DaytonaSub::Destroy { id, force } => {
            let record = SandboxRecord::load(&id)?.filter(|r| r.provider == ProviderKind::Daytona);
            if record.is_none() {
                progress(&format!("this machine did not create sandbox {id}; deleting it"));
            }
            let provider = daytona_provider(&args, record.as_ref())?;
            destroy_sandbox(global, &provider, &id, record, force).await
        }
    }
}

fn daytona_provider(args: &DaytonaArgs, record: Option<&SandboxRecord>) -> anyhow::Result<DaytonaProvider> {
    Ok(DaytonaProvider {
        api: daytona_client(args, record)?,
        template: CreateSandbox::default(),
        start_timeout: Duration::from_secs(300),
    })
}

/// `list`: the sandboxes of one provider this machine created.
pub(super) fn list(kind: ProviderKind, json: bool) -> anyhow::Result<ExitCode> {
    let records: Vec<SandboxRecord> = SandboxRecord::all()?
        .into_iter()
        .filter(|r| r.provider == kind)
        .collect();
    if json {
        // The records hold project tokens and access tokens: only what identifies a sandbox.
        let listed: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "provider": r.provider.as_str(),
                    "project": r.project,
                    "mode": r.mode.as_str(),
                    "created_at": r.created_at,
                    "api_url": r.api_url,
                })
            })
            .collect();
        super::ops::print_json(&listed)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in records {
        println!("{}\t{}\t{}\t{}", r.id, r.project, r.mode.as_str(), r.created_at);
    }
    Ok(ExitCode::SUCCESS)
}

/// The record of a sandbox this machine created with `kind`, or why there is none.
pub(super) fn load_record(kind: ProviderKind, id: &str) -> anyhow::Result<SandboxRecord> {
    match SandboxRecord::load(id)? {
        Some(r) if r.provider == kind => Ok(r),
        Some(r) => bail!(
            "sandbox {id} is a {} sandbox: use `contextfs {} exec/destroy`",
            r.provider.as_str(),
            r.provider.as_str()
        ),
        None => bail!(
            "this machine did not create sandbox {id} (nothing in {}); `contextfs {} list` shows the ones it did",
            SandboxRecord::path(id).display(),
            kind.as_str()
        ),
    }
}

/// `create`: the shared part of `contextfs daytona create` and `contextfs e2b create`.
pub(super) async fn create_sandbox(
    global: &GlobalArgs,
    provider: &dyn Provider,
    labels: BTreeMap<String, String>,
    binary: Option<PathBuf>,
    sandbox_server: Option<String>,
    mode: ModeArg,
    timeout_minutes: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let global = global.clone().with_saved_defaults()?;
    let project = global
        .project
        .clone()
        .ok_or_else(|| anyhow!("no project: pass --project NAME or set CONTEXTFS_PROJECT"))?;
    let admin_token = global.token.clone().ok_or_else(|| {
        anyhow!("no token: creating a sandbox needs the admin token (CONTEXTFS_TOKEN or --token-file); it makes a project token for the sandbox")
    })?;
    let opts = CreateOptions {
        project,
        server: global.server_url(),
        admin_token,
        sandbox_server,
        labels,
        timeout_minutes,
        binary: find_binary(binary)?,
        mode: match mode {
            ModeArg::Auto => ModeChoice::Auto,
            ModeArg::Mount => ModeChoice::Mount,
            ModeArg::Sync => ModeChoice::Copy,
        },
    };
    let log = |line: &str| eprintln!("{}: {line}", provider.kind().as_str());
    let record = remote::create(provider, opts, &log).await?;
    log(&format!(
        "sandbox {} is ready ({} mode): project {} at {WORKSPACE}, skills at {SKILLS}",
        record.id,
        record.mode.as_str(),
        record.project
    ));
    println!("{}", record.id);
    Ok(ExitCode::SUCCESS)
}

/// `exec`: runs the command, prints its output and the per-file outcomes.
/// `exec`'s options, the same for every sandbox provider.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Working directory in the sandbox
    #[arg(long)]
    cwd: Option<String>,
    /// Seconds before the sandbox kills the command
    #[arg(long)]
    timeout: Option<u64>,
    /// An environment variable for the command, KEY=VALUE (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    envs: Vec<String>,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub(super) async fn exec_in(
    provider: &dyn Provider,
    record: &SandboxRecord,
    exec: ExecArgs,
) -> anyhow::Result<ExitCode> {
    let ExecArgs {
        cwd,
        timeout,
        envs,
        command,
    } = exec;
    let envs = envs
        .iter()
        .map(|e| key_value(e, "--env"))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let script = if command.len() == 1 {
        command[0].clone()
    } else {
        command.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
    };
    let log = |line: &str| eprintln!("{}: {line}", provider.kind().as_str());
    let outcome = remote::exec(provider, record, &script, ExecOptions { cwd, envs, timeout }, &log).await?;
    if outcome.timed_out {
        let limit = timeout
            .map(|t| format!("{t} s"))
            .unwrap_or_else(|| format!("{}'s default", provider.name()));
        eprintln!(
            "contextfs: the command ran past its time limit ({limit}) and {} killed it; its output is lost, \
             what it wrote is kept{}",
            provider.name(),
            if outcome.copied.is_some() {
                " (committed below)"
            } else {
                " (in the mount)"
            }
        );
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(outcome.output.as_bytes())
            .and_then(|_| out.flush())
            .context("cannot write to standard output")?;
    }
    if let Some(report) = &outcome.copied {
        let p = &report.pulled;
        if p.uploaded + p.removed + p.skills > 0 {
            eprintln!(
                "contextfs: before the command: {} files in, {} removed, {} skill files",
                p.uploaded, p.removed, p.skills
            );
        }
        for line in report.lines() {
            eprintln!("contextfs: {line}");
        }
        if report.failed > 0 {
            eprintln!(
                "contextfs: {} changes could not be committed; they stay in the sandbox and the next exec \
                 (or destroy) tries again",
                report.failed
            );
            if outcome.exit_code == 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(exit_code(outcome.exit_code))
}

/// `destroy`: flush, delete, revoke; prints the per-file outcomes.
pub(super) async fn destroy_sandbox(
    global: &GlobalArgs,
    provider: &dyn Provider,
    id: &str,
    record: Option<SandboxRecord>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let global = global.clone().with_saved_defaults()?;
    let admin = match (&global.token, &record) {
        (Some(token), Some(r)) => Client::new(&r.server, Some(token.clone())).ok(),
        _ => None,
    };
    let log = |line: &str| eprintln!("{}: {line}", provider.kind().as_str());
    let outcome = remote::destroy(provider, id, record.as_ref(), admin.as_ref(), force, &log).await?;
    for line in &outcome.flushed {
        eprintln!("{line}");
    }
    match outcome.token_revoked {
        Some(Ok(token)) => log(&format!("revoked token {token}")),
        Some(Err(why)) => log(&why),
        None => {}
    }
    log(&format!("deleted sandbox {id}"));
    Ok(ExitCode::SUCCESS)
}
