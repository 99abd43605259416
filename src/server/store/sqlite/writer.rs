//! The writer thread: every write of the store, batched into one transaction
//! (group commit), each write inside its own SAVEPOINT.

use std::sync::mpsc;

use rusqlite::Connection;

use crate::server::store::{StoreError, StoreResult};

/// How many queued writes one transaction may absorb.
const MAX_BATCH: usize = 256;

/// A write queued for the writer thread. Running it and telling its caller
/// how it ended are separate steps: a job is either run (inside the batch's
/// transaction and its own savepoint) and later finished with the batch's
/// commit result, or abandoned without ever touching the database.
pub(super) trait Job: Send {
    /// Runs the job's statements; the caller learns the outcome only through
    /// the returned [`Ran`], once the batch has committed or failed.
    fn run(self: Box<Self>, conn: &Connection) -> Ran;
    /// Fails the job without running it (its transaction or savepoint could
    /// not be opened): nothing it would have written reaches the database.
    fn abandon(self: Box<Self>, reason: String);
}

/// A job that has run: whether its statements succeeded (else its savepoint
/// is rolled back) and how to answer its caller once the batch has ended.
pub(super) struct Ran {
    ok: bool,
    finish: Box<dyn FnOnce(Result<(), String>) + Send>,
}

/// [`SqliteStore::write`](super::SqliteStore)'s job: a closure and the channel its caller awaits.
pub(super) struct Request<F, T> {
    pub work: F,
    pub reply: tokio::sync::oneshot::Sender<StoreResult<T>>,
}

impl<F, T> Job for Request<F, T>
where
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Ran {
        let Request { work, reply } = *self;
        let result = work(conn);
        Ran {
            ok: result.is_ok(),
            finish: Box::new(move |committed| {
                let _ = reply.send(match committed {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::Backend(e)),
                });
            }),
        }
    }

    fn abandon(self: Box<Self>, reason: String) {
        let _ = self.reply.send(Err(StoreError::Backend(reason)));
    }
}

pub(super) fn writer_loop(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&conn, batch);
    }
}

/// Runs `batch` as one transaction, each job inside its own savepoint, and
/// answers every job's caller with the commit's outcome.
///
/// A job runs only inside its savepoint: when `BEGIN IMMEDIATE` fails the
/// whole batch is abandoned unrun, and a job whose `SAVEPOINT` fails is
/// abandoned alone. If a failed job's savepoint cannot be rolled back, its
/// partial writes would reach the commit, so the whole transaction is rolled
/// back and every job fails.
fn run_batch(conn: &Connection, batch: Vec<Box<dyn Job>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let reason = format!("cannot begin a transaction: {e}");
        for job in batch {
            job.abandon(reason.clone());
        }
        return;
    }
    let mut finishes = Vec::with_capacity(batch.len());
    let mut poisoned: Option<String> = None;
    for job in batch {
        if let Some(reason) = &poisoned {
            job.abandon(reason.clone());
            continue;
        }
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            tracing::error!(error = %e, "savepoint failed; the write is not run");
            job.abandon(format!("cannot open a savepoint for the write: {e}"));
            continue;
        }
        let ran = job.run(conn);
        let end = if ran.ok {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        if let Err(e) = conn.execute_batch(end) {
            tracing::error!(error = %e, "ending savepoint failed");
            if !ran.ok {
                poisoned = Some(format!("cannot undo a failed write in the batch: {e}"));
            }
        }
        finishes.push(ran.finish);
    }
    let committed = match poisoned {
        Some(reason) => Err(reason),
        None => conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
    };
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for finish in finishes {
        finish(committed.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::{c_char, c_int, c_void, CStr};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::server::store::sqlite::schema::open_connection;

    /// A writer connection on a fresh database with one table, and its path.
    fn writer(dir: &tempfile::TempDir) -> (Connection, std::path::PathBuf) {
        let path = dir.path().join("meta.db");
        let conn = open_connection(&path).expect("open the database");
        conn.execute_batch("CREATE TABLE t (x TEXT NOT NULL)")
            .expect("create a table");
        (conn, path)
    }

    /// A job inserting `x` into `t` (and noting that it ran), and the channel
    /// its caller would await.
    fn insert_job(
        x: &'static str,
        ran: Arc<AtomicBool>,
        before: impl FnOnce(&Connection) + Send + 'static,
    ) -> (Box<dyn Job>, tokio::sync::oneshot::Receiver<StoreResult<()>>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let work = move |conn: &Connection| {
            ran.store(true, Ordering::SeqCst);
            before(conn);
            conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
            Ok(())
        };
        (Box::new(Request { work, reply }), rx)
    }

    fn rows(path: &Path) -> Vec<String> {
        let conn = open_connection(path).expect("open a reader");
        let mut stmt = conn.prepare("SELECT x FROM t ORDER BY x").expect("prepare");
        let rows = stmt.query_map([], |r| r.get(0)).expect("query");
        rows.collect::<Result<_, _>>().expect("read rows")
    }

    #[test]
    fn a_batch_that_cannot_begin_runs_none_of_its_jobs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (conn, path) = writer(&dir);
        conn.busy_timeout(Duration::ZERO).expect("busy timeout");
        // Another connection holds the write lock, so BEGIN IMMEDIATE fails.
        let blocker = open_connection(&path).expect("open a second connection");
        blocker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
        // Were the job run anyway (outside any transaction), it would free the
        // lock and its insert would autocommit.
        let ran = Arc::new(AtomicBool::new(false));
        let (job, mut reply) = insert_job("a", ran.clone(), move |_| {
            blocker.execute_batch("ROLLBACK").expect("release the write lock");
        });
        run_batch(&conn, vec![job]);
        assert!(
            !ran.load(Ordering::SeqCst),
            "the job ran although its batch never began"
        );
        match reply.try_recv() {
            Ok(Err(StoreError::Backend(e))) => assert!(e.contains("cannot begin a transaction"), "{e}"),
            other => panic!("expected a backend error, got {other:?}"),
        }
        // The abandoned job (and the blocker it held) is gone: the database is unchanged.
        assert!(rows(&path).is_empty());
    }

    /// An authorizer that denies the savepoint statements whose operation
    /// (`BEGIN`, `RELEASE` or `ROLLBACK`) is the C string `denied` points to.
    unsafe extern "C" fn deny_savepoint_op(
        denied: *mut c_void,
        action: c_int,
        operation: *const c_char,
        _: *const c_char,
        _: *const c_char,
        _: *const c_char,
    ) -> c_int {
        let denied = CStr::from_ptr(denied as *const c_char);
        if action == rusqlite::ffi::SQLITE_SAVEPOINT && !operation.is_null() && CStr::from_ptr(operation) == denied {
            rusqlite::ffi::SQLITE_DENY
        } else {
            rusqlite::ffi::SQLITE_OK
        }
    }

    /// From now on `conn` refuses (SQLITE_AUTH) the savepoint operation `op`.
    fn deny_savepoint(conn: &Connection, op: &'static CStr) {
        // SAFETY: the handle is a live connection; the callback only reads
        // its arguments and `op`, which lives for the whole program.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_set_authorizer(conn.handle(), Some(deny_savepoint_op), op.as_ptr() as *mut c_void)
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
    }

    #[test]
    fn a_job_whose_savepoint_fails_is_not_run() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (conn, path) = writer(&dir);
        // The first job succeeds, then makes every later SAVEPOINT fail
        // (SQLITE_AUTH) through an authorizer on the writer's connection.
        let (first_ran, second_ran) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (first, mut first_reply) = insert_job("a", first_ran.clone(), |conn| deny_savepoint(conn, c"BEGIN"));
        let (second, mut second_reply) = insert_job("b", second_ran.clone(), |_| {});
        run_batch(&conn, vec![first, second]);
        assert!(first_ran.load(Ordering::SeqCst));
        assert!(matches!(first_reply.try_recv(), Ok(Ok(()))));
        assert!(!second_ran.load(Ordering::SeqCst), "the job ran without its savepoint");
        match second_reply.try_recv() {
            Ok(Err(StoreError::Backend(e))) => assert!(e.contains("savepoint"), "{e}"),
            other => panic!("expected a backend error, got {other:?}"),
        }
        assert_eq!(rows(&path), ["a"]);
    }

    #[test]
    fn a_failed_job_that_cannot_be_undone_fails_its_whole_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (conn, path) = writer(&dir);
        let (first, mut first_reply) = insert_job("a", Arc::new(AtomicBool::new(false)), |_| {});
        // The second job writes, then fails; its savepoint cannot be rolled
        // back (ROLLBACK TO is denied), so its write would reach the commit.
        let (reply, mut failing_reply) = tokio::sync::oneshot::channel::<StoreResult<()>>();
        let work = |conn: &Connection| {
            deny_savepoint(conn, c"ROLLBACK");
            conn.execute("INSERT INTO t (x) VALUES ('b')", [])?;
            Err(StoreError::HeadMoved)
        };
        let failing: Box<dyn Job> = Box::new(Request { work, reply });
        let third_ran = Arc::new(AtomicBool::new(false));
        let (third, mut third_reply) = insert_job("c", third_ran.clone(), |_| {});
        run_batch(&conn, vec![first, failing, third]);
        assert!(
            !third_ran.load(Ordering::SeqCst),
            "a job ran in a batch that must roll back"
        );
        for reply in [&mut first_reply, &mut failing_reply, &mut third_reply] {
            assert!(matches!(reply.try_recv(), Ok(Err(_))), "every job of the batch fails");
        }
        assert!(rows(&path).is_empty(), "nothing of the batch is committed");
    }
}
