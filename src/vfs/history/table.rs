//! The inode table of the history view: every name the kernel or a listing
//! was given, in the reserved inode range, with the kernel's references.
//!
//! An inode number is never reused for other content: numbers only grow, and
//! a version file's key holds its node and version, so the kernel may keep a
//! version file's pages for as long as it likes.

use std::collections::HashMap;
use std::time::SystemTime;

use super::{Ino, HISTORY_ROOT_INO, META_INO};
use crate::model::BlobHash;

/// The first inode number handed to a path or version (below it: the fixed
/// `.contextfs` and `history` directories).
const FIRST_DYNAMIC: Ino = super::HISTORY_INO_BIT | 16;

/// Entries the kernel holds no reference to are dropped once the table holds
/// this many (a listing hands out numbers the kernel never looks up).
const SWEEP_AT: usize = 50_000;

/// One version's content, as the server listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionFile {
    pub node: i64,
    pub version: i64,
    pub hash: BlobHash,
    pub size: u64,
    pub mode: u32,
    /// The commit time.
    pub committed: SystemTime,
}

/// What an inode of the history view stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// `.contextfs`
    Meta,
    /// `.contextfs/history`
    Root,
    /// A directory of the project ("" is never one: that is `Root`).
    Dir(String),
    /// A file of the project: the directory of its versions.
    Versions(String),
    /// One version of the file at `path`.
    Version { path: String, node: i64, version: i64 },
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub key: Key,
    pub parent: Ino,
    /// For `Version`: its content.
    pub file: Option<VersionFile>,
    /// For `Versions`: the commit time of the newest version, once listed.
    pub newest: Option<SystemTime>,
    /// References the kernel holds (lookups minus forgets).
    refs: u64,
}

#[derive(Debug)]
pub struct Table {
    entries: HashMap<Ino, Entry>,
    by_key: HashMap<Key, Ino>,
    next: Ino,
}

impl Default for Table {
    fn default() -> Self {
        let mut table = Table {
            entries: HashMap::new(),
            by_key: HashMap::new(),
            next: FIRST_DYNAMIC,
        };
        for (ino, key, parent) in [
            (META_INO, Key::Meta, crate::vfs::ROOT_INO),
            (HISTORY_ROOT_INO, Key::Root, META_INO),
        ] {
            table.by_key.insert(key.clone(), ino);
            table.entries.insert(
                ino,
                Entry {
                    key,
                    parent,
                    file: None,
                    newest: None,
                    refs: 0,
                },
            );
        }
        table
    }
}

impl Table {
    pub fn get(&self, ino: Ino) -> Option<&Entry> {
        self.entries.get(&ino)
    }

    /// The inode of `key` below `parent`, made if new. A version's content
    /// is set when it is made (a key names one immutable version).
    pub fn intern(&mut self, key: Key, parent: Ino, file: Option<VersionFile>) -> Ino {
        if let Some(ino) = self.by_key.get(&key) {
            return *ino;
        }
        if self.entries.len() >= SWEEP_AT {
            self.sweep();
        }
        let ino = self.next;
        self.next += 1;
        self.by_key.insert(key.clone(), ino);
        self.entries.insert(
            ino,
            Entry {
                key,
                parent,
                file,
                newest: None,
                refs: 0,
            },
        );
        ino
    }

    /// Records when the newest version of a `Versions` directory was committed.
    pub fn set_newest(&mut self, ino: Ino, newest: Option<SystemTime>) {
        if let Some(e) = self.entries.get_mut(&ino) {
            e.newest = newest.or(e.newest);
        }
    }

    pub fn kernel_ref(&mut self, ino: Ino) {
        if let Some(e) = self.entries.get_mut(&ino) {
            e.refs += 1;
        }
    }

    /// The kernel forgot `n` references; an entry nobody holds goes (its
    /// key gets a new number if it is looked up again).
    pub fn forget(&mut self, ino: Ino, n: u64) {
        let Some(e) = self.entries.get_mut(&ino) else { return };
        e.refs = e.refs.saturating_sub(n);
        if e.refs == 0 && !matches!(e.key, Key::Meta | Key::Root) {
            self.remove(ino);
        }
    }

    fn remove(&mut self, ino: Ino) {
        if let Some(e) = self.entries.remove(&ino) {
            if self.by_key.get(&e.key) == Some(&ino) {
                self.by_key.remove(&e.key);
            }
        }
    }

    /// Drops every entry the kernel holds no reference to.
    fn sweep(&mut self) {
        let unheld: Vec<Ino> = self
            .entries
            .iter()
            .filter(|(_, e)| e.refs == 0 && !matches!(e.key, Key::Meta | Key::Root))
            .map(|(ino, _)| *ino)
            .collect();
        for ino in unheld {
            self.remove(ino);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_keeps_its_number_until_the_kernel_forgets_it() {
        let mut t = Table::default();
        let a = t.intern(Key::Versions("a.md".into()), HISTORY_ROOT_INO, None);
        assert_eq!(t.intern(Key::Versions("a.md".into()), HISTORY_ROOT_INO, None), a);
        assert!(super::super::is_history_ino(a));
        t.kernel_ref(a);
        t.kernel_ref(a);
        t.forget(a, 1);
        assert!(t.get(a).is_some(), "one reference is left");
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        let again = t.intern(Key::Versions("a.md".into()), HISTORY_ROOT_INO, None);
        assert!(again > a, "numbers are never reused");
        // The fixed directories stay.
        t.forget(META_INO, 5);
        t.forget(HISTORY_ROOT_INO, 5);
        assert_eq!(t.get(META_INO).map(|e| &e.key), Some(&Key::Meta));
        assert_eq!(t.get(HISTORY_ROOT_INO).map(|e| &e.key), Some(&Key::Root));
    }

    #[test]
    fn a_full_table_drops_what_the_kernel_does_not_hold() {
        let mut t = Table::default();
        let held = t.intern(Key::Dir("held".into()), HISTORY_ROOT_INO, None);
        t.kernel_ref(held);
        for i in 0..SWEEP_AT + 10 {
            t.intern(Key::Dir(format!("d{i}")), HISTORY_ROOT_INO, None);
        }
        assert!(t.len() < SWEEP_AT, "{} entries", t.len());
        assert_eq!(t.get(held).map(|e| &e.key), Some(&Key::Dir("held".into())));
        assert!(t.get(META_INO).is_some() && t.get(HISTORY_ROOT_INO).is_some());
    }
}
