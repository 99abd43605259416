//! `--skills-dir`: the published skills as a second, read-only FUSE
//! session beside the project's, on the same cache, kept current.

use super::*;

/// Checks `--skills-dir DIR` against the (canonical) project mount point
/// before anything is mounted, and returns DIR's canonical path. DIR must not
/// be the mount point, inside it, or around it, and must be missing or an
/// empty directory; a live mount at DIR is refused, a stale one (its process
/// gone) is left for [`prepare_skills_dir`] to detach. Changes nothing.
pub fn check_skills_dir(mountpoint: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let given = canonical_mountpoint(dir).map_err(|e| {
        // Below a dead mount point nothing resolves: say what is wrong.
        let absolute = std::env::current_dir().map(|cwd| cwd.join(dir)).unwrap_or_default();
        if absolute.starts_with(mountpoint) {
            anyhow!(
                "--skills-dir {} is inside the mount point {}; pick a directory outside it",
                absolute.display(),
                mountpoint.display()
            )
        } else {
            e
        }
    })?;
    // A symlink to a directory would be mounted on its target: use that.
    let dir = match std::fs::symlink_metadata(&given) {
        Ok(m) if m.file_type().is_symlink() => given
            .canonicalize()
            .with_context(|| format!("--skills-dir {} is a dangling symlink", given.display()))?,
        _ => given,
    };
    if dir == mountpoint {
        bail!(
            "--skills-dir {} is the mount point itself; the skills need a directory of their own",
            dir.display()
        );
    }
    if dir.starts_with(mountpoint) {
        bail!(
            "--skills-dir {} is inside the mount point {}; pick a directory outside it (without --skills-dir the skills appear under {}/skills)",
            dir.display(),
            mountpoint.display(),
            mountpoint.display()
        );
    }
    if mountpoint.starts_with(&dir) {
        bail!(
            "the mount point {} is inside --skills-dir {}: the skills mount would hide it",
            mountpoint.display(),
            dir.display()
        );
    }
    if is_mounted(&dir) {
        if std::fs::metadata(&dir).is_ok() {
            bail!(
                "--skills-dir {} is already a mount point in use; unmount it first (fusermount3 -u {})",
                dir.display(),
                dir.display()
            );
        }
        // A dead mount (ENOTCONN): prepare_skills_dir detaches it.
        return Ok(dir);
    }
    match std::fs::metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read --skills-dir {}", dir.display())),
        Ok(m) if !m.is_dir() => bail!("--skills-dir {} exists and is not a directory", dir.display()),
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(&dir).with_context(|| format!("cannot read --skills-dir {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "--skills-dir {} is not empty: the skills mount would hide what is in it; pick an empty or new directory",
                    dir.display()
                );
            }
        }
    }
    Ok(dir)
}

/// [`check_skills_dir`], then detaches a stale mount left at DIR and creates
/// DIR if it is missing. Returns DIR's canonical path.
pub(super) fn prepare_skills_dir(mountpoint: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = check_skills_dir(mountpoint, dir)?;
    if is_mounted(&dir) {
        tracing::warn!(skills_dir = %dir.display(), "a stale mount is in the way of --skills-dir; detaching it");
        detach_stale(&dir)?;
        // What the dead mount hid must be empty too.
        check_skills_dir(mountpoint, &dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create --skills-dir {}", dir.display()))?;
    Ok(dir)
}

/// Mounts the published skills, read-only, at `dir` (`--skills-dir`): a Vfs
/// of its own (state in `STATE/skills`) on the mount's cache and blob source.
pub(super) fn mount_skills(
    dir: &Path,
    skills: &crate::api::SkillsListing,
    state_dir: &Path,
    cache: Arc<BlobCache>,
    source: Arc<ServerBlobs>,
    args: &MountArgs,
) -> anyhow::Result<(fuser::BackgroundSession, Arc<Vfs>)> {
    let vfs = Arc::new(
        Vfs::new(
            VfsConfig {
                state_dir: state_dir.join("skills"),
                read_only: true,
                agent_id: None,
                // Nothing is ever written through it.
                durability: crate::vfs::Durability::Strict,
            },
            cache,
            source,
        )
        .map_err(|e| anyhow!("skills mount: {e}"))?,
    );
    vfs.set_passthrough_policy(args.passthrough);
    let count = vfs.load_skills_root(skills).map_err(|e| anyhow!("skills mount: {e}"))?;
    let config = session_config("contextfs-skills".into(), true, 2, args);
    let session = fuser::Session::new(crate::fuse::ContextFs::new(vfs.clone()), dir, &config).with_context(|| {
        format!(
            "cannot mount the skills on {} (for --allow-other as non-root, /etc/fuse.conf needs user_allow_other)",
            dir.display()
        )
    })?;
    let background = session.spawn().context("cannot start the FUSE session of the skills")?;
    tracing::info!(skills_dir = %dir.display(), skills = count, "skills mounted");
    Ok((background, vfs))
}

/// Published skills are the same for every project, so the project's change
/// feed does not carry them: poll, and show a new publication when it comes.
pub(super) async fn follow_skills(
    client: Client,
    vfs: Arc<Vfs>,
    mut seen: Option<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SKILLS_POLL) => {}
            _ = stop.changed() => return,
        }
        let listing = match client.skills().await {
            Ok(listing) if listing.published_at != seen => listing,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "cannot check the published skills");
                continue;
            }
        };
        let published = listing.published_at.clone();
        let skills = listing.skills.len();
        let refresh_vfs = vfs.clone();
        match tokio::task::spawn_blocking(move || refresh_vfs.refresh_skills(&listing)).await {
            Ok(Ok(shown)) => {
                tracing::info!(skills, shown, "the skills were published again");
                seen = published;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot show the newly published skills"),
            Err(e) => tracing::warn!(error = %e, "the skills refresh task failed"),
        }
    }
}
