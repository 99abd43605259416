//! A watch on the sync worker's runtime. Its two workers drive every socket
//! and timer of the mount (commits, the change feed, downloads for FUSE
//! threads), so a worker blocked on the wrong thing stops all of them, and
//! with them every timeout that would have turned the wait into an error
//! (ARCHITECTURE.md, "The mount"). Nothing in the mount then says why reads
//! hang. A task ticks on the runtime; a plain thread checks the ticks and
//! logs an error when they stop for [`STALL_AFTER`], and again when they
//! resume.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// No tick for this long is a stall worth an error in the log: far above
/// any wait the runtime should ever see (its own bounds are 30 s).
pub const STALL_AFTER: Duration = Duration::from_secs(45);

/// Starts the ticking task on `runtime` and the thread that watches it; the
/// thread calls `on_change(Some(silent_for))` when the ticks stop for
/// `stall_after`, and `on_change(None)` once they resume. Both end when
/// `stop` is set.
pub fn watch(
    runtime: &tokio::runtime::Handle,
    stall_after: Duration,
    stop: Arc<AtomicBool>,
    on_change: impl Fn(Option<Duration>) + Send + 'static,
) -> std::io::Result<()> {
    let started = Instant::now();
    let last_tick = Arc::new(AtomicU64::new(0));
    let tick_every = (stall_after / 4).max(Duration::from_millis(10));
    {
        let (last_tick, stop) = (last_tick.clone(), stop.clone());
        runtime.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                last_tick.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                tokio::time::sleep(tick_every).await;
            }
        });
    }
    std::thread::Builder::new()
        .name("runtime-watch".into())
        .spawn(move || {
            let mut stalled = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick_every);
                let now = started.elapsed().as_millis() as u64;
                let silent = Duration::from_millis(now.saturating_sub(last_tick.load(Ordering::Relaxed)));
                if !stalled && silent >= stall_after {
                    stalled = true;
                    on_change(Some(silent));
                } else if stalled && silent < stall_after {
                    stalled = false;
                    on_change(None);
                }
            }
        })
        .map(drop)
}

/// [`watch`] with the mount's threshold, reporting to the log.
pub fn watch_and_log(runtime: &tokio::runtime::Handle, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    watch(runtime, STALL_AFTER, stop, |change| match change {
        Some(silent) => tracing::error!(
            silent_s = silent.as_secs(),
            "the sync runtime has not run for {} s: commits, the change feed and downloads are stalled, \
             and reads that need the server hang (a bug in contextfs; please report it with this log)",
            silent.as_secs()
        ),
        None => tracing::warn!("the sync runtime runs again"),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// One worker, blocked by a task that never yields: the watch reports a
    /// stall, and the end of it once the task lets go.
    #[test]
    fn a_blocked_runtime_is_reported_and_so_is_its_recovery() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, changes) = mpsc::channel();
        watch(runtime.handle(), Duration::from_millis(200), stop.clone(), move |c| {
            let _ = tx.send(c.is_some());
        })
        .expect("watch");
        // Running freely: no report.
        assert!(changes.recv_timeout(Duration::from_millis(600)).is_err());
        let (release_tx, release) = mpsc::channel::<()>();
        runtime.spawn(async move {
            // A worker blocked on something outside the runtime.
            let _ = release.recv();
        });
        assert_eq!(changes.recv_timeout(Duration::from_secs(10)), Ok(true), "the stall");
        release_tx.send(()).expect("release");
        assert_eq!(changes.recv_timeout(Duration::from_secs(10)), Ok(false), "the recovery");
        stop.store(true, Ordering::Relaxed);
    }
}
