//! `contextfs mount` / `umount` / `status`: wires the VFS core, the cache,
//! the FUSE adapter and the sync worker together, and runs the control
//! socket that `umount` and `status` talk to.

pub mod control;
mod history;
mod paths;
pub mod remote;
pub mod replicator;
mod skills;
mod stall;

pub use paths::{canonical_mountpoint, detach_stale, is_mounted, mount_state_dir, socket_path, state_root};
pub use skills::check_skills_dir;
use skills::{follow_skills, mount_skills, prepare_skills_dir};

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use fuser::{Config, MountOption, SessionACL};

use crate::cache::{BlobCache, CacheError, CacheFill};
use crate::client::{Client, ClientError};
use crate::model::BlobHash;
use crate::vfs::{BlobSource, Vfs, VfsConfig};
use control::{MountReport, QueuedItem};
use replicator::Replicator;

/// FUSE worker threads of a project mount.
pub const FUSE_THREADS: usize = 8;

/// How long `umount` keeps trying to reach an unreachable server before it
/// gives up and leaves the rest in the journal.
const OFFLINE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    pub project: String,
    pub server: String,
    pub token: String,
    pub agent_id: Option<String>,
    pub allow_other: bool,
    pub read_only: bool,
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub fuse_options: Vec<String>,
    /// Mount the last tree this mount point saw when the server is unreachable.
    pub offline: bool,
    /// Show the published skills read-only at this separate mount point
    /// instead of under `skills/` in the project mount.
    pub skills_dir: Option<PathBuf>,
    /// Which files the kernel may read straight from the cache.
    pub passthrough: crate::vfs::PassthroughPolicy,
    /// What `close()` waits for.
    pub durability: crate::vfs::Durability,
    /// Remote changes raise inotify events (`--inotify`).
    pub inotify: bool,
    /// Bound on each commit, mkdir, rename and delete (`--request-timeout`).
    pub request_timeout: Duration,
}

/// The tree and skills a mount last loaded, kept for `--offline`.
#[derive(serde::Deserialize)]
struct Snapshot {
    listing: crate::api::TreeListing,
    skills: crate::api::SkillsListing,
    read_only: bool,
}

/// [`Snapshot`] as it is written: borrowed, so a big tree is not copied.
#[derive(serde::Serialize)]
struct SnapshotRef<'a> {
    listing: &'a crate::api::TreeListing,
    skills: &'a crate::api::SkillsListing,
    read_only: bool,
}

/// Writes the snapshot for `--offline` (streamed: no second copy of the tree
/// in memory), then hands freed memory back to the system.
fn save_snapshot(path: PathBuf, fetched: Arc<(crate::api::TreeListing, crate::api::SkillsListing)>, read_only: bool) {
    let tmp = path.with_extension("tmp");
    let written = std::fs::File::create(&tmp)
        .and_then(|file| {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let snapshot = SnapshotRef {
                listing: &fetched.0,
                skills: &fetched.1,
                read_only,
            };
            serde_json::to_writer(&mut out, &snapshot).map_err(std::io::Error::other)?;
            std::io::Write::flush(&mut out)
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::debug!(error = %e, "cannot save the tree for --offline");
    }
    drop(fetched);
    release_free_memory();
}

/// Returns memory freed after loading a big tree to the system: glibc keeps
/// it in its arenas otherwise (about 40 MB for 100,000 nodes).
fn release_free_memory() {
    // SAFETY: malloc_trim only walks and trims glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn snapshot_path(state_dir: &Path) -> PathBuf {
    state_dir.join("last-tree.json")
}

/// The FUSE mount options shared by the project and the skills mounts.
fn session_config(fs_name: String, read_only: bool, n_threads: usize, args: &MountArgs) -> Config {
    let mut options = vec![MountOption::FSName(fs_name), MountOption::Subtype("contextfs".into())];
    for o in &args.fuse_options {
        for part in o.split(',').filter(|p| !p.is_empty()) {
            options.push(MountOption::CUSTOM(part.to_string()));
        }
    }
    if read_only {
        options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.n_threads = Some(n_threads);
    config.clone_fd = true;
    if args.allow_other {
        config.acl = SessionACL::All;
    }
    config
}

/// Fetches blobs from the server into the cache, from FUSE threads.
struct ServerBlobs {
    client: Client,
    project: String,
    runtime: tokio::runtime::Handle,
}

/// How long a server may take to answer, or a download may stall, before
/// the reader gets EIO (there is no FUSE_INTERRUPT).
const SERVER_WAIT: Duration = Duration::from_secs(30);
/// The most one chunk (at most 16 MiB) may take in all: a server that
/// trickles bytes must not hold a reader forever either.
const CHUNK_DEADLINE: Duration = Duration::from_secs(60);

impl BlobSource for ServerBlobs {
    fn manifest(&self, hash: &BlobHash) -> Result<Option<crate::chunks::Manifest>, CacheError> {
        self.runtime.block_on(async {
            tokio::time::timeout(SERVER_WAIT, self.client.get_manifest(&self.project, hash))
                .await
                .map_err(|_| CacheError::Fetch {
                    hash: hash.clone(),
                    message: format!(
                        "the server did not send the manifest within {} s",
                        SERVER_WAIT.as_secs()
                    ),
                })?
                .map_err(|e| CacheError::Fetch {
                    hash: hash.clone(),
                    message: format!("cannot get the manifest: {e}"),
                })
        })
    }

    fn fetch_chunk(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError> {
        self.fetch_within(hash, fill, Some(CHUNK_DEADLINE))
    }

    fn fetch(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError> {
        self.fetch_within(hash, fill, None)
    }
}

impl ServerBlobs {
    /// Downloads a blob into `fill`. Every wait for the server is bounded by
    /// [`SERVER_WAIT`]; with `limit`, the whole download is too.
    fn fetch_within(&self, hash: &BlobHash, fill: &mut CacheFill, limit: Option<Duration>) -> Result<(), CacheError> {
        let fetch_error = |message: String| CacheError::Fetch {
            hash: hash.clone(),
            message,
        };
        let download = async {
            // There is no FUSE_INTERRUPT: bound every wait so a dead server
            // turns into EIO instead of a hung reader.
            let mut response = tokio::time::timeout(SERVER_WAIT, self.client.blob_response(&self.project, hash))
                .await
                .map_err(|_| fetch_error(format!("the server did not answer within {} s", SERVER_WAIT.as_secs())))?
                .map_err(|e| fetch_error(e.to_string()))?;
            loop {
                let chunk = tokio::time::timeout(SERVER_WAIT, response.chunk())
                    .await
                    .map_err(|_| fetch_error(format!("the download stalled for {} s", SERVER_WAIT.as_secs())))?
                    .map_err(|e| fetch_error(e.to_string()))?;
                match chunk {
                    Some(bytes) => fill.write(&bytes)?,
                    None => return Ok(()),
                }
            }
        };
        self.runtime.block_on(async {
            match limit {
                None => download.await,
                Some(limit) => tokio::time::timeout(limit, download).await.unwrap_or_else(|_| {
                    Err(fetch_error(format!(
                        "the download did not end within {} s",
                        limit.as_secs()
                    )))
                }),
            }
        })
    }
}

fn explain_connect(server: &str, e: ClientError) -> anyhow::Error {
    match &e {
        ClientError::Unreachable { detail, .. } => anyhow!(
            "cannot reach the contextfs server at {server} ({detail})\nhint: start it with `contextfs serve`, or point --server / CONTEXTFS_SERVER at it"
        ),
        ClientError::Api { status, .. } if status.as_u16() == 401 => {
            anyhow!("the server refused the token: {e}\nhint: pass a project token with --token, or run `contextfs login`")
        }
        _ => anyhow!("{e}"),
    }
}

/// Every open file in the mount holds a descriptor here: lift the soft limit
/// to the hard one so busy agents do not hit EMFILE.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Holds an exclusive lock on a mount's state directory for its lifetime.
struct StateLock(#[allow(dead_code)] std::fs::File);

fn lock_state(dir: &Path) -> anyhow::Result<StateLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another contextfs mount is already using {} (same project and mount point)",
            dir.display()
        );
    }
    Ok(StateLock(file))
}

/// Mounts and serves until SIGINT/SIGTERM, `contextfs umount` or an external
/// unmount; then flushes and reports. `ready` is called once the mount works.
pub fn run(args: MountArgs, ready: impl FnOnce(&Path)) -> anyhow::Result<ExitCode> {
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: this kernel or container has no FUSE (load the fuse module, or run the container with --device /dev/fuse --cap-add SYS_ADMIN)");
    }
    raise_fd_limit();
    let mountpoint = canonical_mountpoint(&args.mountpoint)?;
    let socket = socket_path(&mountpoint);
    match control::request(&socket, "status") {
        Ok(_) => bail!(
            "{} is already mounted by a running contextfs (see `contextfs status {}`)",
            mountpoint.display(),
            mountpoint.display()
        ),
        // Alive but not answering: not a stale mount to detach.
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => bail!(
            "{} is mounted by a running contextfs that does not answer ({e})\nhint: {}",
            mountpoint.display(),
            unanswering_mount_hint(&mountpoint)
        ),
        Err(_) => {}
    }
    // A bad --skills-dir fails here, before anything is mounted.
    let skills_dir = match &args.skills_dir {
        Some(dir) => Some(check_skills_dir(&mountpoint, dir)?),
        None => None,
    };
    if is_mounted(&mountpoint) {
        tracing::warn!(mountpoint = %mountpoint.display(), "a stale mount is in the way; detaching it");
        detach_stale(&mountpoint)?;
    }
    std::fs::create_dir_all(&mountpoint)
        .with_context(|| format!("cannot create the mount point {}", mountpoint.display()))?;
    let skills_dir = match skills_dir {
        Some(dir) => Some(prepare_skills_dir(&mountpoint, &dir)?),
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("contextfs-sync")
        .build()
        .context("cannot start the async runtime")?;
    let runtime_watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    stall::watch_and_log(runtime.handle(), runtime_watch_stop.clone())
        .context("cannot start the thread that watches the async runtime")?;
    let client = Client::new(&args.server, Some(args.token.clone()))
        .map_err(|e| anyhow!("{e}"))?
        .with_write_timeout(args.request_timeout);
    let state_dir = mount_state_dir(&args.server, &args.project, &mountpoint);
    let who = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), client.whoami()).await })
        .map_err(|_| ClientError::Unreachable {
            url: args.server.clone(),
            detail: "no answer within 10 s".into(),
        })
        .and_then(|r| r);
    let online = match who {
        Ok(who) => {
            if !who.admin && who.project.as_deref() != Some(args.project.as_str()) {
                bail!("this token belongs to project {}, not {}", who.project.unwrap_or_default(), args.project);
            }
            Some(who.access == crate::api::Access::Read)
        }
        Err(e @ ClientError::Unreachable { .. }) if args.offline => {
            tracing::warn!(error = %e, "server unreachable: mounting the last known tree (--offline)");
            None
        }
        Err(e @ ClientError::Unreachable { .. }) => {
            return Err(anyhow!(
                "{}\nhint: with a warm cache, `--offline` mounts the tree this mount point last saw; writes queue until the server is back",
                explain_connect(&args.server, e)
            ))
        }
        Err(e) => return Err(explain_connect(&args.server, e)),
    };
    // What the server accepts (EFBIG past its largest file); when it cannot
    // be asked now, the sync worker asks once it reaches the server.
    let limits = match online {
        Some(_) => runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), client.health()).await })
            .ok()
            .and_then(Result::ok)
            .map(|health| health.limits),
        None => None,
    };
    let _lock = lock_state(&state_dir)?;
    let saved: Option<Snapshot> = match online {
        Some(_) => None,
        None => {
            let path = snapshot_path(&state_dir);
            let text = std::fs::read(&path).with_context(|| {
                format!(
                    "--offline needs a tree from an earlier mount of {} at {}, and there is none",
                    args.project,
                    mountpoint.display()
                )
            })?;
            Some(serde_json::from_slice(&text).with_context(|| format!("{} is unreadable", path.display()))?)
        }
    };
    let read_only = args.read_only || online.unwrap_or_else(|| saved.as_ref().is_some_and(|s| s.read_only));
    let cache = Arc::new(
        BlobCache::open(&args.cache_dir, args.cache_size)
            .map_err(|e| anyhow!("cache {}: {e}", args.cache_dir.display()))?,
    );
    let source = Arc::new(ServerBlobs {
        client: client.clone(),
        project: args.project.clone(),
        runtime: runtime.handle().clone(),
    });
    let vfs = Arc::new(
        Vfs::new(
            VfsConfig {
                state_dir: state_dir.clone(),
                read_only,
                agent_id: args.agent_id.clone(),
                durability: args.durability,
            },
            cache.clone(),
            source.clone(),
        )
        .map_err(|e| anyhow!("{e}"))?,
    );
    if let Some(limit) = limits.flatten().map(|l| l.max_file_bytes) {
        vfs.set_max_file_bytes(limit);
    }
    vfs.spawn_group_sync()
        .context("cannot start the journal's group-sync thread")?;
    vfs.set_passthrough_policy(args.passthrough);
    if !args.inotify {
        vfs.stop_announcing();
    }
    let started = Instant::now();
    let fetched = match saved {
        Some(s) => Arc::new((s.listing, s.skills)),
        None => {
            let fetched = runtime
                .block_on(async { tokio::try_join!(client.tree(&args.project, None, true), client.skills()) })
                .map_err(|e| explain_connect(&args.server, e))?;
            let fetched = Arc::new(fetched);
            // Kept for --offline; written in the background (sharing the
            // tree, not copying it), a failure only costs that option.
            let (path, shared) = (snapshot_path(&state_dir), fetched.clone());
            std::thread::spawn(move || save_snapshot(path, shared, read_only));
            fetched
        }
    };
    // With --skills-dir the skills get a mount of their own, and the project
    // mount no `skills/` folder (so the project may have its own `skills`).
    let skills_published = fetched.1.published_at.clone();
    let (skills_mount, skills_vfs) = match &skills_dir {
        Some(dir) => {
            let (session, skills_vfs) = mount_skills(dir, &fetched.1, &state_dir, cache, source, &args)?;
            (Some(session), skills_vfs)
        }
        None => (None, vfs.clone()),
    };
    let load_vfs = vfs.clone();
    let with_skills = skills_dir.is_none();
    let report = runtime
        .block_on(async move {
            tokio::task::spawn_blocking(move || {
                let (listing, skills) = &*fetched;
                let report = load_vfs.load(listing, with_skills.then_some(skills));
                drop(fetched);
                release_free_memory();
                report
            })
            .await
        })
        .context("loading the tree failed")?
        .map_err(|e| anyhow!("{e}"))?;
    tracing::info!(entries = report.entries, skills = report.skills, replayed = report.replayed, elapsed = ?started.elapsed(), "tree loaded");

    // A first lookup is a round trip whose latency is mostly waking a
    // thread; with more idle threads one on the other CPU answers a little
    // sooner (10,000 cold stats here: 270-300 ms with 4, 245-295 ms with 8,
    // no better with 16).
    let config = session_config(format!("contextfs:{}", args.project), read_only, FUSE_THREADS, &args);
    let fs = crate::fuse::ContextFs::new(vfs.clone()).with_history(history::history_view(
        vfs.clone(),
        client.clone(),
        args.project.clone(),
        runtime.handle().clone(),
    ));
    let session = fuser::Session::new(fs, &mountpoint, &config)
        .with_context(|| format!("cannot mount on {} (is it an empty directory? for --allow-other as non-root, /etc/fuse.conf needs user_allow_other)", mountpoint.display()))?;
    let kernel_thread = crate::fuse::spawn_kernel_thread(session.notifier(), vfs.clone(), mountpoint.clone())
        .context("cannot start the kernel-notification thread")?;
    let background = session.spawn().context("cannot start the FUSE session")?;

    let worker = Arc::new(Replicator::new(
        vfs.clone(),
        Arc::new(client.clone()),
        args.project.clone(),
        args.agent_id.clone(),
    ));
    if let Some(limits) = limits {
        worker.set_limits(limits);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain_task = runtime.spawn(worker.clone().run_drain(stop_rx.clone()));
    let feed_task = runtime.spawn(worker.clone().run_feed(stop_rx.clone()));
    let skills_task = runtime.spawn(follow_skills(
        client.clone(),
        skills_vfs,
        skills_published,
        stop_rx.clone(),
    ));
    let info = control::MountInfo {
        project: args.project.clone(),
        mountpoint: mountpoint.display().to_string(),
        server: args.server.clone(),
        journal: vfs.journal_dir().display().to_string(),
        pid: std::process::id(),
        skills_dir: skills_dir.as_ref().map(|d| d.display().to_string()),
    };
    let (umount_tx, mut umount_rx) = tokio::sync::mpsc::channel(1);
    let control_task = runtime.spawn(control::serve(
        socket.clone(),
        info.clone(),
        worker.clone(),
        umount_tx,
        stop_rx.clone(),
    ));

    println!(
        "mounted project {} at {} ({} entries, {:.1?})",
        args.project,
        mountpoint.display(),
        report.entries,
        started.elapsed()
    );
    if let Some(dir) = &skills_dir {
        println!("published skills at {} (read-only)", dir.display());
    }
    if report.replayed > 0 {
        println!(
            "replaying {} change(s) left in the journal by an earlier mount",
            report.replayed
        );
    }
    ready(&mountpoint);

    // Wait for a reason to stop.
    let umount_reply = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let gone = {
            let mountpoint = mountpoint.clone();
            let mut skills_dir = skills_dir.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if !is_mounted(&mountpoint) {
                        return;
                    }
                    // The project mount keeps working without the skills.
                    if skills_dir.as_deref().is_some_and(|d| !is_mounted(d)) {
                        tracing::warn!("the skills dir was unmounted from outside; the project mount goes on");
                        skills_dir = None;
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => None,
            reply = umount_rx.recv() => reply,
            _ = gone => {
                tracing::warn!("the mount point was unmounted from outside");
                None
            }
        }
    });

    // Flush what is pending, then let go.
    let progress = |line: String| {
        if let Some(tx) = &umount_reply {
            let _ = tx.try_send(control::Message::Progress(line.clone()));
        }
        eprintln!("{line}");
    };
    let flushed = runtime.block_on(flush_pending(&worker, &progress));
    let _ = stop_tx.send(true);
    // The kernel thread finishes what is queued first: while it announces
    // it holds the mount root open, which would make the unmount fail.
    vfs.close_kernel_updates();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !kernel_thread.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(background);
    if let (Some(session), Some(dir)) = (skills_mount, &skills_dir) {
        if is_mounted(dir) {
            drop(session); // unmounts
        } else {
            // Unmounted from outside: dropping would try to unmount whatever
            // is at DIR now. The process exits soon; nothing to release.
            std::mem::forget(session);
        }
    }
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(2), drain_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), feed_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), skills_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), control_task).await;
    });
    let _ = std::fs::remove_file(&socket);
    let report = control::report(&info, &worker);
    print!("{}", report.render());
    if let Some(tx) = umount_reply {
        let _ = tx.try_send(control::Message::Done(report.clone()));
        // Give the control connection a moment to deliver the report.
        std::thread::sleep(Duration::from_millis(200));
    }
    runtime_watch_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    runtime.shutdown_timeout(Duration::from_secs(1));
    if !flushed || !report.queued.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// How often a mount asks whether the skills were published again.
const SKILLS_POLL: Duration = Duration::from_secs(5);

/// Drains the journal until it is empty, the server stays unreachable for
/// [`OFFLINE_GRACE`], or only refused changes are left. Prints progress when
/// it takes more than a second.
/// What to do about a mount that runs but does not answer its control
/// socket (said by `contextfs status` and by a second `contextfs mount`).
pub fn unanswering_mount_hint(mountpoint: &Path) -> String {
    let at = mountpoint.display();
    format!(
        "`contextfs umount {at}` waits for what is queued; `fusermount3 -u {at}` detaches it at once \
         (what is journaled stays for the next mount)"
    )
}

pub(crate) async fn flush_pending(worker: &Replicator, progress: &(dyn Fn(String) + Sync)) -> bool {
    let started = Instant::now();
    let mut offline_since: Option<Instant> = None;
    let mut last_progress = Instant::now();
    loop {
        let round = worker.drain(true).await;
        if round.left == 0 {
            return true;
        }
        match &round.transient {
            Some(e) => {
                let since = *offline_since.get_or_insert_with(Instant::now);
                if since.elapsed() > OFFLINE_GRACE {
                    progress(format!(
                        "server unreachable ({e}); {} change(s) stay in the journal",
                        round.left
                    ));
                    return false;
                }
            }
            None if round.done == 0 => return false, // only refused changes remain
            None => offline_since = None,
        }
        if started.elapsed() > Duration::from_secs(1) && last_progress.elapsed() > Duration::from_secs(1) {
            progress(format!("committing: {} change(s) left", round.left));
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Items still waiting for the server, as shown by status and umount.
pub fn queued_items(vfs: &Vfs) -> Vec<QueuedItem> {
    vfs.queued()
        .into_iter()
        .map(|(path, r)| QueuedItem {
            path,
            change: if r.deleted {
                "delete".into()
            } else if r.open_content {
                // Write passthrough: sent once its last writer closes it.
                "create, still open for writing".into()
            } else if r.node.is_none() {
                "create".into()
            } else if r.content.is_some() {
                "write".into()
            } else {
                "metadata".into()
            },
            error: r.last_error,
            changed_at: Some(r.changed_at),
        })
        .collect()
}

pub use control::request as control_request;
pub type Report = MountReport;
