//! Where a mount keeps its state and socket, and what is mounted where.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

/// `$XDG_STATE_HOME/contextfs`, else `~/.local/state/contextfs`.
pub fn state_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("contextfs");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/contextfs")
}

fn short_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
}

/// The journal of a (server, project, mountpoint) triple, found again by the
/// next mount so it can replay what a crashed one left.
pub fn mount_state_dir(server: &str, project: &str, mountpoint: &Path) -> PathBuf {
    let key = format!("{}|{project}|{}", server.trim_end_matches('/'), mountpoint.display());
    state_root()
        .join("mounts")
        .join(format!("{project}-{}", short_hash(&key)))
}

/// The control socket of whatever is mounted at `mountpoint`.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    state_root()
        .join("sockets")
        .join(format!("{}.sock", short_hash(&mountpoint.display().to_string())))
}

/// The canonical form of a mount point, also when the mount behind it is dead.
pub fn canonical_mountpoint(path: &Path) -> anyhow::Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    let parent = absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let name = absolute.file_name().map(|n| n.to_os_string());
    let parent = parent
        .canonicalize()
        .with_context(|| format!("{} does not exist", parent.display()))?;
    Ok(match name {
        Some(n) => parent.join(n),
        None => parent,
    })
}

/// True when `path` is listed as a mount point in /proc/self/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let wanted = path.display().to_string().replace(' ', "\\040");
    text.lines()
        .any(|l| l.split_whitespace().nth(1) == Some(wanted.as_str()))
}

/// Lazily detaches a mount whose process is gone ("transport endpoint is not
/// connected"), so a new mount can take its place.
pub fn detach_stale(path: &Path) -> anyhow::Result<()> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| anyhow!("{e}"))?;
            // SAFETY: a valid NUL-terminated path; MNT_DETACH only detaches.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if rc == 0 {
                Ok(())
            } else {
                bail!(
                    "cannot detach the stale mount at {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                )
            }
        }
    }
}
