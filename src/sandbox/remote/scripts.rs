//! The shell snippets contextfs runs inside a sandbox, and the helpers that
//! build and read them.

use super::{SANDBOX_CACHE, SANDBOX_STATE, SKILLS, WORKSPACE};

/// The last `lines` lines of a command's output.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Sets `$S` to nothing as root, to `sudo -n` (keeping the variables the
/// mount needs) otherwise, and exports where the mount keeps its state.
fn privileged_prelude() -> String {
    format!(
        "export XDG_STATE_HOME={SANDBOX_STATE} CONTEXTFS_CACHE_DIR={SANDBOX_CACHE}\n\
         if [ \"$(id -u)\" = 0 ]; then S=; \
         elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
         S='sudo -n --preserve-env=CONTEXTFS_TOKEN,XDG_STATE_HOME,CONTEXTFS_CACHE_DIR'; \
         else S=none; fi\n"
    )
}

/// Installs the uploaded binary and checks it runs; prints `bin=PATH`.
pub(super) fn install_script(upload: &str) -> String {
    format!(
        "set -e\n{prelude}\
         if [ \"$S\" = none ]; then bin=\"$HOME/.local/bin/contextfs\"; mkdir -p \"$HOME/.local/bin\"; S=; \
         else bin=/usr/local/bin/contextfs; $S mkdir -p /usr/local/bin; fi\n\
         $S cp {upload} \"$bin\"\n$S chmod 755 \"$bin\"\nrm -f {upload}\n\
         if ! out=$(\"$bin\" --version 2>&1); then echo \"the uploaded contextfs does not run here: $out\"; exit 3; fi\n\
         $S mkdir -p {WORKSPACE} {SKILLS}\n\
         if [ -n \"$S\" ]; then $S chown \"$(id -u):$(id -g)\" {WORKSPACE} {SKILLS} || true; fi\n\
         echo \"bin=$bin\"\n",
        prelude = privileged_prelude(),
        upload = shell_quote(upload),
    )
}

/// Mounts the project at /workspace (root or sudo; the token comes in the
/// request's environment, never on a command line) and points /skills at
/// the mount's read-only skills folder.
pub(super) fn mount_script(bin: &str, project: &str, server: &str, agent_id: &str) -> String {
    format!(
        "{prelude}\
         if [ \"$S\" = none ]; then echo 'mounting needs root or password-less sudo in the sandbox'; exit 10; fi\n\
         if [ ! -e /dev/fuse ]; then echo 'this sandbox has no /dev/fuse'; exit 10; fi\n\
         $S mkdir -p {SANDBOX_STATE} {SANDBOX_CACHE} || exit 11\n\
         grep -qs ' {WORKSPACE} ' /proc/mounts || $S mkdir -p {WORKSPACE} || exit 11\n\
         $S {bin} mount {WORKSPACE} --project {project} --server {server} --agent-id {agent} --daemon --allow-other 2>&1 || exit 11\n\
         if [ -d {SKILLS} ] && [ ! -L {SKILLS} ]; then $S rmdir {SKILLS} 2>/dev/null || \
         echo 'note: {SKILLS} is a non-empty folder of the image; the published skills are at {WORKSPACE}/skills'; fi\n\
         if [ ! -e {SKILLS} ] || [ -L {SKILLS} ]; then $S ln -sfn {WORKSPACE}/skills {SKILLS}; fi\n",
        prelude = privileged_prelude(),
        bin = shell_quote(bin),
        project = shell_quote(project),
        server = shell_quote(server),
        agent = shell_quote(agent_id),
    )
}

/// Commits what is pending and unmounts (prints the per-file report).
pub(super) fn umount_script(bin: &str) -> String {
    format!(
        "{prelude}\
         if ! grep -qs ' {WORKSPACE} fuse' /proc/mounts; then echo 'nothing mounted at {WORKSPACE}'; exit 0; fi\n\
         [ \"$S\" = none ] && S=\n\
         $S {bin} umount {WORKSPACE} 2>&1\n",
        prelude = privileged_prelude(),
        bin = shell_quote(bin),
    )
}

/// True in the sandbox while the mount at /workspace answers (a killed
/// mount process leaves its entry in /proc/mounts, but statfs fails).
pub(super) const MOUNT_ALIVE: &str =
    "{ grep -qs ' /workspace fuse' /proc/mounts && stat -f /workspace >/dev/null 2>&1; }";

/// Printed instead of running the command when the mount is gone.
pub(super) const NOT_MOUNTED: &str = "__contextfs_workspace_not_mounted__";

/// The user's command for a mount-mode sandbox: refuse to run when the mount
/// died (writes would land in the bare folder underneath and be lost), and
/// keep the command off the shell's standard input (the toolbox feeds the
/// script through it).
pub(super) fn guarded_command(command: &str) -> String {
    format!(
        "if ! {MOUNT_ALIVE}; then printf '%s' '{NOT_MOUNTED}'; exit 125; fi\n\
         (\n{command}\n) </dev/null\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("plain/path.md"), "plain/path.md");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
