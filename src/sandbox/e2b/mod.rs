//! E2B sandboxes with a contextfs workspace inside.
//!
//! [`E2b`] is a client for E2B's published API as the `e2b` Python SDK 2.63
//! calls it:
//!
//! - the REST control plane at `E2B_API_URL` (default `https://api.e2b.app`),
//!   with `X-API-KEY`: `POST /v2/sandboxes` (`{templateID, timeout, metadata,
//!   envVars}` → `{sandboxID, envdVersion, envdAccessToken, domain}`),
//!   `GET /sandboxes/{id}`, `GET /v2/sandboxes?metadata=`,
//!   `DELETE /sandboxes/{id}`, `POST /sandboxes/{id}/timeout` (`{timeout}`);
//! - the `envd` daemon in each sandbox ([`EnvdShell`]), at
//!   `https://49983-{sandboxID}.{domain}` or `E2B_SANDBOX_URL` (then every
//!   request names the sandbox in `E2b-Sandbox-Id`), with the sandbox's
//!   `X-Access-Token`: `process.Process/Start` over Connect-RPC with the
//!   JSON codec (`/bin/bash -l -c COMMAND`, output streamed back), and
//!   `GET`/`POST /files` for files.
//!
//! [`E2bProvider`] puts it behind the provider-neutral traits of
//! [`crate::sandbox::remote`]: the same token, mount, sync-mode and destroy
//! logic as Daytona. E2B kills a sandbox when its timeout runs out, so every
//! command first renews it (keep-alive): a sandbox that times out between
//! commands has committed everything closed before.

mod api;
mod envd;
mod provider;

pub use api::{E2b, E2bError, E2bResult, NewSandbox, SandboxInfo};
pub use envd::EnvdShell;
pub use provider::E2bProvider;

/// E2B's hosted API; `E2B_API_URL` points elsewhere.
pub const DEFAULT_API_URL: &str = "https://api.e2b.app";
/// The domain sandboxes are reached under; `E2B_DOMAIN` changes it.
pub const DEFAULT_DOMAIN: &str = "e2b.app";
/// envd's port inside every sandbox.
pub const ENVD_PORT: u16 = 49983;
