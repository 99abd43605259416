//! `contextfs run` (a Docker container on the project) and
//! `contextfs docker-plugin` (Docker's volume plugin protocol).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::Args;

use super::{parse_size, GlobalArgs};
use crate::sandbox::docker::{self, Connection, RunOptions};
use crate::sandbox::plugin::{self, PluginConfig};

#[derive(Args, Debug)]
#[command(
    long_about = "Runs CMD in a new Docker container with the project at /workspace (read-write, the working directory) \
and the published skills at /skills (read-only), streams its output and exits with its exit code.\n\n\
The project is served by a FUSE mount on this host, one per agent id (started on demand, shared by concurrent runs \
of the same agent, removed after the last one). All mounts share this machine's blob cache, so many containers \
reading the same files keep one copy on disk. Every commit carries the agent id (--agent-id, else the container name).\n\n\
Before returning, everything the container wrote is committed and listed, one line per file. If the server cannot \
be reached, the changes stay in the mount's durable journal, the run exits non-zero naming it, and the mount keeps \
retrying in the background.\n\n\
The image must already be on this host (`docker images`); contextfs never pulls. Needs root (FUSE with allow_other \
and a shared bind mount, so a restarted host mount shows up in running containers).\n\n\
Example: contextfs run -p notes --image contextfs-busybox:latest --user 1000:1000 -- sh -c 'ls /workspace'"
)]
pub struct RunCommand {
    /// Image to run (must exist locally; there is no registry)
    #[arg(long)]
    pub image: String,
    /// Run as UID[:GID] (or a user name the image knows)
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Agent id recorded with the container's commits [default: the container name]
    #[arg(long)]
    pub agent_id: Option<String>,
    /// Set an environment variable in the container (KEY=VALUE; repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Container name [default: cfs-<project>-<random>]
    #[arg(long)]
    pub name: Option<String>,
    /// Keep standard input attached to the container
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Shared blob cache [default: ~/.cache/contextfs]
    #[arg(long, env = "CONTEXTFS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Cache size limit, e.g. 10G, 500M [default: 10G]
    #[arg(long, value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
#[command(
    long_about = "Serves Docker's volume plugin protocol on a unix socket, so that\n\n  \
docker volume create -d contextfs -o project=NAME [-o agent_id=ID] [-o token=T] [-o server=URL] VOLUME\n  \
docker run -v VOLUME:/workspace IMAGE CMD\n\n\
shows the project in the container. The first container using a volume starts a FUSE mount on this host (agent id: \
-o agent_id, else the volume name); the last one to stop commits everything it wrote; `docker volume rm` unmounts.\n\n\
The server and token come from --server/--token (CONTEXTFS_SERVER/CONTEXTFS_TOKEN: an admin token serves every \
project) unless a volume names its own with -o server= / -o token=. Run it as root, e.g. with the systemd unit \
docs/contextfs-docker-plugin.service."
)]
pub struct DockerPluginCommand {
    /// The socket Docker discovers the plugin by
    #[arg(long, default_value = plugin::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where volumes.json and the volumes' mount points live
    /// [default: $XDG_STATE_HOME/contextfs/docker-plugin]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Shared blob cache [default: ~/.cache/contextfs]
    #[arg(long, env = "CONTEXTFS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Cache size limit, e.g. 10G, 500M [default: 10G]
    #[arg(long, value_parser = parse_size)]
    pub cache_size: Option<u64>,
}

pub fn run(global: GlobalArgs, cmd: RunCommand) -> anyhow::Result<ExitCode> {
    let global = global.with_saved_defaults()?;
    let project = global.project.clone().ok_or_else(|| {
        anyhow!("no project: pass --project NAME, set CONTEXTFS_PROJECT, or save one with `contextfs login --default-project`")
    })?;
    let token = global.token.clone().ok_or_else(|| {
        anyhow!("no token: set CONTEXTFS_TOKEN, pass --token-file FILE, or run `CONTEXTFS_TOKEN=T contextfs login --server URL`")
    })?;
    let conn = Connection {
        server: global.server_url(),
        token,
        project,
    };
    docker::run(
        conn,
        RunOptions {
            image: cmd.image,
            user: cmd.user,
            agent_id: cmd.agent_id,
            env: cmd.env,
            name: cmd.name,
            interactive: cmd.interactive,
            command: cmd.command,
            cache_dir: cmd.cache_dir,
            cache_size: cmd.cache_size,
        },
    )
}

pub async fn docker_plugin(global: GlobalArgs, cmd: DockerPluginCommand) -> anyhow::Result<ExitCode> {
    let global = global.with_saved_defaults()?;
    plugin::serve(PluginConfig {
        socket: cmd.socket,
        state_dir: cmd.state_dir.unwrap_or_else(plugin::default_state_dir),
        server: global.server.clone(),
        token: global.token.clone(),
        project: global.project.clone(),
        cache_dir: cmd.cache_dir,
        cache_size: cmd.cache_size,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
