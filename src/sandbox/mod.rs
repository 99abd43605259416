//! Sandboxes with a contextfs workspace inside.
//!
//! - [`docker`]: `contextfs run`, a container with the project at
//!   `/workspace` and the skills at `/skills`, served by a FUSE mount on the
//!   host;
//! - [`plugin`]: `contextfs docker-plugin`, Docker's volume plugin protocol,
//!   so `docker volume create -d contextfs -o project=p ws` works;
//! - [`remote`]: cloud sandboxes with the project inside, the same life for
//!   every provider behind one small trait: [`daytona`] (Daytona) and
//!   [`e2b`] (E2B).
//!
//! What the Docker pieces share: [`host_mount`] manages the host mounts
//! they serve to containers, and the leases that let several containers
//! share one mount ([`Lease`]); this file keeps the checks whose errors name
//! the fix ([`check_fuse`]) and [`slug`].

pub mod daytona;
pub mod docker;
pub mod e2b;
pub mod host_mount;
pub mod plugin;
pub mod remote;

use std::path::Path;

use anyhow::bail;

pub use host_mount::{
    collect_idle_mounts, ensure_mount, flush, is_shared_mount, make_shared_dir, mount_status, unmount, Layout, Lease,
    MountSpec, WS_DIR,
};

/// Fails with what to do when this host cannot serve FUSE mounts.
pub fn check_fuse() -> anyhow::Result<()> {
    check_fuse_device(Path::new("/dev/fuse"))
}

fn check_fuse_device(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let hint = "contextfs serves the workspace to containers through a FUSE mount on this host. \
Load the module with `sudo modprobe fuse` (package fuse3); if this host is itself a container, \
start it with `--device /dev/fuse --cap-add SYS_ADMIN`";
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => bail!("{} is missing ({e}).\nhint: {hint}", path.display()),
    };
    // The FUSE device is the misc character device 10:229.
    let rdev = meta.rdev();
    if !meta.file_type().is_char_device() || libc::major(rdev) != 10 || libc::minor(rdev) != 229 {
        bail!("{} is not the FUSE device (char 10:229).\nhint: {hint}", path.display());
    }
    Ok(())
}

/// `text` reduced to `[A-Za-z0-9_.-]`, at most `max` bytes, never empty.
pub fn slug(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, 'x');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_safe_names() {
        assert_eq!(slug("agent-1", 10), "agent-1");
        assert_eq!(slug("a/b c", 10), "a_b_c");
        assert_eq!(slug("", 10), "x");
        assert_eq!(slug("..", 10), "x..");
        assert_eq!(slug("abcdefghijkl", 4), "abcd");
    }

    #[test]
    fn a_missing_or_wrong_fuse_device_names_the_fix() {
        let e = check_fuse_device(Path::new("/nonexistent/fuse"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("modprobe fuse") && e.contains("--device /dev/fuse"), "{e}");
        let file = tempfile::NamedTempFile::new().unwrap();
        let e = check_fuse_device(file.path()).unwrap_err().to_string();
        assert!(e.contains("not the FUSE device"), "{e}");
    }
}
