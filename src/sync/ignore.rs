//! Which paths a synced folder leaves alone: `.contextfsignore` at its root
//! (gitignore syntax, through the `ignore` crate's matcher) plus defaults
//! for editor droppings, OS metadata and this module's own files. Ignored
//! paths are neither pushed nor written by pulls.

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::STATE_DIR;

/// The file users write their rules into, at the folder's root.
pub const IGNORE_FILE: &str = ".contextfsignore";

/// Editor swap and backup files, OS metadata, and the state folder.
const DEFAULTS: &[&str] = &[
    "/.contextfs/",
    // vim: swap files, and the probe file it writes to test a directory.
    "*.swp",
    "*.swo",
    "*.swx",
    "4913",
    // emacs, many editors: backups and lock files.
    "*~",
    ".#*",
    "#*#",
    // macOS and Windows metadata.
    ".DS_Store",
    "._*",
    "Thumbs.db",
    "desktop.ini",
];

/// The temp files this module writes while placing a file.
pub const OWN_TEMP_PREFIX: &str = ".contextfs-tmp-";

pub struct IgnoreRules {
    root: PathBuf,
    user: Gitignore,
    defaults: Gitignore,
}

impl IgnoreRules {
    /// Reads `ROOT/.contextfsignore` if present. A malformed line is
    /// reported in the log and skipped, so one typo does not stop syncing.
    pub fn load(root: &Path) -> Self {
        let mut defaults = GitignoreBuilder::new(root);
        for rule in DEFAULTS {
            if let Err(e) = defaults.add_line(None, rule) {
                tracing::warn!(rule, error = %e, "bad built-in ignore rule");
            }
        }
        let mut user = GitignoreBuilder::new(root);
        let file = root.join(IGNORE_FILE);
        if file.is_file() {
            if let Some(e) = user.add(&file) {
                tracing::warn!(file = %file.display(), error = %e, "some ignore rules could not be read");
            }
        }
        let build = |builder: GitignoreBuilder| {
            builder.build().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignore rules could not be built; ignoring none");
                Gitignore::empty()
            })
        };
        IgnoreRules {
            root: root.to_path_buf(),
            user: build(user),
            defaults: build(defaults),
        }
    }

    /// Whether `rel` (relative, `/`-separated) is ignored. `is_dir` matters
    /// for rules ending in `/`. A path below an ignored directory is ignored.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        if rel == STATE_DIR || rel.starts_with(&format!("{STATE_DIR}/")) {
            return true;
        }
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if name.starts_with(OWN_TEMP_PREFIX) {
            return true;
        }
        let path = self.root.join(rel);
        [&self.defaults, &self.user]
            .iter()
            .any(|rules| rules.matched_path_or_any_parents(&path, is_dir).is_ignore())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_user_rules_apply() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IGNORE_FILE), "build/\n*.log\n!keep.log\n").unwrap();
        let rules = IgnoreRules::load(dir.path());
        assert!(rules.is_ignored(".contextfs/state.json", false));
        assert!(rules.is_ignored("notes/.plan.md.swp", false));
        assert!(rules.is_ignored("notes/plan.md~", false));
        assert!(rules.is_ignored("notes/4913", false));
        assert!(rules.is_ignored(".DS_Store", false));
        assert!(rules.is_ignored("a/.contextfs-tmp-123", false));
        assert!(rules.is_ignored("build", true));
        assert!(rules.is_ignored("build/out/x.o", false));
        assert!(rules.is_ignored("logs/run.log", false));
        assert!(!rules.is_ignored("keep.log", false));
        assert!(!rules.is_ignored("notes/plan.md", false));
        assert!(!rules.is_ignored(IGNORE_FILE, false));
    }
}
