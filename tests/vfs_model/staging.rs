//! Staging a clean file for writing races with other writers: the copy is
//! made outside the core's lock, so the content may move on before it is
//! installed. A copy of bytes that are no longer the file's must never be
//! installed (it put the old bytes back and lost the other writer's change).

use crate::harness::*;

const APPEND: OpenMode = OpenMode {
    read: false,
    write: true,
    truncate: false,
    append: true,
};

#[test]
fn a_copy_staged_from_bytes_that_moved_on_is_never_installed() {
    let env = Env::new();
    let source = Arc::new(GateSource::default());
    let listing = tree_listing(1, vec![file_entry(&source.inner, "log.md", 7, 1, b"old\n")]);
    let vfs = Arc::new(env.vfs_on(source.clone()));
    vfs.load(&listing, None).unwrap();
    let ino = ino_of(&vfs, "log.md").unwrap();

    // Writer 1 opens to append: it stages a copy of the clean file, and is
    // held while it fetches the bytes to copy.
    let slow = {
        let vfs = vfs.clone();
        std::thread::spawn(move || {
            let fh = vfs.open(ino, APPEND).unwrap();
            vfs.write(fh, 0, b"from the slow writer\n").unwrap();
            vfs.flush(fh).unwrap();
            vfs.release(fh).unwrap();
        })
    };
    source.wait_for_fetch();
    // Meanwhile writer 2 truncates (no copy needed), writes, closes: its
    // change is journaled and the staging file parked.
    let fh = vfs.open(ino, TRUNC).unwrap();
    vfs.write(fh, 0, b"new\n").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(read_path(&vfs, "log.md"), b"new\n");
    // Writer 1's copy of "old" arrives after the file moved on.
    source.release();
    slow.join().unwrap();
    assert_eq!(
        String::from_utf8(read_path(&vfs, "log.md")).unwrap(),
        "new\nfrom the slow writer\n",
        "writer 2's change is kept and writer 1 appends to it"
    );
    assert_eq!(describe(&plan(&vfs)), ["commit log.md"]);
}
