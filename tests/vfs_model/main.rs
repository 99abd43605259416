//! Model-based and unit tests of the filesystem core (`contextfs::vfs`),
//! driven without a kernel or a server. Laid out like mountpoint-s3's
//! `tests/reftests/`: shared fixtures, the reference model, the property
//! tests that compare the core against it, and one file per concern.
//!
//! - `harness`: `Env`, `MapSource`, listings, answers, events, helpers;
//! - `model`: the reference model of the tree and the comparison with it;
//! - `local_ops`: property test of local operations (every errno and byte)
//!   and of journal replay;
//! - `sync_model`: a model of whole system calls (symlink, chmod, truncate,
//!   touch, fsync) with what the mount knows of each server node;
//! - `sync`: property test against a simulated server (late, reordered
//!   answers; echoes and another writer's changes in the feed);
//!   `sync_cases`: its shrunk failures as plain tests;
//! - `crash`: property test cutting the journal at any byte before a remount;
//! - `announce`: remote changes shown to file watchers (the core's half);
//! - `staging`: a copy staged for writing races with other writers;
//! - `max_file_size`: EFBIG past the server's largest file;
//! - `chunked_reads`: large files read by chunks from a fake chunk server;
//! - `editor_saves`, `acks`, `drain_plan`, `passthrough`, `remote`, `replay`:
//!   unit tests pinning one concern each.

// What tests measure on disk, shared with the integration suites' harness.
#[path = "../common/data.rs"]
#[allow(dead_code)]
mod data;
mod harness;
mod model;
mod sync_model;

mod acks;
mod announce;
mod chunked_reads;
mod crash;
mod drain_plan;
mod editor_saves;
mod local_ops;
mod max_file_size;
mod passthrough;
mod remote;
mod replay;
mod staging;
mod sync;
mod sync_cases;
