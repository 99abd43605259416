//! fsync(2) of a file: durable in the journal at once, and, for an edit of
//! a file the server has, sent now and waited for (bounded), with the sync
//! worker's help (`urgent` records, `round_done`).

use super::*;

impl Vfs {
    /// fsync(): the change is journaled (durable). An edit of a file the
    /// server has, in place, is then sent at once and fsync waits (at most
    /// [`FSYNC_WAIT`]) for the answer; a change the server refuses is `EIO`.
    /// With the server unreachable it returns once the change is durable
    /// here (it stays queued). A new or moved file goes out with the normal
    /// debounce: an editor fsyncs its new file before it removes the backup,
    /// and sending the new file then would split the save into two nodes.
    pub fn fsync(&self, fh: u64) -> VfsResult<()> {
        self.flush(fh)?;
        // Durable now, whatever the durability mode: this file's earlier
        // closes and every namespace change before it.
        self.journal.make_durable()?;
        let waiting_for = {
            let st = self.lock();
            let ino = st.handles.get(&fh).ok_or_else(VfsError::badf)?.ino;
            let record = st.inodes.get(&ino).and_then(|i| st.records.get(&i.uid));
            // Only a commit to a node the server has can go out on its own.
            match record.map(|r| (r, self.plan_record(&st, r))) {
                Some((r, Ok(Some(drain::DrainOp::Commit { node: Some(_), .. })))) => Some((r.uid, r.rev)),
                _ => None,
            }
        };
        let Some((uid, rev)) = waiting_for else {
            self.wake.notify_one();
            return Ok(());
        };
        // Marked urgent before the worker is woken (in await_commit), so the
        // wake-up sends it at once instead of sleeping out the debounce.
        self.set_urgent(uid, true);
        let result = self.await_commit(uid, rev);
        self.set_urgent(uid, false);
        result
    }

    pub(super) fn set_urgent(&self, uid: u64, on: bool) {
        let mut urgent = self.urgent.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            urgent.insert(uid);
        } else {
            urgent.remove(&uid);
        }
    }

    /// Whether fsync waits for some record to go out now.
    pub fn has_urgent(&self) -> bool {
        !self.urgent.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The records fsync waits for (usually none), copied once per plan.
    pub(super) fn urgent_uids(&self) -> std::collections::HashSet<u64> {
        self.urgent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until record `uid` at `rev` was acknowledged (or superseded),
    /// refused (`EIO`), the server is unreachable, or [`FSYNC_WAIT`] passed.
    pub(super) fn await_commit(&self, uid: u64, rev: u64) -> VfsResult<()> {
        self.wake.notify_one();
        let deadline = std::time::Instant::now() + FSYNC_WAIT;
        let mut st = self.lock();
        loop {
            if !self.server_reachable.load(Ordering::Relaxed) {
                return Ok(()); // durable here; it goes out when the server is back
            }
            match st.records.get(&uid) {
                None => return Ok(()),
                Some(r) if r.rev > rev => return Ok(()), // superseded by a newer change
                Some(r) => {
                    if let Some(error) = &r.last_error {
                        return Err(VfsError::new(
                            libc::EIO,
                            format!(
                                "the server refused {}: {error}; the change stays in the journal (see `contextfs status`)",
                                Self::path_of(&st, st.by_uid.get(&uid).copied().unwrap_or(ROOT_INO))
                            ),
                        ));
                    }
                }
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(()); // still durable here; the worker keeps trying
            }
            st = self
                .round_done
                .wait_timeout(st, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The sync worker reports after each round whether it reached the
    /// server; fsync waits only while it does.
    pub fn round_finished(&self, server_reachable: bool) {
        self.server_reachable.store(server_reachable, Ordering::Relaxed);
        let _guard = self.lock();
        self.round_done.notify_all();
    }
}
