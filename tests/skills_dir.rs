//! `contextfs mount MOUNTPOINT --skills-dir DIR`: the published skills in a
//! second, read-only FUSE mount served by the same process, through real
//! mounts against a real `contextfs serve`.
//!
//! Every test starts its own server, project and temp directories (its own
//! XDG_STATE_HOME / XDG_CACHE_HOME), so the file runs safely with
//! `--test-threads=N`. Without /dev/fuse the mount tests FAIL: a skipped mount
//! test proves nothing.

mod common;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use contextfs::api::{SkillFile, SkillInfo, SkillsListing};
use contextfs::cache::{BlobCache, CacheError, CacheFill};
use contextfs::model::BlobHash;
use contextfs::model::WsPath;
use contextfs::vfs::{BlobSource, OpenMode, Vfs, VfsConfig, ROOT_INO};

const DEADLINE: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_contextfs");

const SKILL_MD: &str = "---\nname: pdf\ndescription: Read and fill PDF forms\n---\n# PDF\nUse the scripts.\n";
const FILL_SH: &str = "#!/bin/sh\necho filled\n";

// ---------------------------------------------------------------------------
// Harness (tests/common/mount.rs, with a skills dir)
// ---------------------------------------------------------------------------

/// The /proc/self/mounts line of `path`: (fstype, options).
fn mount_entry(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let wanted = path.display().to_string().replace(' ', "\\040");
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&wanted.as_str())).then(|| (f[2].to_string(), f[3].to_string()))
    })
}

fn mounted(path: &Path) -> bool {
    mount_entry(path).is_some()
}

/// `fusermount3 -u DIR`, as something other than contextfs would unmount it.
#[track_caller]
fn unmount_from_outside(dir: &Path) {
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(dir)
        .output()
        .expect("fusermount3");
    assert!(out.status.success(), "fusermount3 -u {}: {}", dir.display(), both(&out));
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: still not true after {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Publishes the `pdf` skill (SKILL.md and an executable script) as admin.
fn publish_skills(s: &TestServer) {
    publish_skill_md(s, SKILL_MD);
}

/// Publishes the `pdf` skill with `skill_md` as its SKILL.md.
fn publish_skill_md(s: &TestServer, skill_md: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("pdf/scripts")).expect("mkdir");
    std::fs::write(dir.path().join("pdf/SKILL.md"), skill_md).expect("write SKILL.md");
    std::fs::write(dir.path().join("pdf/scripts/fill.sh"), FILL_SH).expect("write fill.sh");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("pdf/scripts/fill.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod +x fill.sh");
    s.publish_skills(dir.path());
}

/// A temp home (XDG dirs, mount points) for one project on one server.
/// Dropping it unmounts whatever is still mounted and kills a survivor.
struct Setup {
    client: MountClient,
    pids: Mutex<Vec<u32>>,
}

impl Deref for Setup {
    type Target = MountClient;
    fn deref(&self) -> &MountClient {
        &self.client
    }
}

impl Setup {
    async fn new(s: &TestServer, project: &str) -> Setup {
        let token = s.project_with_token(project).await;
        let home = Arc::new(tempfile::tempdir().expect("temp dir"));
        Setup {
            client: MountClient::new(home, "mnt", &s.mount_url(), project, &token),
            pids: Mutex::new(Vec::new()),
        }
    }

    fn mnt(&self) -> PathBuf {
        self.dir.clone()
    }

    fn skills(&self) -> PathBuf {
        self.root().join("skills-ro")
    }

    /// `contextfs mount MNT --skills-dir SKILLS --daemon EXTRA...`; returns the pid.
    fn mount(&self, extra: &[&str]) -> u32 {
        let (mnt, skills) = (self.mnt().display().to_string(), self.skills().display().to_string());
        let mut args = vec!["mount", &mnt, "--skills-dir", &skills, "--daemon"];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "contextfs mount failed: {}\nlog:\n{}",
            both(&out),
            self.log()
        );
        // --daemon returns only once both are mounted.
        assert!(mounted(&self.mnt()), "{mnt} is not mounted after: {}", both(&out));
        assert!(mounted(&self.skills()), "{skills} is not mounted after: {}", both(&out));
        let pid = self.pid_from_status();
        self.pids.lock().expect("pids").push(pid);
        pid
    }

    fn umount(&self) -> Output {
        self.cli(&["umount", &self.mnt().display().to_string()])
    }

    /// `contextfs umount MNT`, which must succeed.
    #[track_caller]
    fn umount_ok(&self) {
        let out = self.umount();
        assert!(out.status.success(), "contextfs umount failed: {}", both(&out));
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let pids = self.pids.lock().map(|p| p.clone()).unwrap_or_default();
        self.client.clean_up(&[self.skills()], &pids);
    }
}

// ---------------------------------------------------------------------------
// The core: a Vfs whose root is the skills (no kernel)
// ---------------------------------------------------------------------------

#[derive(Default)]
struct MapSource(Mutex<std::collections::HashMap<BlobHash, Vec<u8>>>);

impl BlobSource for MapSource {
    fn fetch(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError> {
        let bytes = self.0.lock().expect("blobs").get(hash).cloned();
        match bytes {
            Some(bytes) => fill.write(&bytes),
            None => Err(CacheError::Fetch {
                hash: hash.clone(),
                message: "not on the server".into(),
            }),
        }
    }
}

fn skill_listing(source: &MapSource) -> SkillsListing {
    listing_of(
        source,
        None,
        &[
            ("pdf/SKILL.md", SKILL_MD, 0o644),
            ("pdf/scripts/fill.sh", FILL_SH, 0o755),
        ],
    )
}

/// `open(O_RDONLY)`.
const READ: OpenMode = OpenMode {
    read: true,
    write: false,
    truncate: false,
    append: false,
};

/// The names in the Vfs's root directory, in readdir order.
fn root_names(v: &Vfs) -> Vec<String> {
    v.readdir(ROOT_INO)
        .expect("readdir")
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// A Vfs on `cache` and `source` with its state in `tmp/name`.
fn test_vfs(tmp: &Path, name: &str, read_only: bool, cache: Arc<BlobCache>, source: Arc<MapSource>) -> Vfs {
    Vfs::new(
        VfsConfig {
            state_dir: tmp.join(name),
            read_only,
            agent_id: None,
            durability: contextfs::vfs::Durability::DEFAULT,
        },
        cache,
        source,
    )
    .expect("vfs")
}

#[test]
fn load_skills_root_fills_a_read_only_root() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let cache = Arc::new(BlobCache::open(&tmp.path().join("cache"), 1 << 30).expect("cache"));
    let source = Arc::new(MapSource::default());
    let listing = skill_listing(&source);
    let vfs = |read_only: bool, name: &str| test_vfs(tmp.path(), name, read_only, cache.clone(), source.clone());

    // Only a read-only Vfs takes the skills as its root.
    let writable = vfs(false, "rw");
    assert_eq!(
        writable.load_skills_root(&listing).map_err(|e| e.errno),
        Err(libc::EINVAL)
    );

    let v = vfs(true, "skills");
    assert_eq!(v.load_skills_root(&listing), Ok(1));
    let root = v.getattr(ROOT_INO).expect("root");
    assert_eq!(root.mode, 0o555);
    let names = root_names(&v);
    assert_eq!(names, ["pdf"]);
    let pdf = v.lookup(ROOT_INO, "pdf").expect("pdf");
    let md = v.lookup(pdf.ino, "SKILL.md").expect("SKILL.md");
    assert_eq!((md.mode, md.size), (0o444, SKILL_MD.len() as u64));
    let scripts = v.lookup(pdf.ino, "scripts").expect("scripts");
    assert_eq!(v.lookup(scripts.ino, "fill.sh").expect("fill.sh").mode, 0o555);
    let fh = v.open(md.ino, READ).expect("open");
    assert_eq!(v.read(fh, 0, 4096).expect("read"), SKILL_MD.as_bytes());
    v.release(fh).expect("release");

    // Loaded once; every change is EROFS.
    assert_eq!(v.load_skills_root(&listing).map_err(|e| e.errno), Err(libc::EEXIST));
    assert_eq!(v.mkdir(ROOT_INO, "new", 0o755).map_err(|e| e.errno), Err(libc::EROFS));
    assert_eq!(v.unlink(pdf.ino, "SKILL.md").map_err(|e| e.errno), Err(libc::EROFS));
    assert_eq!(
        v.rename(ROOT_INO, "pdf", ROOT_INO, "doc", false).map_err(|e| e.errno),
        Err(libc::EROFS)
    );
    assert_eq!(
        v.open(
            md.ino,
            OpenMode {
                write: true,
                ..OpenMode::default()
            }
        )
        .map_err(|e| e.errno),
        Err(libc::EROFS)
    );
    assert!(v.queued().is_empty(), "nothing journaled");
}

/// A listing of skill files `(path, bytes, mode)`, their blobs on the source.
fn listing_of(source: &MapSource, published_at: Option<&str>, files: &[(&str, &str, u32)]) -> SkillsListing {
    let mut skills: Vec<SkillInfo> = Vec::new();
    for (path, bytes, mode) in files {
        let hash = BlobHash::of(bytes.as_bytes());
        source
            .0
            .lock()
            .expect("blobs")
            .insert(hash.clone(), bytes.as_bytes().to_vec());
        let name = path.split('/').next().expect("skill folder").to_string();
        let file = SkillFile {
            path: WsPath::parse(path).expect("skill path"),
            hash,
            size: bytes.len() as u64,
            mode: *mode,
        };
        match skills.iter_mut().find(|s| s.name == name) {
            Some(skill) => skill.files.push(file),
            None => skills.push(SkillInfo {
                name,
                description: "test skill".into(),
                files: vec![file],
            }),
        }
    }
    SkillsListing {
        published_at: published_at.map(String::from),
        skills,
    }
}

/// Skills published again replace the shown set; open files keep their bytes.
#[test]
fn refresh_skills_shows_a_new_publication_and_open_files_keep_their_bytes() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let cache = Arc::new(BlobCache::open(&tmp.path().join("cache"), 1 << 30).expect("cache"));
    let source = Arc::new(MapSource::default());
    let v = test_vfs(tmp.path(), "skills", true, cache, source.clone());
    let first = listing_of(
        &source,
        Some("t1"),
        &[
            ("pdf/SKILL.md", "pdf v1", 0o644),
            ("pdf/scripts/fill.sh", "fill", 0o755),
        ],
    );
    v.load_skills_root(&first).expect("load");
    let pdf = v.lookup(ROOT_INO, "pdf").expect("pdf");
    let md = v.lookup(pdf.ino, "SKILL.md").expect("SKILL.md");
    let old = v.open(md.ino, READ).expect("open");

    let second = listing_of(
        &source,
        Some("t2"),
        &[
            ("pdf/SKILL.md", "pdf v2, longer", 0o644),
            ("xlsx/SKILL.md", "xlsx", 0o644),
        ],
    );
    assert_eq!(v.refresh_skills(&second), Ok(true));
    let names = root_names(&v);
    assert_eq!(names, ["pdf", "xlsx"]);
    let pdf = v.lookup(ROOT_INO, "pdf").expect("pdf");
    assert!(
        v.lookup(pdf.ino, "scripts").is_err(),
        "a file no longer published is gone"
    );
    let md = v.lookup(pdf.ino, "SKILL.md").expect("SKILL.md");
    assert_eq!(md.size, 14);
    let fresh = v.open(md.ino, READ).expect("open");
    assert_eq!(v.read(fresh, 0, 100).expect("read"), b"pdf v2, longer");
    assert_eq!(
        v.read(old, 0, 100).expect("read"),
        b"pdf v1",
        "the open handle keeps its bytes"
    );
    v.release(old).expect("release");
    v.release(fresh).expect("release");
    let xlsx = v.lookup(ROOT_INO, "xlsx").expect("xlsx");
    assert_eq!(v.getattr(xlsx.ino).expect("attr").mode, 0o555, "still read-only");

    // A mount that shows no skills says so.
    let cache2 = Arc::new(BlobCache::open(&tmp.path().join("cache2"), 1 << 30).expect("cache"));
    let other = test_vfs(tmp.path(), "plain", false, cache2, source);
    assert_eq!(other.refresh_skills(&second), Ok(false));
}

// ---------------------------------------------------------------------------
// Real mounts
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skills_dir_serves_the_published_skills_read_only() {
    let s = TestServer::start().await;
    publish_skills(&s);
    let t = Setup::new(&s, "skilldir").await;
    t.mount(&[]);
    let (mnt, dir) = (t.mnt(), t.skills());

    // The published skills, with their content, at DIR's root.
    assert_eq!(t.sh_ok_in(&dir, "ls -A"), "pdf\n");
    assert_eq!(t.sh_ok_in(&dir, "ls pdf"), "SKILL.md\nscripts\n");
    assert_eq!(t.sh_ok_in(&dir, "cat pdf/SKILL.md"), SKILL_MD);
    assert_eq!(
        std::fs::read_to_string(dir.join("pdf/SKILL.md")).expect("read"),
        SKILL_MD
    );
    assert_eq!(
        t.sh_ok_in(&dir, "pdf/scripts/fill.sh"),
        "filled\n",
        "the script is executable"
    );

    // A read-only FUSE mount of its own.
    let (fstype, options) = mount_entry(&dir).expect("DIR in /proc/self/mounts");
    assert!(fstype.starts_with("fuse"), "not a FUSE mount: {fstype}");
    assert!(options.split(',').any(|o| o == "ro"), "mounted without ro: {options}");
    assert!(
        t.status().contains(&format!("skills: {} (read-only)", dir.display())),
        "{}",
        t.status()
    );

    // Every write fails with EROFS, at the root and below.
    for script in [
        "echo x > pdf/SKILL.md",
        "echo x >> pdf/SKILL.md",
        "touch pdf/SKILL.md",
        "touch new.md",
        "rm -f pdf/SKILL.md",
        "mkdir other",
        "mv pdf doc",
        "chmod 600 pdf/SKILL.md",
    ] {
        let out = t.sh_in(&dir, script);
        assert!(!out.status.success(), "`{script}` succeeded in the skills dir");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
            "`{script}`: {}",
            both(&out)
        );
    }
    let script = format!(
        "{TRY_OPS}\n\
         attempt('write', lambda: os.open('pdf/SKILL.md', os.O_WRONLY))\n\
         attempt('create', lambda: os.open('pdf/x.md', os.O_WRONLY | os.O_CREAT, 0o644))\n\
         attempt('create-root', lambda: os.open('x.md', os.O_WRONLY | os.O_CREAT, 0o644))\n\
         attempt('mkdir', lambda: os.mkdir('pdf/new'))\n\
         attempt('unlink', lambda: os.unlink('pdf/SKILL.md'))\n\
         attempt('rmdir', lambda: os.rmdir('pdf/scripts'))\n\
         attempt('rename', lambda: os.rename('pdf/SKILL.md', 'pdf/S.md'))\n\
         attempt('chmod', lambda: os.chmod('pdf/SKILL.md', 0o600))\n\
         attempt('utime', lambda: os.utime('pdf/SKILL.md', (0, 0)))\n\
         attempt('symlink', lambda: os.symlink('pdf', 'link'))\n"
    );
    let out = t
        .command("python3")
        .args(["-c", &script])
        .current_dir(&dir)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "write EROFS",
            "create EROFS",
            "create-root EROFS",
            "mkdir EROFS",
            "unlink EROFS",
            "rmdir EROFS",
            "rename EROFS",
            "chmod EROFS",
            "utime EROFS",
            "symlink EROFS",
        ]
    );
    assert_eq!(t.sh_ok_in(&dir, "cat pdf/SKILL.md"), SKILL_MD, "unchanged");

    // Nothing reached the project.
    t.wait_synced().await;
    let tree = s.tree("skilldir", &s.admin, &[]).await.expect("tree");
    assert!(tree.entries.is_empty(), "the project got entries: {:?}", tree.entries);
    assert!(mounted(&mnt));

    // Publishing again reaches DIR without a remount.
    let v2 = SKILL_MD.replace("Use the scripts.", "Use the scripts, version 2.");
    assert_ne!(v2, SKILL_MD);
    publish_skill_md(&s, &v2);
    wait_until("DIR shows the new SKILL.md", || {
        std::fs::read_to_string(dir.join("pdf/SKILL.md")).is_ok_and(|t| t == v2)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_skills_dir_the_project_owns_the_skills_name() {
    let s = TestServer::start().await;
    publish_skills(&s);
    let p = "ownskills";
    let t = Setup::new(&s, p).await;
    s.commit(p, &s.admin, "notes.md", None, b"# notes\n")
        .await
        .expect("commit notes.md");
    t.mount(&[]);
    let (mnt, dir) = (t.mnt(), t.skills());

    // No `skills/` folder in the project mount: the skills are at DIR.
    assert_eq!(t.sh_ok_in(&mnt, "ls -A"), "notes.md\n");
    assert_eq!(t.sh_ok_in(&dir, "cat pdf/SKILL.md"), SKILL_MD);

    // The project's own skills/x.md is an ordinary, writable project file.
    t.sh_ok_in(&mnt, "mkdir skills && echo 'mine' > skills/x.md");
    assert_eq!(t.sh_ok_in(&mnt, "ls -A"), "notes.md\nskills\n");
    assert_eq!(t.sh_ok_in(&mnt, "cat skills/x.md"), "mine\n");
    t.wait_synced().await;
    assert_eq!(s.read_bytes(p, &s.admin, "skills/x.md").await, b"mine\n");
    // A remote change under the project's skills/ arrives through the feed.
    s.commit(p, &s.admin, "skills/y.md", None, b"remote\n")
        .await
        .expect("commit skills/y.md");
    let mnt2 = mnt.clone();
    eventually("skills/y.md shows up in the mount", || {
        let mnt = mnt2.clone();
        async move {
            std::fs::read_to_string(mnt.join("skills/y.md"))
                .map_err(|e| e.to_string())
                .and_then(|t| if t == "remote\n" { Ok(()) } else { Err(t) })
        }
    })
    .await;

    // Mounted again: the project's skills/ is loaded from the tree, the
    // published skills are still at DIR and nowhere in the project.
    t.umount_ok();
    t.mount(&[]);
    assert_eq!(t.sh_ok_in(&mnt, "ls skills"), "x.md\ny.md\n");
    assert_eq!(t.sh_ok_in(&mnt, "cat skills/x.md"), "mine\n");
    assert_eq!(t.sh_ok_in(&dir, "ls"), "pdf\n");
    let tree = s.tree(p, &s.admin, &[]).await.expect("tree");
    let paths: Vec<&str> = tree.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains("SKILL.md")), "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_mount_unmounts_the_skills_dir_but_not_the_reverse() {
    let s = TestServer::start().await;
    publish_skills(&s);
    let p = "lifecycle";
    let t = Setup::new(&s, p).await;
    let (mnt, dir) = (t.mnt(), t.skills());

    // `contextfs umount MOUNTPOINT` takes DIR down too.
    let pid = t.mount(&[]);
    t.umount_ok();
    assert!(!mounted(&mnt), "{} still mounted", mnt.display());
    assert!(
        !mounted(&dir),
        "{} still mounted after umount MOUNTPOINT",
        dir.display()
    );
    wait_until("the mount process exits", || !process_alive(pid));

    // So does SIGTERM (the same DIR is reused: empty again).
    let pid = t.mount(&[]);
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    wait_until("the mount process exits after SIGTERM", || !process_alive(pid));
    assert!(!mounted(&mnt) && !mounted(&dir), "left mounted after SIGTERM");

    // And so does unmounting MOUNTPOINT from outside.
    let pid = t.mount(&[]);
    unmount_from_outside(&mnt);
    wait_until("the mount process exits after an external unmount", || {
        !process_alive(pid)
    });
    assert!(
        !mounted(&dir),
        "DIR left mounted after MOUNTPOINT was unmounted from outside"
    );

    // Unmounting DIR from outside leaves the project mount working.
    let pid = t.mount(&[]);
    unmount_from_outside(&dir);
    assert!(!mounted(&dir));
    std::thread::sleep(Duration::from_millis(1500)); // past the mount's 1 s watch
    assert!(
        process_alive(pid) && mounted(&mnt),
        "the project mount went away with DIR"
    );
    t.sh_ok_in(&mnt, "echo still > after.md");
    t.wait_synced().await;
    assert_eq!(s.read_bytes(p, &s.admin, "after.md").await, b"still\n");
    t.umount_ok();
    assert!(!mounted(&mnt) && !mounted(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mount_is_replaced_and_offline_serves_the_skills() {
    let mut s = TestServer::start().await;
    publish_skills(&s);
    let t = Setup::new(&s, "offline-skills").await;
    let (mnt, dir) = (t.mnt(), t.skills());
    let pid = t.mount(&[]);
    assert_eq!(
        t.sh_ok_in(&dir, "cat pdf/SKILL.md pdf/scripts/fill.sh"),
        format!("{SKILL_MD}{FILL_SH}")
    );

    // kill -9: both mounts are left dead; the next mount detaches both.
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    wait_until("the mount process dies", || !process_alive(pid));
    assert!(mounted(&dir), "a killed process leaves its mounts behind");
    t.mount(&[]);
    assert_eq!(t.sh_ok_in(&dir, "cat pdf/SKILL.md"), SKILL_MD);
    t.umount_ok();

    // Server down: --offline mounts the skills dir from the last snapshot,
    // reading from the warm cache.
    s.stop().await;
    t.mount(&["--offline"]);
    assert_eq!(t.sh_ok_in(&dir, "ls pdf"), "SKILL.md\nscripts\n");
    assert_eq!(t.sh_ok_in(&dir, "cat pdf/SKILL.md"), SKILL_MD);
    assert_eq!(t.sh_ok_in(&mnt, "ls -A"), "");
    t.umount_ok();
    assert!(!mounted(&mnt) && !mounted(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_skills_dir_is_refused_before_mounting() {
    let s = TestServer::start().await;
    let t = Setup::new(&s, "baddir").await;
    let root = t.root();
    let mnt = t.mnt();
    std::fs::create_dir_all(root.join("full")).expect("mkdir");
    std::fs::write(root.join("full/keep.txt"), "mine").expect("write");
    std::fs::write(root.join("afile"), "x").expect("write");
    let cases: [(PathBuf, &PathBuf, &str); 5] = [
        (root.join("full"), &mnt, "is not empty"),
        (root.join("afile"), &mnt, "is not a directory"),
        (mnt.clone(), &mnt, "is the mount point itself"),
        (mnt.join("skills"), &mnt, "is inside the mount point"),
        (root.join("outer"), &root.join("outer/mnt"), "inside --skills-dir"),
    ];
    for (dir, mountpoint, why) in &cases {
        std::fs::create_dir_all(mountpoint).expect("mkdir mount point");
        for daemon in [false, true] {
            let (m, d) = (mountpoint.display().to_string(), dir.display().to_string());
            let mut args = vec!["mount", m.as_str(), "--skills-dir", d.as_str()];
            if daemon {
                args.push("--daemon");
            }
            let out = t.cli(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && out.status.code() != Some(124),
                "`contextfs {}` did not fail promptly: {}",
                args.join(" "),
                both(&out)
            );
            assert!(
                err.contains("--skills-dir") && err.contains(why),
                "`contextfs {}`: no clear error ({why}): {}",
                args.join(" "),
                both(&out)
            );
            assert!(!mounted(mountpoint) && !mounted(dir), "something was mounted");
        }
    }
    assert_eq!(
        std::fs::read_to_string(root.join("full/keep.txt")).expect("read"),
        "mine"
    );
    assert!(
        !mnt.join("skills").exists(),
        "created a directory inside the mount point"
    );
}

#[test]
fn mount_help_explains_skills_dir() {
    let out = Command::new(BIN)
        .args(["mount", "--help"])
        .output()
        .expect("run contextfs");
    assert!(out.status.success(), "{}", both(&out));
    let help = stdout(&out);
    assert!(help.contains("--skills-dir <DIR>"), "{help}");
    assert!(help.contains("EROFS"), "{help}");
    assert!(help.contains("unmounted together with MOUNTPOINT"), "{help}");
}
