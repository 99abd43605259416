//! `--daemon`: the same command again, detached, for `mount` and `sync`.

use std::process::{Child, Stdio};

use anyhow::Context;

/// Starts this same command again without `--daemon`, in a session of its
/// own (no terminal, so closing the shell does not stop it), with its
/// output in `log`. The caller waits until the child says it is ready.
pub fn respawn_detached(log: std::fs::File, what: &str) -> anyhow::Result<Child> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--daemon").collect();
    let exe = std::env::current_exe().context("cannot find the contextfs executable")?;
    let mut command = std::process::Command::new(exe);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid only detaches the child from our terminal and process group.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start the background {what}"))
}
