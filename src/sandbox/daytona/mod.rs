//! Daytona sandboxes with a contextfs workspace inside.
//!
//! [`Daytona`] is a small client for the parts of Daytona's REST API that
//! contextfs needs, following Daytona's published clients 0.226
//! (`daytona-api-client` and `daytona-toolbox-api-client`, generated from its
//! OpenAPI); fields it does not read are ignored:
//!
//! - `POST {api}/sandbox` with a `CreateSandbox` body (`snapshot`, `labels`,
//!   `env`, `autoStopInterval`, `autoDeleteInterval`) → `Sandbox`;
//! - `GET {api}/sandbox/{id}` → `Sandbox` (`id`, `state`, `toolboxProxyUrl`, …);
//! - `DELETE {api}/sandbox/{id}`;
//! - the toolbox at `{toolboxProxyUrl}/{id}`: `POST /process/execute` with
//!   `{command, cwd, envs, timeout}` → `{exitCode, result}` (the command is fed
//!   to the sandbox's shell; 408 past its `timeout`), `POST /files/bulk-upload`
//!   (multipart `files[i].path` + `files[i].file`, as the SDKs send; older
//!   daemons get `POST /files/upload?path=`), `GET /files/download?path=`.
//!
//! Throttled calls (429), and calls that may be sent twice when they fail in
//! passing (5xx, no connection), are retried a few times with backoff.
//!
//! Every call carries `Authorization: Bearer <DAYTONA_API_KEY>`.
//!
//! On top of it, [`create`], [`exec`] and [`destroy`] run the life of a
//! contextfs sandbox: a project token, a static `contextfs` binary uploaded
//! into the sandbox, the project mounted at `/workspace` with the skills at
//! `/skills` — or, where FUSE is not available, [`copy_mode`] (`--mode sync`
//! on the command line), which copies the tree in before each command and
//! commits what changed afterwards.
//!
//! The parts: `api` (the REST client and its errors), `records` (the
//! request and response bodies), `state` (what this machine remembers about
//! each sandbox), `scripts` (the shell snippets run inside a sandbox),
//! `lifecycle` (create, exec, destroy) and [`copy_mode`].

mod api;
pub mod copy_mode;
mod lifecycle;
mod records;
mod scripts;
mod state;

pub use api::{Daytona, DaytonaError, DaytonaResult, Toolbox};
pub use lifecycle::{
    create, destroy, exec, is_static_elf, revive, CreateOptions, DestroyOutcome, ExecOptions, ExecOutcome,
};
pub use records::{CreateSandbox, ExecuteRequest, ExecuteResponse, Sandbox};
pub use scripts::{shell_quote, tail};
pub use state::{state_dir, Mode, ModeChoice, SandboxRecord, StateLock};

/// Daytona's hosted API; self-hosted installations set `DAYTONA_API_URL`.
pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";
/// Where the project appears inside the sandbox.
pub const WORKSPACE: &str = "/workspace";
/// Where the published skills appear inside the sandbox (read-only).
pub const SKILLS: &str = "/skills";
/// Where the mount inside the sandbox keeps its journal, logs and socket.
pub const SANDBOX_STATE: &str = "/var/lib/contextfs";
/// The mount's blob cache inside the sandbox.
pub const SANDBOX_CACHE: &str = "/var/cache/contextfs";
/// The label every contextfs sandbox carries (its value is the project).
pub const PROJECT_LABEL: &str = "contextfs.project";
