//! Cloud sandboxes (Daytona, E2B) with a contextfs workspace inside: what
//! they share, behind one small [`Provider`] trait.
//!
//! A provider creates, wakes and deletes sandboxes and gives a [`Shell`] into
//! one (run a script, write and read files). On top of that, [`create`],
//! [`exec`] and [`destroy`] run the life of a contextfs sandbox, the same for
//! every provider: a project token only the sandbox sees, a static `contextfs`
//! binary uploaded into it, the project mounted at `/workspace` with the
//! skills at `/skills` — or, where FUSE is not available, [`copy_mode`]
//! (`--mode sync`), which copies the tree in before each command and commits
//! what changed afterwards — per-file outcomes, and the token revoked when the
//! sandbox goes.
//!
//! The parts: `provider` (the traits), `state` (what this machine remembers
//! about each sandbox), `scripts` (the shell snippets run inside a sandbox),
//! `lifecycle` (create, exec, destroy) and [`copy_mode`].

pub mod copy_mode;
pub mod http;
mod lifecycle;
mod provider;
mod scan;
mod scripts;
mod state;

pub use lifecycle::{
    create, destroy, exec, is_static_elf, wake, CreateOptions, DestroyOutcome, ExecOptions, ExecOutcome,
};
pub use provider::{
    error_kind, Created, ErrorKind, ExecuteRequest, ExecuteResponse, Log, Provider, ProviderKind, Shell,
    KEEP_ALIVE_EVERY,
};
pub use scripts::{shell_quote, tail};
pub use state::{state_dir, Mode, ModeChoice, SandboxRecord, StateLock};

/// Where the project appears inside the sandbox.
pub const WORKSPACE: &str = "/workspace";
/// Where the published skills appear inside the sandbox (read-only).
pub const SKILLS: &str = "/skills";
/// Where the mount inside the sandbox keeps its journal, logs and socket.
pub const SANDBOX_STATE: &str = "/var/lib/contextfs";
/// The mount's blob cache inside the sandbox.
pub const SANDBOX_CACHE: &str = "/var/cache/contextfs";
/// The label (Daytona) or metadata key (E2B) every contextfs sandbox carries; its value is the project.
pub const PROJECT_LABEL: &str = "contextfs.project";
