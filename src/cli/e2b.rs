//! `contextfs e2b`: E2B sandboxes with the project inside, with the same
//! contract as `contextfs daytona` (the shared parts live there).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::daytona::{create_sandbox, destroy_sandbox, exec_in, key_value, list, load_record, ExecArgs, ModeArg};
use super::GlobalArgs;
use crate::sandbox::e2b::{E2b, E2bProvider, DEFAULT_API_URL};
use crate::sandbox::remote::{ProviderKind, SandboxRecord};

#[derive(Args, Debug)]
#[command(
    long_about = "Creates E2B sandboxes with a contextfs project inside, runs commands in them and kills them.\n\n\
`create` makes a token scoped to the project (with the admin token), creates a sandbox through E2B's API, uploads a \
static contextfs binary and mounts the project at /workspace with the published skills read-only at /skills. Where the \
sandbox cannot mount FUSE, it falls back to sync mode: the tree is copied in before each `exec` and what changed is \
committed after it.\n\n\
E2B kills a sandbox when its timeout (--timeout minutes) runs out; every `exec` renews it first. The sandbox must reach \
the contextfs server at --sandbox-server (default: --server) for the mount; see docs/SANDBOXES.md."
)]
pub struct E2bCommand {
    #[command(flatten)]
    pub e2b: E2bArgs,
    #[command(subcommand)]
    pub command: E2bSub,
}

#[derive(Args, Debug, Clone)]
pub struct E2bArgs {
    /// E2B's API URL [default: https://api.e2b.app]
    #[allow(rustdoc::bare_urls)]
    #[arg(long, global = true, env = "E2B_API_URL")]
    pub api_url: Option<String>,
    /// E2B API key
    #[arg(long, global = true, env = "E2B_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// One URL for every sandbox's envd (a sandbox proxy) [default: https://49983-ID.DOMAIN]
    #[arg(long, global = true, env = "E2B_SANDBOX_URL")]
    pub sandbox_url: Option<String>,
    /// The domain sandboxes are reached under [default: e2b.app]
    #[arg(long, global = true, env = "E2B_DOMAIN")]
    pub domain: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum E2bSub {
    /// Create a sandbox with the project (--project) at /workspace and the skills at /skills; prints its id
    Create {
        /// E2B template to start from
        #[arg(long, default_value = "base")]
        template: String,
        /// Minutes E2B keeps the sandbox after the last command (its timeout)
        #[arg(long, value_name = "MIN", default_value_t = 15)]
        timeout: u64,
        /// Metadata for the sandbox, KEY=VALUE (repeatable; e.g. thread_id=..., user_id=...)
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// Static contextfs binary to upload [default: this one if static, else target/static/.../contextfs]
        #[arg(long, env = "CONTEXTFS_STATIC_BINARY")]
        binary: Option<PathBuf>,
        /// The contextfs server URL as seen from inside the sandbox [default: --server]
        #[arg(long, env = "CONTEXTFS_SANDBOX_SERVER")]
        sandbox_server: Option<String>,
        /// How the workspace gets into the sandbox
        #[arg(long, value_enum, default_value = "auto")]
        mode: ModeArg,
    },
    /// Run a command in the sandbox; prints its output and exits with its exit code
    Exec {
        id: String,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Commit what is pending in the sandbox, then kill it (and revoke its token)
    Destroy {
        id: String,
        /// Kill even if some changes could not be committed
        #[arg(long)]
        force: bool,
    },
    /// List the E2B sandboxes created from this machine
    List {
        /// Print JSON: [{id, provider, project, mode, created_at, api_url}] (never tokens)
        #[arg(long)]
        json: bool,
    },
}

fn provider(
    args: &E2bArgs,
    record: Option<&SandboxRecord>,
    template: String,
    timeout: u64,
) -> anyhow::Result<E2bProvider> {
    // A sandbox lives where it was created, whatever E2B_API_URL says now.
    let url = record
        .map(|r| r.api_url.clone())
        .or_else(|| args.api_url.clone())
        .unwrap_or_else(|| DEFAULT_API_URL.to_string());
    Ok(E2bProvider {
        api: E2b::new(&url, args.api_key.as_deref().unwrap_or_default())?,
        template,
        timeout_minutes: record.and_then(|r| r.timeout_minutes).unwrap_or(timeout),
        sandbox_url: args.sandbox_url.clone(),
        domain: args.domain.clone(),
        env_vars: BTreeMap::new(),
    })
}

pub async fn run(global: &GlobalArgs, cmd: E2bCommand) -> anyhow::Result<ExitCode> {
    let args = cmd.e2b;
    match cmd.command {
        E2bSub::List { json } => list(ProviderKind::E2b, json),
        E2bSub::Create {
            template,
            timeout,
            metadata,
            binary,
            sandbox_server,
            mode,
        } => {
            let metadata = metadata
                .iter()
                .map(|m| key_value(m, "metadata"))
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
            let provider = provider(&args, None, template, timeout)?;
            create_sandbox(global, &provider, metadata, binary, sandbox_server, mode, Some(timeout)).await
        }
        E2bSub::Exec { id, exec } => {
            let record = load_record(ProviderKind::E2b, &id)?;
            let provider = provider(&args, Some(&record), String::new(), 15)?;
            exec_in(&provider, &record, exec).await
        }
        E2bSub::Destroy { id, force } => {
            let record = SandboxRecord::load(&id)?.filter(|r| r.provider == ProviderKind::E2b);
            let provider = provider(&args, record.as_ref(), String::new(), 15)?;
            destroy_sandbox(global, &provider, &id, record, force).await
        }
    }
}
