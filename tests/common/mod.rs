//! Shared harness for the `contextfs serve` integration tests: runs the real
//! binary on a temporary data directory and talks to it over HTTP.

#![allow(dead_code)]

pub mod docker_run;
pub mod latency;
pub mod mount;
pub mod process;
#[path = "../s3_support/mod.rs"]
pub mod s3_support;
pub mod sandbox;
pub mod workspace;
#[allow(unused_imports)] // not every test file mounts
pub use mount::*;
#[allow(unused_imports)] // not every test file runs programs
pub use process::*;
#[allow(unused_imports)] // only the mount suites use it
pub use workspace::*;

mod api;
pub mod data;
mod server;
#[allow(unused_imports)] // not every test file talks to the API directly
pub use api::*;
#[allow(unused_imports)] // not every test file makes test data
pub use data::*;
pub use server::*;

/// The admin secret every test server is started with (via the environment).
pub const ADMIN_TOKEN: &str = "cfs_admin_integration_test_secret";
