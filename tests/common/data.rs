//! Test data and what tests measure on disk.

use std::path::Path;

/// Deterministic bytes that do not compress or repeat (xorshift): large
/// files whose chunk boundaries fall anywhere, the same on every run.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Bytes of the files under a directory (what `du --apparent-size` counts),
/// each inode once (a file renamed within the tree while the walk runs is not
/// counted twice); 0 for a directory that does not exist.
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &std::path::Path, seen: &mut std::collections::HashMap<u64, u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => walk(&entry.path(), seen),
                Ok(m) => {
                    let size = seen.entry(m.ino()).or_insert(0);
                    *size = (*size).max(m.len());
                }
                Err(_) => {}
            }
        }
    }
    let mut seen = std::collections::HashMap::new();
    walk(dir, &mut seen);
    seen.values().sum()
}
