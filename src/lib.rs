//! contextfs: a shared, versioned workspace for AI agents, served over REST
//! (`contextfs serve`) and used as plain files.
//!
//! Layout: [`model`] (validated names), [`api`] (wire types), [`merge`]
//! (pure three-way merge), [`server`] (service, stores, routes), [`client`]
//! (typed REST client), [`cli`] (the command line).

pub mod api;
pub mod cache;
pub mod cli;
pub mod client;
pub mod fuse;
pub mod merge;
pub mod migrate;
pub mod model;
pub mod mount;
pub mod sandbox;
pub mod server;
pub mod vfs;
