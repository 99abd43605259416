//! `contextfs sync DIR`: the long-running loop. It downloads what is
//! missing, then reacts to two sources at once:
//!
//! - file events from the operating system (the `notify` crate: inotify on
//!   Linux, FSEvents on macOS), debounced, each burst one push round;
//! - the project's change feed (long-poll), applied as it arrives.
//!
//! Both run on this one task, so the state is never touched by two rounds at
//! once. A failed round (server down) is retried with backoff; its changes
//! stay pending and `sync status` says so. A full rescan runs every 30 s in
//! case the OS dropped events (inotify's queue can overflow).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::apply::FEED_WAIT;
use super::folder::Folder;
use super::status::SyncReport;
use super::{FileOutcome, Outcome, SyncError, SyncResult, STATE_DIR};
use crate::api::ChangesPage;
use crate::client::{Client, ClientResult};

/// Quiet time after the last file event before a push round.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// A burst of events never delays a round longer than this.
const MAX_DELAY: Duration = Duration::from_secs(1);
const RESCAN_EVERY: Duration = Duration::from_secs(30);
/// When the folder cannot be watched at all.
const WITHOUT_EVENTS_RESCAN_EVERY: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

type FeedFuture = Pin<Box<dyn Future<Output = ClientResult<ChangesPage>> + Send>>;

fn poll_feed(client: Client, project: String, since: i64, delay: Duration) -> FeedFuture {
    Box::pin(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        client.changes(&project, since, FEED_WAIT).await
    })
}

/// What the loop prints as it goes (the foreground command shows it).
pub type Printer = Box<dyn Fn(&FileOutcome) + Send>;

struct Health {
    online: bool,
    last_error: Option<String>,
    ready: bool,
    /// Skipped paths already printed (each is printed once, not per round).
    reported_skips: std::collections::BTreeSet<String>,
}

/// Runs until `shutdown` resolves, then pushes once more and returns.
/// `on_ready` is called once the first round is done.
pub async fn run(
    mut folder: Folder,
    print: Printer,
    on_ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> SyncResult<()> {
    let root = folder.root.clone();
    let mut health = Health {
        online: true,
        last_error: None,
        ready: false,
        reported_skips: Default::default(),
    };
    // Watch before the first round, so nothing written once the folder is
    // reported ready (or during the first round) goes unnoticed.
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => event.paths.iter().any(|p| !is_state_path(p)),
            // An overflow or watch error: rescan to be safe.
            Err(_) => true,
        };
        if relevant {
            let _ = events_tx.send(());
        }
    })
    .map_err(|e| SyncError::Watch(e.to_string()))?;
    let rescan_every = match watcher.watch(&root, RecursiveMode::Recursive) {
        Ok(()) => RESCAN_EVERY,
        Err(e) => {
            // Out of inotify watches, for example: keep syncing by scanning.
            tracing::warn!(error = %e, "cannot watch the folder for changes; scanning it every 2 s instead");
            WITHOUT_EVENTS_RESCAN_EVERY
        }
    };
    let fresh = folder.state.cursor == 0 && folder.state.files.is_empty();
    if fresh {
        // Nothing to work from without the server: say so plainly.
        for outcome in folder.checkout(true, true).await? {
            print(&outcome);
        }
    } else {
        // What changed while no sync ran, then whatever is still missing.
        let caught_up = match folder.pull().await {
            Ok(outcomes) => {
                outcomes.iter().for_each(&print);
                folder.checkout(true, false).await
            }
            Err(e) => Err(e),
        };
        match caught_up {
            Ok(outcomes) => outcomes.iter().for_each(&print),
            Err(e) if e.is_transient() => offline(&mut health, &e),
            Err(e) => return Err(e),
        }
    }
    let mut push_due: Option<Instant> = None;
    let mut backoff = Duration::from_secs(1);
    round(&mut folder, &print, &mut health, &mut push_due, &mut backoff).await?;
    health.ready = true;
    SyncReport::of(&folder, true, health.online, health.last_error.clone()).save(&root);
    on_ready();

    let project = folder.project().to_string();
    let mut feed = poll_feed(
        folder.client.clone(),
        project.clone(),
        folder.state.cursor,
        Duration::ZERO,
    );
    let mut feed_backoff = Duration::from_secs(1);
    let mut first_event: Option<Instant> = None;
    let mut rescan = tokio::time::interval(rescan_every);
    rescan.reset();
    tokio::pin!(shutdown);
    loop {
        let due = push_due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = events_rx.recv() => {
                let now = Instant::now();
                let first = *first_event.get_or_insert(now);
                let wanted = (now + DEBOUNCE).min(first + MAX_DELAY);
                // A retry waiting on backoff is not hurried by new events.
                push_due = Some(match push_due {
                    Some(at) if at > wanted && health.online => wanted,
                    Some(at) => at.max(wanted),
                    None => wanted,
                });
            }
            () = tokio::time::sleep_until(due), if push_due.is_some() => {
                push_due = None;
                first_event = None;
                round(&mut folder, &print, &mut health, &mut push_due, &mut backoff).await?;
            }
            _ = rescan.tick() => {
                if push_due.is_none() {
                    push_due = Some(Instant::now());
                }
            }
            page = &mut feed => {
                let delay = match page {
                    Ok(page) => {
                        feed_backoff = Duration::from_secs(1);
                        match folder.apply_events(&page.events).await {
                            Ok(outcomes) => {
                                if !page.more && page.events.is_empty() {
                                    folder.state.cursor = folder.state.cursor.max(page.cursor);
                                }
                                outcomes.iter().for_each(&print);
                                Duration::ZERO
                            }
                            Err(e) if e.is_transient() => {
                                offline(&mut health, &e);
                                next_backoff(&mut feed_backoff)
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) => {
                        offline(&mut health, &SyncError::Client(e));
                        next_backoff(&mut feed_backoff)
                    }
                };
                SyncReport::of(&folder, true, health.online, health.last_error.clone()).save(&root);
                feed = poll_feed(folder.client.clone(), project.clone(), folder.state.cursor, delay);
            }
        }
    }
    drop(watcher);
    // A last round for what changed just before the stop (bounded: the
    // server may be down; then it waits for the next start).
    let last = tokio::time::timeout(
        Duration::from_secs(10),
        round(&mut folder, &print, &mut health, &mut push_due, &mut backoff),
    )
    .await;
    if let Ok(Err(e)) = last {
        tracing::warn!(error = %e, "last push before stopping failed");
    }
    folder.save()?;
    SyncReport::of(&folder, false, health.online, health.last_error.clone()).save(&root);
    Ok(())
}

/// One push round; on a transient failure schedules a retry with backoff.
async fn round(
    folder: &mut Folder,
    print: &Printer,
    health: &mut Health,
    push_due: &mut Option<Instant>,
    backoff: &mut Duration,
) -> SyncResult<()> {
    let report = folder.push().await?;
    report.outcomes.iter().for_each(&print);
    // Files the scan leaves out (fifos, names that are not UTF-8, ...):
    // said once, like the server's refusals, never once per round.
    for outcome in &report.outcomes {
        if matches!(outcome.outcome, Outcome::Skipped(_)) {
            health.reported_skips.insert(outcome.path.clone());
        }
    }
    for (path, why) in &folder.skipped {
        if health.reported_skips.insert(path.clone()) {
            print(&FileOutcome {
                path: path.clone(),
                outcome: Outcome::Skipped(why.clone()),
            });
        }
    }
    match &report.interrupted {
        Some(e) => {
            offline(health, e);
            *push_due = Some(Instant::now() + next_backoff(backoff));
        }
        None => {
            health.online = true;
            health.last_error = None;
            *backoff = Duration::from_secs(1);
            if !report.unsettled.is_empty() {
                *push_due = Some(Instant::now() + DEBOUNCE);
            }
        }
    }
    SyncReport::of(folder, health.ready, health.online, health.last_error.clone()).save(&folder.root);
    Ok(())
}

fn offline(health: &mut Health, e: &SyncError) {
    if health.online {
        tracing::warn!(error = %e, "server unavailable; local changes queue until it is back");
    }
    health.online = false;
    health.last_error = Some(e.to_string());
}

fn next_backoff(backoff: &mut Duration) -> Duration {
    let now = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    now
}

fn is_state_path(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == STATE_DIR)
}

/// The folder a `--daemon` start logs to.
pub fn log_path(root: &Path) -> PathBuf {
    super::state::SyncState::dir(root).join("sync.log")
}
