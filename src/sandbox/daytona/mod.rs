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
//! [`DaytonaProvider`] puts it behind the provider-neutral traits of
//! [`crate::sandbox::remote`], which run the life of a contextfs sandbox
//! (token, binary, mount or sync mode, destroy) the same for Daytona and E2B.

mod api;
mod provider;
mod records;

pub use api::{Daytona, DaytonaError, DaytonaResult, Toolbox};
pub use provider::DaytonaProvider;
pub use records::{CreateSandbox, Sandbox};
// The shared sandbox logic, under the names `contextfs daytona` has always used.
pub use crate::sandbox::remote::{
    copy_mode, create, destroy, exec, is_static_elf, shell_quote, state_dir, tail, wake, CreateOptions, DestroyOutcome,
    ExecOptions, ExecOutcome, ExecuteRequest, ExecuteResponse, Mode, ModeChoice, SandboxRecord, StateLock,
    PROJECT_LABEL, SANDBOX_CACHE, SANDBOX_STATE, SKILLS, WORKSPACE,
};

/// Daytona's hosted API; self-hosted installations set `DAYTONA_API_URL`.
pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";
