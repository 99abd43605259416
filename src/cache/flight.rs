//! In-flight de-duplication: while one thread of this process fills a blob,
//! other callers for the same hash wait for its outcome instead of fetching
//! the same bytes again.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::{lock, CacheError};
use crate::model::BlobHash;

/// The fills running in this process, by hash.
pub(super) struct Flights {
    running: Mutex<HashMap<BlobHash, Arc<Flight>>>,
}

impl Flights {
    pub(super) fn new() -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Leads the fill of `hash`, or waits on the one already running.
    pub(super) fn join(&self, hash: &BlobHash) -> Role<'_> {
        let mut flights = lock(&self.running);
        if let Some(flight) = flights.get(hash) {
            return Role::Waiter(Arc::clone(flight));
        }
        let flight = Arc::new(Flight {
            outcome: Mutex::new(None),
            done: Condvar::new(),
        });
        flights.insert(hash.clone(), Arc::clone(&flight));
        Role::Leader(FlightGuard {
            flights: self,
            hash: hash.clone(),
            flight,
            outcome: None,
        })
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        lock(&self.running).is_empty()
    }

    /// References held on the flight of `hash` (0 when none runs).
    #[cfg(test)]
    fn holders(&self, hash: &BlobHash) -> usize {
        lock(&self.running).get(hash).map(Arc::strong_count).unwrap_or(0)
    }
}

/// The shared outcome of one in-progress fill.
pub(super) struct Flight {
    outcome: Mutex<Option<Result<(), CacheError>>>,
    done: Condvar,
}

impl Flight {
    pub(super) fn wait(&self) -> Result<(), CacheError> {
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(result) = outcome.as_ref() {
                return result.as_ref().map(|_| ()).map_err(CacheError::duplicate);
            }
            outcome = self.done.wait(outcome).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

pub(super) enum Role<'a> {
    Leader(FlightGuard<'a>),
    Waiter(Arc<Flight>),
}

/// Held by the thread running a fill. Dropping it (also by panic) retires the
/// flight and wakes the waiters, so nobody blocks forever.
pub(super) struct FlightGuard<'a> {
    flights: &'a Flights,
    hash: BlobHash,
    flight: Arc<Flight>,
    outcome: Option<Result<(), CacheError>>,
}

impl FlightGuard<'_> {
    pub(super) fn finish<T>(mut self, result: &Result<T, CacheError>) {
        self.outcome = Some(result.as_ref().map(|_| ()).map_err(CacheError::duplicate));
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        // Retire first: a caller arriving from now on must look at the disk
        // (or start a new fill), not wait on a finished flight.
        {
            let mut flights = lock(&self.flights.running);
            if flights.get(&self.hash).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                flights.remove(&self.hash);
            }
        }
        let outcome = self.outcome.take().unwrap_or_else(|| {
            Err(CacheError::Fetch {
                hash: self.hash.clone(),
                message: "the thread filling the cache panicked".to_string(),
            })
        });
        *lock(&self.flight.outcome) = Some(outcome);
        self.flight.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::cache::tests::{read_all, tmp_files};
    use crate::cache::BlobCache;

    /// Blocks until `waiters` other threads have joined the flight for `hash`
    /// (each holds a clone of its Arc), so single-flight tests are not timing
    /// dependent.
    fn wait_for_waiters(cache: &BlobCache, hash: &BlobHash, waiters: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let count = cache.flights.holders(hash);
            // One reference in the map, one in the leader's guard.
            if count >= waiters + 2 {
                return;
            }
            assert!(Instant::now() < deadline, "waiters never joined ({count})");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn single_flight_fills_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(BlobCache::open(dir.path(), 1 << 20).expect("open"));
        let content: Arc<Vec<u8>> = Arc::new((0..100_000u32).map(|i| (i % 251) as u8).collect());
        let hash = BlobHash::of(&content);
        let fills = Arc::new(AtomicUsize::new(0));
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (cache, content, hash, fills, barrier) = (
                    Arc::clone(&cache),
                    Arc::clone(&content),
                    hash.clone(),
                    Arc::clone(&fills),
                    Arc::clone(&barrier),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    let file = cache
                        .get_or_fill(&hash, |fill| {
                            fills.fetch_add(1, Ordering::SeqCst);
                            wait_for_waiters(&cache, &hash, threads - 1);
                            fill.write(&content)
                        })
                        .expect("get_or_fill");
                    read_all(file)
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().expect("thread"), *content);
        }
        assert_eq!(fills.load(Ordering::SeqCst), 1);
        assert_eq!(cache.usage(), (content.len() as u64, 1 << 20, 1));
        assert!(cache.flights.is_empty());
    }

    #[test]
    fn single_flight_failure_is_shared_with_waiters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(BlobCache::open(dir.path(), 1 << 20).expect("open"));
        let hash = BlobHash::of(b"never arrives");
        let fills = Arc::new(AtomicUsize::new(0));
        let threads = 4;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (cache, hash, fills, barrier) = (
                    Arc::clone(&cache),
                    hash.clone(),
                    Arc::clone(&fills),
                    Arc::clone(&barrier),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    cache
                        .get_or_fill(&hash, |fill| {
                            fills.fetch_add(1, Ordering::SeqCst);
                            wait_for_waiters(&cache, &hash, threads - 1);
                            fill.write(b"partial")?;
                            Err(CacheError::Io {
                                path: PathBuf::from("/remote"),
                                source: io::Error::from_raw_os_error(libc::ECONNRESET),
                            })
                        })
                        .expect_err("fill fails")
                })
            })
            .collect();
        for handle in handles {
            let err = handle.join().expect("thread");
            assert!(matches!(&err, CacheError::Io { source, .. } if source.raw_os_error() == Some(libc::ECONNRESET)));
        }
        assert_eq!(fills.load(Ordering::SeqCst), 1);
        assert!(tmp_files(&cache).is_empty());
        assert!(!cache.contains(&hash));
    }
}
