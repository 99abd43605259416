//! `contextfs docker-plugin`: Docker's volume plugin protocol (JSON over
//! HTTP on a unix socket in /run/docker/plugins/), so that
//!
//! ```sh
//! docker volume create -d contextfs -o project=p [-o agent_id=a] [-o token=T] ws
//! docker run -v ws:/workspace IMAGE CMD
//! docker volume rm ws
//! ```
//!
//! works. A volume is a (server, project, agent id); its first `Mount`
//! starts a host mount (`contextfs mount --daemon --allow-other`) under the
//! plugin's state directory and Docker binds it into the container. Mounts
//! are reference-counted by Docker's mount ID (one `docker run` may send
//! Mount/Unmount twice with different IDs); the last `Unmount` commits
//! everything queued (the mount stays, warm for the next container) and
//! `Remove` unmounts. Volumes and their mount IDs are kept in
//! `STATE/volumes.json` (mode 0600: it may hold tokens), so a restarted
//! plugin knows them; the mounts themselves run in their own processes and
//! survive a plugin restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::host_mount::{ensure_mount, flush, mount_status, unmount, Layout, MountSpec};
use crate::client::{Client, ClientError};

/// Where Docker looks for plugin sockets.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/contextfs.sock";
const CONTENT_TYPE_PLUGIN: &str = "application/vnd.docker.plugins.v1+json";
/// Options `docker volume create -o` accepts.
const KNOWN_OPTS: &[&str] = &["project", "agent_id", "token", "server"];

#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub socket: PathBuf,
    /// volumes.json and the volumes' mount points.
    pub state_dir: PathBuf,
    /// Defaults for volumes that do not name their own.
    pub server: Option<String>,
    pub token: Option<String>,
    pub project: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub cache_size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Volume {
    project: String,
    agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// Docker mount IDs currently using the volume.
    #[serde(default)]
    mounts: BTreeSet<String>,
    created_at: String,
}

struct Plugin {
    config: PluginConfig,
    volumes: BTreeMap<String, Volume>,
    runtime: tokio::runtime::Handle,
}

#[derive(Debug, Default, Deserialize)]
struct Request {
    #[serde(default, rename = "Name")]
    name: String,
    /// `null` when `docker volume create` got no `-o`.
    #[serde(default, rename = "Opts")]
    opts: Option<HashMap<String, String>>,
    #[serde(default, rename = "ID")]
    id: String,
}

impl Plugin {
    fn state_file(&self) -> PathBuf {
        self.config.state_dir.join("volumes.json")
    }

    fn load(config: PluginConfig, runtime: tokio::runtime::Handle) -> anyhow::Result<Plugin> {
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
        let mut plugin = Plugin {
            config,
            volumes: BTreeMap::new(),
            runtime,
        };
        let path = plugin.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => {
                plugin.volumes =
                    serde_json::from_slice(&bytes).with_context(|| format!("{} is unreadable", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        Ok(plugin)
    }

    fn save(&self) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.state_file();
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(&self.volumes)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }

    fn layout(&self, name: &str) -> Layout {
        Layout::at(&self.config.state_dir.join("volumes"), name)
    }

    fn spec(&self, name: &str, v: &Volume) -> anyhow::Result<MountSpec> {
        let server = v
            .server
            .clone()
            .or_else(|| self.config.server.clone())
            .unwrap_or_else(|| "http://127.0.0.1:8420".to_string());
        let token = v.token.clone().or_else(|| self.config.token.clone()).ok_or_else(|| {
            anyhow!("volume {name} has no token: create it with `-o token=T`, or start the plugin with CONTEXTFS_TOKEN (an admin or project token)")
        })?;
        Ok(MountSpec {
            server,
            token,
            project: v.project.clone(),
            agent_id: v.agent_id.clone(),
            cache_dir: self.config.cache_dir.clone(),
            cache_size: self.config.cache_size,
        })
    }

    /// Checks the server answers and the token may use the project.
    fn verify(&self, spec: &MountSpec) -> anyhow::Result<()> {
        let client = Client::new(&spec.server, Some(spec.token.clone())).map_err(|e| anyhow!("{e}"))?;
        let project = spec.project.clone();
        let server = spec.server.clone();
        self.runtime.block_on(async move {
            let timeout = Duration::from_secs(10);
            let who = tokio::time::timeout(timeout, client.whoami())
                .await
                .map_err(|_| anyhow!("the contextfs server at {server} did not answer within 10 s"))?;
            let who = match who {
                Ok(w) => w,
                Err(ClientError::Unreachable { detail, .. }) => bail!(
                    "cannot reach the contextfs server at {server} ({detail}); start it, or point the plugin (CONTEXTFS_SERVER) or the volume (-o server=URL) at it"
                ),
                Err(e) => bail!("the contextfs server refused the token: {e}"),
            };
            if !who.admin && who.project.as_deref() != Some(project.as_str()) {
                bail!(
                    "the token belongs to project {}, not {project}",
                    who.project.unwrap_or_default()
                );
            }
            match tokio::time::timeout(timeout, client.tree(&project, None, false)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => bail!(
                    "project {project} does not exist on {server} (create it with `contextfs project create {project}`)"
                ),
                Ok(Err(e)) => bail!("cannot read project {project}: {e}"),
                Err(_) => bail!("the contextfs server at {server} did not answer within 10 s"),
            }
        })
    }

    fn volume(&self, name: &str) -> anyhow::Result<&Volume> {
        self.volumes
            .get(name)
            .ok_or_else(|| anyhow!("no contextfs volume named {name}"))
    }

    fn mountpoint(&self, name: &str) -> String {
        let layout = self.layout(name);
        if mount_status(&layout.ws).is_some() {
            layout.ws.display().to_string()
        } else {
            String::new()
        }
    }

    fn create(&mut self, req: &Request) -> anyhow::Result<Value> {
        let name = req.name.clone();
        if !super::docker::valid_container_name(&name) {
            bail!("{name:?} is not a valid volume name");
        }
        if self.volumes.contains_key(&name) {
            return Ok(json!({ "Err": "" }));
        }
        let opts = req.opts.clone().unwrap_or_default();
        if let Some(bad) = opts.keys().find(|k| !KNOWN_OPTS.contains(&k.as_str())) {
            bail!(
                "unknown option {bad:?}; contextfs volumes take -o {}",
                KNOWN_OPTS.join("=, -o ") + "="
            );
        }
        let project = opts
            .get("project")
            .cloned()
            .or_else(|| self.config.project.clone())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| anyhow!("which project? create the volume with `-o project=NAME`"))?;
        let volume = Volume {
            project,
            agent_id: opts
                .get("agent_id")
                .cloned()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| name.clone()),
            server: opts.get("server").cloned(),
            token: opts.get("token").cloned(),
            mounts: BTreeSet::new(),
            created_at: chrono::Utc::now().to_rfc3339(),
        };
        let spec = self.spec(&name, &volume)?;
        self.verify(&spec)?;
        self.volumes.insert(name.clone(), volume);
        self.save()?;
        tracing::info!(volume = %name, project = %spec.project, agent = %spec.agent_id, "volume created");
        Ok(json!({ "Err": "" }))
    }

    fn mount(&mut self, req: &Request) -> anyhow::Result<Value> {
        let name = &req.name;
        let volume = self.volume(name)?.clone();
        let spec = self.spec(name, &volume)?;
        let layout = self.layout(name);
        let reused = ensure_mount(&layout.ws, &spec)?;
        let v = self.volumes.get_mut(name).expect("checked above");
        v.mounts.insert(req.id.clone());
        let users = v.mounts.len();
        self.save()?;
        tracing::info!(volume = %name, id = %req.id, users, reused, "mounted");
        Ok(json!({ "Mountpoint": layout.ws.display().to_string(), "Err": "" }))
    }

    fn unmount(&mut self, req: &Request) -> anyhow::Result<Value> {
        let name = &req.name;
        self.volume(name)?;
        let v = self.volumes.get_mut(name).expect("checked above");
        v.mounts.remove(&req.id);
        let users = v.mounts.len();
        self.save()?;
        tracing::info!(volume = %name, id = %req.id, users, "unmounted");
        if users > 0 {
            return Ok(json!({ "Err": "" }));
        }
        // The last container is gone: commit everything it wrote now.
        let layout = self.layout(name);
        if mount_status(&layout.ws).is_none() {
            return Ok(json!({ "Err": "" }));
        }
        let report = flush(&layout.ws, 0, |line| tracing::info!(volume = %name, "{line}"))?;
        for (path, outcome) in &report.outcomes {
            tracing::info!(volume = %name, %path, %outcome, "committed");
        }
        if !report.queued.is_empty() {
            bail!(
                "volume {name}: {} change(s) are not committed yet (server unreachable?); they stay in the journal at {} and the mount keeps retrying",
                report.queued.len(),
                report.info.journal
            );
        }
        Ok(json!({ "Err": "" }))
    }

    fn remove(&mut self, req: &Request) -> anyhow::Result<Value> {
        let name = &req.name;
        let volume = self.volume(name)?.clone();
        if !volume.mounts.is_empty() {
            bail!("volume {name} is in use by {} mount(s)", volume.mounts.len());
        }
        let layout = self.layout(name);
        let spec = self.spec(name, &volume)?;
        let journal = crate::mount::mount_state_dir(&spec.server, &spec.project, &layout.ws).join("journal");
        let has_journal = std::fs::read_dir(&journal).is_ok_and(|mut d| d.next().is_some());
        if mount_status(&layout.ws).is_none() && has_journal {
            // A mount that died left changes: mount again so they replay.
            ensure_mount(&layout.ws, &spec)?;
        }
        if mount_status(&layout.ws).is_some() {
            let report = unmount(&layout.ws)?;
            if !report.queued.is_empty() {
                bail!(
                    "volume {name} is kept: {} change(s) are still only in the journal at {} (server unreachable?); \
remove it again once the server is back",
                    report.queued.len(),
                    report.info.journal
                );
            }
        }
        let _ = std::fs::remove_dir(&layout.ws);
        let _ = std::fs::remove_dir(&layout.root);
        self.volumes.remove(name);
        self.save()?;
        tracing::info!(volume = %name, "volume removed");
        Ok(json!({ "Err": "" }))
    }

    fn describe(&self, name: &str, v: &Volume) -> Value {
        json!({
            "Name": name,
            "Mountpoint": self.mountpoint(name),
            "CreatedAt": v.created_at,
            "Status": {
                "project": v.project,
                "agent_id": v.agent_id,
                "mounts": v.mounts.len(),
            },
        })
    }

    fn handle(&mut self, endpoint: &str, req: &Request) -> anyhow::Result<Value> {
        match endpoint {
            "Plugin.Activate" => Ok(json!({ "Implements": ["VolumeDriver"] })),
            "VolumeDriver.Capabilities" => Ok(json!({ "Capabilities": { "Scope": "local" } })),
            "VolumeDriver.Create" => self.create(req),
            "VolumeDriver.Remove" => self.remove(req),
            "VolumeDriver.Mount" => self.mount(req),
            "VolumeDriver.Unmount" => self.unmount(req),
            "VolumeDriver.Path" => {
                self.volume(&req.name)?;
                Ok(json!({ "Mountpoint": self.mountpoint(&req.name), "Err": "" }))
            }
            "VolumeDriver.Get" => {
                let v = self.volume(&req.name)?;
                Ok(json!({ "Volume": self.describe(&req.name, v), "Err": "" }))
            }
            "VolumeDriver.List" => {
                let volumes: Vec<Value> = self.volumes.iter().map(|(name, v)| self.describe(name, v)).collect();
                Ok(json!({ "Volumes": volumes, "Err": "" }))
            }
            other => bail!("unknown endpoint /{other}"),
        }
    }
}

type Shared = Arc<Mutex<Plugin>>;

fn reply(value: Value) -> Response {
    ([(CONTENT_TYPE, CONTENT_TYPE_PLUGIN)], value.to_string()).into_response()
}

async fn dispatch(plugin: Shared, endpoint: &'static str, body: Bytes) -> Response {
    let req: Request = if body.iter().all(u8::is_ascii_whitespace) {
        Request::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return reply(json!({ "Err": format!("malformed request: {e}") })),
        }
    };
    let result = tokio::task::spawn_blocking(move || {
        let mut plugin = plugin.lock().unwrap_or_else(|p| p.into_inner());
        plugin.handle(endpoint, &req)
    })
    .await;
    match result {
        Ok(Ok(value)) => reply(value),
        Ok(Err(e)) => {
            if matches!(endpoint, "VolumeDriver.Get" | "VolumeDriver.Path") {
                // Docker asks for volumes of every driver it knows: not ours is normal.
                tracing::debug!(endpoint, error = %format!("{e:#}"), "request failed");
            } else {
                tracing::warn!(endpoint, error = %format!("{e:#}"), "request failed");
            }
            reply(json!({ "Err": format!("{e:#}") }))
        }
        Err(e) => reply(json!({ "Err": format!("internal error: {e}") })),
    }
}

fn router(plugin: Shared) -> Router {
    let mut router = Router::new();
    for endpoint in [
        "Plugin.Activate",
        "VolumeDriver.Capabilities",
        "VolumeDriver.Create",
        "VolumeDriver.Remove",
        "VolumeDriver.Mount",
        "VolumeDriver.Unmount",
        "VolumeDriver.Path",
        "VolumeDriver.Get",
        "VolumeDriver.List",
    ] {
        router = router.route(
            &format!("/{endpoint}"),
            post(move |State(p): State<Shared>, body: Bytes| dispatch(p, endpoint, body)),
        );
    }
    router.with_state(plugin)
}

/// Serves the plugin socket until SIGINT / SIGTERM. Volumes stay mounted
/// when the plugin stops (containers may still use them).
pub async fn serve(config: PluginConfig) -> anyhow::Result<()> {
    crate::sandbox::check_fuse()?;
    let socket = config.socket.clone();
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        bail!(
            "another plugin already answers on {} (stop it first, or pass --socket)",
            socket.display()
        );
    }
    let _ = std::fs::remove_file(&socket);
    let plugin = Plugin::load(config, tokio::runtime::Handle::current())?;
    tracing::info!(volumes = plugin.volumes.len(), state = %plugin.state_file().display(), "loaded volumes");
    let listener =
        tokio::net::UnixListener::bind(&socket).with_context(|| format!("cannot listen on {}", socket.display()))?;
    println!("contextfs docker-plugin listening on {}", socket.display());
    let app = router(Arc::new(Mutex::new(plugin)));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    let _ = std::fs::remove_file(&socket);
    served.context("the plugin server failed")
}

/// The plugin's default state directory.
pub fn default_state_dir() -> PathBuf {
    crate::mount::state_root().join("docker-plugin")
}

/// For tests and tools: the mount point the plugin uses for volume `name`.
pub fn volume_mountpoint(state_dir: &Path, name: &str) -> PathBuf {
    Layout::at(&state_dir.join("volumes"), name).ws
}
