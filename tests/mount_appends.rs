//! Concurrent appends to one shared file through real mounts (issue 12):
//! 16 writer processes on 4 mounts of one project each append 5 lines to
//! `log.md` with `>>`. Writers on one mount append to the same local file;
//! across mounts the server merges each commit into the head, and
//! insertions by both sides at one point are a union (src/merge/text.rs,
//! rule 3), so no line may be lost and no version may be `lww`.

mod common;

use std::process::Child;

use common::*;
use contextfs::api::VersionStatus;

const MOUNTS: usize = 4;
const WRITERS_PER_MOUNT: usize = 4;
const LINES_PER_WRITER: usize = 5;
const FILE: &str = "log.md";

/// Every line the writers append, in each writer's own order.
fn writer_lines(writer: usize) -> Vec<String> {
    (1..=LINES_PER_WRITER).map(|i| format!("w{writer} line {i}")).collect()
}

/// Checks that `text` holds every writer's lines exactly once, each
/// writer's in its own order, plus `header` lines first, and nothing else.
fn check_all_lines(text: &str, header: &[&str]) -> Result<(), String> {
    let lines: Vec<&str> = text.lines().collect();
    let writers = MOUNTS * WRITERS_PER_MOUNT;
    let want = header.len() + writers * LINES_PER_WRITER;
    if !text.ends_with('\n') || lines.len() != want || !lines.starts_with(header) {
        return Err(format!("{} lines, want {want}:\n{text}", lines.len()));
    }
    for writer in 0..writers {
        let mut last = None;
        for line in writer_lines(writer) {
            let at: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == line).collect();
            let [at] = at[..] else {
                return Err(format!("{line:?} is there {} times:\n{text}", at.len()));
            };
            if last.is_some_and(|last| last > at) {
                return Err(format!("w{writer}'s lines are out of order:\n{text}"));
            }
            last = Some(at);
        }
    }
    Ok(())
}

/// Mounts the project four times, runs the 16 writers at once and checks
/// the server's head, its history and every mount. With `precreate`,
/// `log.md` exists (empty) on every mount before the writers start;
/// otherwise the first `>>` of each mount creates it.
async fn sixteen_writers_on_four_mounts(project: &str, precreate: bool) {
    let s = TestServer::start().await;
    let first = MountedWorkspace::create(&s, project, "agent-m0").await;
    let mut mounts = vec![first];
    for m in 1..MOUNTS {
        let next = mounts[0].another(&format!("mnt{m}"), &format!("agent-m{m}"));
        mounts.push(next);
    }
    let token = mounts[0].token.clone();
    if precreate {
        mounts[0].sh_ok(&format!(": > {FILE}"));
        mounts[0].wait_synced().await;
        for m in &mounts {
            mount_shows(m, FILE, "").await;
        }
    }

    let mut writers: Vec<(usize, Child)> = Vec::new();
    for (m, mount) in mounts.iter().enumerate() {
        for w in 0..WRITERS_PER_MOUNT {
            let writer = m * WRITERS_PER_MOUNT + w;
            let script = format!(
                "for i in $(seq 1 {LINES_PER_WRITER}); do echo \"w{writer} line $i\" >> {FILE}; \
                 sleep 0.0$((RANDOM % 8)); done"
            );
            let child = mount
                .command("bash")
                .args(["-c", &script])
                .current_dir(&mount.dir)
                .spawn()
                .expect("start a writer");
            writers.push((writer, child));
        }
    }
    for (writer, mut child) in writers {
        let status = child.wait().expect("wait for a writer");
        assert!(status.success(), "writer w{writer} failed: {status}");
    }
    for m in &mounts {
        m.wait_synced().await;
    }

    let header: &[&str] = &[];
    let head = eventually("the server's head of log.md holds all 80 lines", || async {
        let checkout = s
            .read(project, &token, FILE, None)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let text = String::from_utf8(checkout.bytes).map_err(|e| e.to_string())?;
        check_all_lines(&text, header)?;
        Ok(text)
    })
    .await;

    let history = s.history(project, &token, FILE).await;
    let lww: Vec<(i64, Option<String>)> = history
        .iter()
        .filter(|v| v.status == VersionStatus::Lww)
        .map(|v| (v.version, v.agent_id.clone()))
        .collect();
    assert!(
        lww.is_empty(),
        "versions of {FILE} fell back to lww (version, agent): {lww:?}; history: {:?}",
        history.iter().map(|v| (v.version, v.status)).collect::<Vec<_>>()
    );
    let merged = history.iter().filter(|v| v.status == VersionStatus::Merged).count();
    assert!(merged > 0, "four mounts wrote concurrently, yet no commit merged");

    for m in &mounts {
        mount_shows(m, FILE, &head).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_appending_to_an_existing_file_keep_every_line() {
    sixteen_writers_on_four_mounts("appends", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_creating_the_file_with_their_appends_keep_every_line() {
    sixteen_writers_on_four_mounts("creates", false).await;
}
