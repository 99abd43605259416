//! The life of a contextfs sandbox, whatever the provider: [`create`]
//! (token, sandbox, binary, mount or copy mode), [`exec`] (with [`wake`] of a
//! stopped sandbox or a dead mount) and [`destroy`] (flush, delete, revoke).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;

use super::copy_mode;
use super::provider::{error_kind, ErrorKind, ExecuteRequest, Provider, Shell, KEEP_ALIVE_EVERY};
use super::scripts::{guarded_command, install_script, mount_script, tail, umount_script, MOUNT_ALIVE, NOT_MOUNTED};
use super::state::{Mode, ModeChoice, SandboxRecord, StateLock};
use super::{PROJECT_LABEL, SANDBOX_STATE, SKILLS, WORKSPACE};
use crate::api::Access;
use crate::client::{Client, ClientError};

pub struct CreateOptions {
    pub project: String,
    /// The contextfs server as this machine reaches it.
    pub server: String,
    /// An admin token: it makes the project token the sandbox gets.
    pub admin_token: String,
    /// The server as the sandbox reaches it [default: `server`].
    pub sandbox_server: Option<String>,
    /// Labels (Daytona) or metadata (E2B) for the sandbox.
    pub labels: BTreeMap<String, String>,
    /// E2B: the sandbox's timeout in minutes, renewed before each command.
    pub timeout_minutes: Option<u64>,
    /// A statically linked contextfs for x86_64 Linux.
    pub binary: PathBuf,
    pub mode: ModeChoice,
}

/// Explains a contextfs server error for the sandbox commands.
fn server_error(e: ClientError, server: &str) -> anyhow::Error {
    let hint = match &e {
        ClientError::Unreachable { .. } => {
            format!("is `contextfs serve` running at {server}? Set --server / CONTEXTFS_SERVER")
        }
        ClientError::Api { status, .. } if status.as_u16() == 401 => {
            "check --token / CONTEXTFS_TOKEN: creating a sandbox needs the admin token (the server's DATA/admin-token)"
                .to_string()
        }
        ClientError::Api { status, .. } if status.as_u16() == 403 => {
            "creating a sandbox needs the admin token: it makes a project token for the sandbox".to_string()
        }
        ClientError::Api { status, .. } if status.as_u16() == 404 => {
            "create the project first: `contextfs project create NAME`".to_string()
        }
        _ => String::new(),
    };
    if hint.is_empty() {
        anyhow!(e)
    } else {
        anyhow!("{e}\nhint: {hint}")
    }
}

/// Whether an ELF file has no program interpreter (is statically linked).
pub fn is_static_elf(path: &Path) -> anyhow::Result<bool> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = || anyhow!("{} is not an x86_64 Linux executable", path.display());
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes")) as usize;
    if u16_at(18) != 62 {
        return Err(bad());
    }
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if at + 4 > bytes.len() {
            return Err(bad());
        }
        // PT_INTERP: a dynamic loader is needed.
        if u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Creates a sandbox with the project inside. On any failure after the
/// sandbox exists, it is deleted again and the token revoked.
pub async fn create(
    provider: &dyn Provider,
    opts: CreateOptions,
    log: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<SandboxRecord> {
    if !is_static_elf(&opts.binary)? {
        bail!(
            "{} is dynamically linked; the sandbox needs a static contextfs: build one with scripts/static-build \
             and pass its path with --binary (or CONTEXTFS_STATIC_BINARY)",
            opts.binary.display()
        );
    }
    let binary =
        Bytes::from(std::fs::read(&opts.binary).with_context(|| format!("cannot read {}", opts.binary.display()))?);
    let admin = Client::new(&opts.server, Some(opts.admin_token.clone())).map_err(|e| server_error(e, &opts.server))?;
    let created = admin
        .create_token(
            &opts.project,
            Access::ReadWrite,
            Some(format!("{} sandbox", provider.kind().as_str())),
        )
        .await
        .map_err(|e| server_error(e, &opts.server))
        .with_context(|| format!("cannot make a token for project {}", opts.project))?;

    let mut labels = opts.labels.clone();
    labels.insert(PROJECT_LABEL.to_string(), opts.project.clone());
    let sandbox = match provider.create(labels).await {
        Ok(s) => s,
        Err(e) => {
            revoke_quietly(&admin, &created.info.id).await;
            return Err(e).context("cannot create the sandbox");
        }
    };
    log(&format!(
        "created sandbox {}; its token for project {} is {}",
        sandbox.id, created.info.project, created.info.id
    ));

    let setup = async {
        let mut record = SandboxRecord {
            id: sandbox.id.clone(),
            provider: provider.kind(),
            api_url: provider.api_url().to_string(),
            endpoint: sandbox.endpoint.clone(),
            access_token: sandbox.access_token.clone(),
            timeout_minutes: opts.timeout_minutes,
            project: opts.project.clone(),
            server: opts.server.clone(),
            sandbox_server: opts.sandbox_server.clone().unwrap_or_else(|| opts.server.clone()),
            token: created.token.clone(),
            token_id: created.info.id.clone(),
            mode: Mode::Mount,
            binary: String::new(),
            created_at: chrono::Utc::now().to_rfc3339(),
        };
        let shell = provider.shell(&record);
        let toolbox: &dyn Shell = shell.as_ref();
        let upload = format!("/tmp/contextfs-upload-{}", hex::encode(rand::random::<[u8; 4]>()));
        log(&format!(
            "uploading {} ({} MB)",
            opts.binary.display(),
            binary.len() / (1 << 20)
        ));
        toolbox
            .upload(&upload, binary.clone())
            .await
            .context("cannot upload contextfs into the sandbox")?;
        let out = toolbox
            .run(
                "install contextfs in the sandbox",
                install_script(&upload),
                BTreeMap::new(),
            )
            .await?;
        record.binary = out
            .lines()
            .find_map(|l| l.strip_prefix("bin="))
            .ok_or_else(|| anyhow!("the install script printed no path: {}", tail(&out, 5)))?
            .to_string();
        log(&format!("installed contextfs at {} in the sandbox", record.binary));
        let mounted = match opts.mode {
            ModeChoice::Copy => false,
            ModeChoice::Auto | ModeChoice::Mount => match mount_in(toolbox, &record).await {
                Ok(output) => {
                    for line in output.lines().filter(|l| l.starts_with("note:")) {
                        log(line);
                    }
                    log(&format!(
                        "mounted project {} at {WORKSPACE}, skills at {SKILLS}",
                        opts.project
                    ));
                    true
                }
                Err(e) if opts.mode == ModeChoice::Mount || from_provider(&e) => return Err(e),
                Err(e) => {
                    log(&format!(
                        "{} — using sync mode: the tree is copied in before each `exec` and changes are \
                             committed after it",
                        format!("{e:#}").replace('\n', " / ")
                    ));
                    false
                }
            },
        };
        if !mounted {
            record.mode = Mode::Copy;
            let _lock = StateLock::acquire(&record.id)?;
            let report = copy_mode::pull(&record, toolbox, &mut copy_mode::Manifest::default()).await?;
            log(&format!(
                "copied {} files and {} skill files into the sandbox",
                report.uploaded, report.skills
            ));
        }
        record.save()?;
        Ok::<_, anyhow::Error>(record)
    };
    match setup.await {
        Ok(record) => Ok(record),
        Err(e) => {
            log(&format!("setting up sandbox {} failed; deleting it", sandbox.id));
            if let Err(de) = provider.delete(&sandbox.id).await {
                log(&format!("could not delete sandbox {}: {de}", sandbox.id));
            }
            revoke_quietly(&admin, &created.info.id).await;
            SandboxRecord::forget(&sandbox.id);
            Err(e)
        }
    }
}

async fn revoke_quietly(admin: &Client, token_id: &str) {
    if let Err(e) = admin.revoke_token(token_id).await {
        tracing::warn!("could not revoke token {token_id}: {e}");
    }
}

/// Mounts the workspace in a running sandbox (again).
async fn mount_in(toolbox: &dyn Shell, record: &SandboxRecord) -> anyhow::Result<String> {
    let envs = BTreeMap::from([("CONTEXTFS_TOKEN".to_string(), record.token.clone())]);
    let response = toolbox
        .execute(&ExecuteRequest {
            command: mount_script(
                &record.binary,
                &record.project,
                &record.sandbox_server,
                &record.agent_id(),
            ),
            cwd: None,
            envs,
            timeout: Some(300),
        })
        .await
        .context("cannot run the mount in the sandbox")?;
    if response.exit_code != 0 {
        bail!("the mount failed in the sandbox: {}", tail(&response.result, 20));
    }
    Ok(response.result)
}

/// Gets the sandbox ready for a command ([`Provider::wake`]: Daytona starts
/// a stopped or archived one, E2B extends its timeout) and, when it had
/// stopped, mounts the workspace again in mount mode (the new mount replays
/// whatever the old one left in its journal). `Ok(false)` when it was running.
pub async fn wake(
    provider: &dyn Provider,
    record: &SandboxRecord,
    log: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<bool> {
    let woke = provider.wake(record, log).await.map_err(|e| {
        if error_kind(&e) == Some(ErrorKind::NotFound) {
            anyhow!(
                "sandbox {id} no longer exists at {name} (deleted, timed out or auto-deleted); the command was \
                 not run. Run `contextfs {kind} destroy {id}` to forget it and revoke its token",
                id = record.id,
                name = provider.name(),
                kind = provider.kind().as_str()
            )
        } else {
            e
        }
    })?;
    if woke && record.mode == Mode::Mount {
        mount_in(provider.shell(record).as_ref(), record).await?;
        log(&format!("mounted project {} at {WORKSPACE} again", record.project));
    }
    Ok(woke)
}

/// Runs `work` (a command in the sandbox) while calling the provider's
/// keep-alive every [`KEEP_ALIVE_EVERY`], so a command that outlasts the
/// sandbox's timeout is not killed with it. A failed keep-alive is only
/// logged: the command's own outcome says whether the sandbox went.
async fn kept_alive<T>(
    provider: &dyn Provider,
    record: &SandboxRecord,
    log: &(dyn Fn(&str) + Sync),
    work: impl std::future::Future<Output = T>,
) -> T {
    let keep_alive = async {
        loop {
            tokio::time::sleep(KEEP_ALIVE_EVERY).await;
            if let Err(e) = provider.keep_alive(record).await {
                log(&format!("cannot keep sandbox {} alive: {e:#}", record.id));
            }
        }
    };
    tokio::select! {
        out = work => out,
        never = keep_alive => never,
    }
}

/// Whether an error came from the provider (not from the contextfs server
/// or this machine), other than a refused key: then the sandbox may just be
/// stopped.
fn from_provider(e: &anyhow::Error) -> bool {
    error_kind(e).is_some_and(|k| k != ErrorKind::Unauthorized)
}

pub struct ExecOptions {
    /// Working directory [default: /workspace].
    pub cwd: Option<String>,
    pub envs: BTreeMap<String, String>,
    /// Seconds before the sandbox kills the command.
    pub timeout: Option<u64>,
}

pub struct ExecOutcome {
    /// The command's exit code; 124 (as `timeout` exits) when its time ran out.
    pub exit_code: i64,
    pub output: String,
    /// The provider killed the command when its time limit ran out.
    pub timed_out: bool,
    /// Copy mode: what went in and what was committed.
    pub copied: Option<copy_mode::CopyReport>,
}

/// Runs a shell command in the sandbox. In copy mode the tree is brought up
/// to date first and changes are committed afterwards. A sandbox the provider
/// stopped meanwhile is started again (and remounted) first; so is a mount
/// that died.
pub async fn exec(
    provider: &dyn Provider,
    record: &SandboxRecord,
    command: &str,
    opts: ExecOptions,
    log: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<ExecOutcome> {
    // E2B: the sandbox's timeout starts again, so it outlives this command.
    if record.provider == super::ProviderKind::E2b {
        wake(provider, record, log).await?;
    }
    let shell = provider.shell(record);
    let toolbox: &dyn Shell = shell.as_ref();
    let request = |command: String| ExecuteRequest {
        command,
        cwd: Some(opts.cwd.clone().unwrap_or_else(|| WORKSPACE.to_string())),
        envs: opts.envs.clone(),
        timeout: opts.timeout,
    };
    match record.mode {
        Mode::Mount => {
            let run = || async {
                kept_alive(
                    provider,
                    record,
                    log,
                    toolbox.execute(&request(guarded_command(command))),
                )
                .await
                .with_context(|| format!("cannot run the command in sandbox {}", record.id))
            };
            // A refused call never ran the command, so it is safe to retry.
            let mut response = match run().await {
                Err(e) if error_kind(&e) == Some(ErrorKind::TimedOut) => return Ok(ExecOutcome::timed_out(None)),
                Err(e) if from_provider(&e) && wake(provider, record, log).await? => run().await?,
                other => other?,
            };
            if response.exit_code == 125 && response.result.starts_with(NOT_MOUNTED) {
                log(&format!(
                    "the contextfs mount in sandbox {} was not running; mounting it again",
                    record.id
                ));
                mount_in(toolbox, record).await.with_context(|| {
                    format!(
                        "the command was not run; the mount's log is under {SANDBOX_STATE}/contextfs/logs in the sandbox"
                    )
                })?;
                response = run().await?;
                if response.exit_code == 125 && response.result.starts_with(NOT_MOUNTED) {
                    bail!(
                        "the contextfs mount at {WORKSPACE} in sandbox {} does not stay up; the command was not run",
                        record.id
                    );
                }
            }
            Ok(ExecOutcome {
                exit_code: response.exit_code,
                output: response.result,
                timed_out: false,
                copied: None,
            })
        }
        Mode::Copy => {
            let _lock = StateLock::acquire(&record.id)?;
            let mut manifest = copy_mode::Manifest::load(&record.id)?;
            // The pull is the first call: if the provider refuses it, nothing ran yet.
            let pulled = match copy_mode::pull(record, toolbox, &mut manifest).await {
                Err(e) if from_provider(&e) && wake(provider, record, log).await? => {
                    copy_mode::pull(record, toolbox, &mut manifest).await?
                }
                other => other?,
            };
            let marker = format!("__contextfs_scan_{}__", hex::encode(rand::random::<[u8; 8]>()));
            let script = copy_mode::command_then_scan(command, &marker, &record.binary);
            let response = match kept_alive(provider, record, log, toolbox.execute(&request(script))).await {
                // What the command wrote before it was killed is still committed.
                Err(e) if error_kind(&e) == Some(ErrorKind::TimedOut) => {
                    let mut report = copy_mode::push(record, toolbox, &mut manifest, None).await?;
                    report.pulled = pulled;
                    return Ok(ExecOutcome::timed_out(Some(report)));
                }
                other => other.with_context(|| format!("cannot run the command in sandbox {}", record.id))?,
            };
            let (output, scan) = match response.result.rfind(&marker) {
                Some(at) => (
                    response.result[..at].to_string(),
                    copy_mode::parse_scan(&response.result[at + marker.len()..]).ok(),
                ),
                None => (response.result.clone(), None),
            };
            let mut report = copy_mode::push(record, toolbox, &mut manifest, scan).await?;
            report.pulled = pulled;
            Ok(ExecOutcome {
                exit_code: response.exit_code,
                output,
                timed_out: false,
                copied: Some(report),
            })
        }
    }
}

impl ExecOutcome {
    fn timed_out(copied: Option<copy_mode::CopyReport>) -> ExecOutcome {
        ExecOutcome {
            exit_code: 124,
            output: String::new(),
            timed_out: true,
            copied,
        }
    }
}

pub struct DestroyOutcome {
    /// The mount's umount report, or the outcomes of copy mode's last round.
    pub flushed: Vec<String>,
    pub token_revoked: Option<Result<String, String>>,
}

/// Flushes (umount in the sandbox, or a last round of copy mode) and deletes the sandbox;
/// then revokes its project token when `admin` may. Refuses to delete when
/// the flush left changes behind, unless `force`.
pub async fn destroy(
    provider: &dyn Provider,
    id: &str,
    record: Option<&SandboxRecord>,
    admin: Option<&Client>,
    force: bool,
    log: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<DestroyOutcome> {
    let mut flushed = Vec::new();
    // Deleted already (auto-delete, a timeout, or elsewhere): nothing to flush.
    let gone = match provider.exists(id).await {
        Ok(exists) => !exists,
        Err(e) if error_kind(&e) == Some(ErrorKind::Unauthorized) => return Err(e),
        Err(_) => false,
    };
    let flush: anyhow::Result<()> = async {
        if gone {
            log(&format!(
                "sandbox {id} no longer exists at {}; whatever it had not committed went with it",
                provider.name()
            ));
            return Ok(());
        }
        let Some(r) = record else {
            // Not created here: nothing of ours to flush.
            return Ok(());
        };
        // A stopped sandbox still holds what its mount had not committed.
        wake(provider, r, log).await?;
        let shell = provider.shell(r);
        let toolbox: &dyn Shell = shell.as_ref();
        match r.mode {
            Mode::Copy => {
                let _lock = StateLock::acquire(id)?;
                let mut manifest = copy_mode::Manifest::load(id)?;
                let report = copy_mode::push(r, toolbox, &mut manifest, None).await?;
                flushed.extend(report.lines());
                if report.failed > 0 {
                    bail!("{} changes could not be committed", report.failed);
                }
                Ok(())
            }
            Mode::Mount => {
                // A dead mount's journal is committed by mounting again.
                let alive = toolbox
                    .execute(&ExecuteRequest {
                        command: MOUNT_ALIVE.to_string(),
                        cwd: None,
                        envs: BTreeMap::new(),
                        timeout: Some(60),
                    })
                    .await
                    .context("cannot reach the sandbox")?;
                if alive.exit_code != 0 {
                    log("the mount in the sandbox was not running; mounting it again to commit its journal");
                    mount_in(toolbox, r).await?;
                }
                let response = toolbox
                    .execute(&ExecuteRequest {
                        command: umount_script(&r.binary),
                        cwd: None,
                        envs: BTreeMap::new(),
                        timeout: Some(600),
                    })
                    .await
                    .context("cannot flush the mount in the sandbox")?;
                flushed.extend(response.result.lines().map(str::to_string));
                if response.exit_code != 0 {
                    bail!(
                        "`contextfs umount {WORKSPACE}` in the sandbox failed (exit code {}): some changes are \
                         still only in the sandbox's journal",
                        response.exit_code
                    );
                }
                Ok(())
            }
        }
    }
    .await;
    match flush {
        Ok(()) => {}
        Err(e) if force => log(&format!("flushing failed ({e:#}); deleting anyway (--force)")),
        Err(e) => {
            return Err(e.context(format!(
                "sandbox {id} was NOT deleted; fix the cause and retry, or pass --force to delete it and lose \
                 what was not committed"
            )))
        }
    }
    if !gone {
        match provider.delete(id).await {
            Ok(true) => {}
            Ok(false) => log(&format!("sandbox {id} was already gone")),
            Err(e) => return Err(e).with_context(|| format!("cannot delete sandbox {id}")),
        }
    }
    let token_revoked = match (record, admin) {
        (Some(r), Some(admin)) => Some(match admin.revoke_token(&r.token_id).await {
            Ok(()) => Ok(r.token_id.clone()),
            Err(e) => Err(format!(
                "could not revoke the sandbox's token {}: {e}; revoke it with `contextfs token revoke {}`",
                r.token_id, r.token_id
            )),
        }),
        (Some(r), None) => Some(Err(format!(
            "the sandbox's token {} is still valid: revoke it with `contextfs token revoke {}` (admin token)",
            r.token_id, r.token_id
        ))),
        (None, _) => None,
    };
    SandboxRecord::forget(id);
    Ok(DestroyOutcome { flushed, token_revoked })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_test_binary_is_recognised_as_elf() {
        let exe = std::env::current_exe().unwrap();
        // Test binaries are dynamically linked on gnu targets unless built with crt-static.
        assert!(is_static_elf(&exe).is_ok());
        assert!(is_static_elf(Path::new("/etc/hostname")).is_err() || !Path::new("/etc/hostname").exists());
    }
}
