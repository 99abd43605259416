//! contextfs: a shared, versioned workspace for AI agents, served over REST
//! (`contextfs serve`) and used as plain files.
//!
//! Layout:
//!
//! - [`model`]: validated names (paths, hashes, project names);
//! - [`api`]: the wire types of the REST API, error codes included;
//! - [`merge`]: pure three-way merge of JSON and text;
//! - [`chunks`]: large files as content-defined chunks and their manifest;
//! - [`server`]: `contextfs serve`: routes, auth, the service, stores, blobs;
//! - [`migrate`]: `contextfs migrate`, copying a deployment between backends;
//! - [`client`]: the typed REST client of the CLI, mounts and sandboxes;
//! - [`cache`]: the content-addressed blob cache the mounts share;
//! - [`vfs`]: the filesystem core (inodes, handles, staging, journal);
//! - [`fuse`]: the thin fuser adapter over [`vfs`];
//! - [`mount`]: `contextfs mount`: ties vfs, cache, fuse and replication;
//! - [`sandbox`]: Docker runs, the Docker volume plugin and Daytona;
//! - [`sync`]: `contextfs sync`: a project as a plain folder in two-way sync;
//! - [`cli`]: the command line.

pub mod api;
pub mod api_ops;
pub mod cache;
pub mod chunks;
pub mod cli;
pub mod client;
pub mod fuse;
pub mod merge;
pub mod migrate;
pub mod model;
pub mod mount;
pub mod sandbox;
pub mod server;
pub mod sync;
pub mod vfs;
