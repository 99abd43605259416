//! The property test of local operations: every errno and every byte of the
//! Vfs against the model, and the tree a remount replays from the journal.

use crate::harness::*;
use crate::model::*;

#[derive(Debug, Clone)]
pub enum Op {
    Create {
        path: String,
        exclusive: bool,
        truncate: bool,
        append: bool,
    },
    Open {
        path: String,
        truncate: bool,
        append: bool,
    },
    Write {
        h: usize,
        offset: u64,
        data: Vec<u8>,
    },
    TruncateHandle {
        h: usize,
        size: u64,
    },
    TruncatePath {
        path: String,
        size: u64,
    },
    Flush {
        h: usize,
    },
    Close {
        h: usize,
    },
    Rename {
        from: String,
        to: String,
        no_replace: bool,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Read {
        path: String,
    },
}

pub fn any_path() -> impl Strategy<Value = String> {
    prop::collection::vec(select(vec!["a", "b", "c", "d"]), 1..=2).prop_map(|parts| parts.join("/"))
}

pub fn any_offset() -> impl Strategy<Value = u64> {
    // 70_000 pushes the content past the journal's inline limit.
    prop_oneof![8 => select(vec![0u64, 1, 3, 8, 100, 5000]), 1 => Just(70_000u64)]
}

/// Up to 40 operations: a few that populate the tree (so later operations
/// meet existing names often), then anything.
pub fn any_ops() -> impl Strategy<Value = Vec<Op>> {
    let top = select(vec!["a", "b", "c", "d"]).prop_map(String::from);
    let populate = prop_oneof![
        2 => top.prop_map(|path| Op::Mkdir { path }),
        2 => any_path().prop_map(|path| Op::Mkdir { path }),
        3 => any_path().prop_map(|path| Op::Create { path, exclusive: false, truncate: false, append: false }),
        2 => (0usize..8, prop::collection::vec(any::<u8>(), 1..6)).prop_map(|(h, data)| Op::Write { h, offset: 0, data }),
    ];
    (
        prop::collection::vec(populate, 0..=12),
        prop::collection::vec(any_op(), 0..=28),
    )
        .prop_map(|(mut ops, more)| {
            ops.extend(more);
            ops
        })
}

pub fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any_path(), any::<bool>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(path, exclusive, truncate, append)| Op::Create { path, exclusive, truncate, append }),
        2 => (any_path(), prop::bool::weighted(0.3), prop::bool::weighted(0.3))
            .prop_map(|(path, truncate, append)| Op::Open { path, truncate, append }),
        5 => (0usize..8, any_offset(), prop::collection::vec(any::<u8>(), 0..6))
            .prop_map(|(h, offset, data)| Op::Write { h, offset, data }),
        1 => (0usize..8, select(vec![0u64, 2, 9, 6000])).prop_map(|(h, size)| Op::TruncateHandle { h, size }),
        1 => (any_path(), select(vec![0u64, 2, 9, 6000])).prop_map(|(path, size)| Op::TruncatePath { path, size }),
        1 => (0usize..8).prop_map(|h| Op::Flush { h }),
        3 => (0usize..8).prop_map(|h| Op::Close { h }),
        4 => (any_path(), any_path(), prop::bool::weighted(0.25))
            .prop_map(|(from, to, no_replace)| Op::Rename { from, to, no_replace }),
        2 => any_path().prop_map(|path| Op::Unlink { path }),
        3 => any_path().prop_map(|path| Op::Mkdir { path }),
        2 => any_path().prop_map(|path| Op::Rmdir { path }),
        1 => any_path().prop_map(|path| Op::Read { path }),
    ]
}

/// One open writable handle, on both sides.
pub struct OpenHandle {
    fh: u64,
    ino: Ino,
    file: usize,
    append: bool,
}

/// Runs `ops` on a fresh mount and on the model, comparing each outcome;
/// then closes every handle and compares the trees, and with `remount` also
/// the tree a new mount rebuilds from the journal.
pub fn run_model(ops: &[Op], with_server: bool, remount: bool) -> Result<(), TestCaseError> {
    let env = Env::new();
    let (listing, mut model) = if with_server {
        server_listing(&env.source)
    } else {
        (empty_listing(), Model::default())
    };
    let vfs = env.mount(&listing);
    check_tree(&vfs, &model, "after load")?;
    let mut handles: Vec<OpenHandle> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        let when = format!("step {step}: {op:?}");
        match op {
            Op::Create {
                path,
                exclusive,
                truncate,
                append,
            } => {
                let mode = OpenMode {
                    read: true,
                    write: true,
                    truncate: *truncate,
                    append: *append,
                };
                let got = errno(
                    vfs_parent(&vfs, path)
                        .map_err(|e| VfsError::new(e, "walk"))
                        .and_then(|(parent, name)| vfs.create(parent, &name, 0o644, mode, *exclusive)),
                );
                let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                    Some(_) if *exclusive => Err(libc::EEXIST),
                    Some(MNode::Dir) => Err(libc::EISDIR),
                    Some(MNode::File(id)) => Ok(*id),
                    None => {
                        let id = model.new_file(Vec::new());
                        model.tree.insert(path.clone(), MNode::File(id));
                        Ok(id)
                    }
                });
                prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want.map(|_| ()), "{}", when);
                if let (Ok((attr, fh)), Ok(file)) = (got, want) {
                    if *truncate {
                        model.data[file].clear();
                    }
                    handles.push(OpenHandle {
                        fh,
                        ino: attr.ino,
                        file,
                        append: *append,
                    });
                }
            }
            Op::Open { path, truncate, append } => {
                let mode = OpenMode {
                    read: true,
                    write: true,
                    truncate: *truncate,
                    append: *append,
                };
                let got = vfs_ino(&vfs, path).and_then(|ino| errno(vfs.open(ino, mode)).map(|fh| (ino, fh)));
                let want = model.file_at(path);
                prop_assert_eq!(got.map(|_| ()), want.map(|_| ()), "{}", when);
                if let (Ok((ino, fh)), Ok(file)) = (got, want) {
                    if *truncate {
                        model.data[file].clear();
                    }
                    handles.push(OpenHandle {
                        fh,
                        ino,
                        file,
                        append: *append,
                    });
                }
            }
            Op::Write { h, offset, data } => {
                if handles.is_empty() {
                    continue;
                }
                let handle = &handles[h % handles.len()];
                let n = vfs.write(handle.fh, *offset, data);
                prop_assert_eq!(n, Ok(data.len() as u32), "{}", when);
                let at = if handle.append {
                    model.data[handle.file].len()
                } else {
                    *offset as usize
                };
                model.write(handle.file, at, data);
            }
            Op::TruncateHandle { h, size } => {
                if handles.is_empty() {
                    continue;
                }
                let handle = &handles[h % handles.len()];
                let attr = vfs.setattr(
                    handle.ino,
                    Some(handle.fh),
                    SetAttr {
                        size: Some(*size),
                        ..Default::default()
                    },
                );
                prop_assert!(attr.as_ref().is_ok_and(|a| a.size == *size), "{}: {:?}", when, attr);
                model.data[handle.file].resize(*size as usize, 0);
            }
            Op::TruncatePath { path, size } => {
                let got = vfs_ino(&vfs, path).and_then(|ino| {
                    errno(vfs.setattr(
                        ino,
                        None,
                        SetAttr {
                            size: Some(*size),
                            ..Default::default()
                        },
                    ))
                });
                let want = model.file_at(path);
                prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want.map(|_| ()), "{}", when);
                if let Ok(id) = want {
                    model.data[id].resize(*size as usize, 0);
                }
            }
            Op::Flush { h } => {
                if handles.is_empty() {
                    continue;
                }
                let fh = handles[h % handles.len()].fh;
                prop_assert_eq!(vfs.flush(fh), Ok(()), "{}", when);
            }
            Op::Close { h } => {
                if handles.is_empty() {
                    continue;
                }
                let handle = handles.remove(h % handles.len());
                prop_assert_eq!(vfs.flush(handle.fh), Ok(()), "{}", when);
                prop_assert_eq!(vfs.release(handle.fh), Ok(()), "{}", when);
            }
            Op::Rename { from, to, no_replace } => {
                let got = vfs_parent(&vfs, from).and_then(|(p, n)| {
                    let (np, nn) = vfs_parent(&vfs, to)?;
                    errno(vfs.rename(p, &n, np, &nn, *no_replace))
                });
                let want = model.rename(from, to, *no_replace);
                prop_assert_eq!(got, want, "{}", when);
            }
            Op::Unlink { path } => {
                let got = vfs_parent(&vfs, path).and_then(|(p, n)| errno(vfs.unlink(p, &n)));
                let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                    None => Err(libc::ENOENT),
                    Some(MNode::Dir) => Err(libc::EISDIR),
                    Some(MNode::File(_)) => {
                        model.tree.remove(path);
                        Ok(())
                    }
                });
                prop_assert_eq!(got, want, "{}", when);
            }
            Op::Mkdir { path } => {
                let got = vfs_parent(&vfs, path).and_then(|(p, n)| errno(vfs.mkdir(p, &n, 0o755)).map(|_| ()));
                let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                    Some(_) => Err(libc::EEXIST),
                    None => {
                        model.tree.insert(path.clone(), MNode::Dir);
                        Ok(())
                    }
                });
                prop_assert_eq!(got, want, "{}", when);
            }
            Op::Rmdir { path } => {
                let got = vfs_parent(&vfs, path).and_then(|(p, n)| errno(vfs.rmdir(p, &n)));
                let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                    None => Err(libc::ENOENT),
                    Some(MNode::File(_)) => Err(libc::ENOTDIR),
                    Some(MNode::Dir) if model.has_children(path) => Err(libc::ENOTEMPTY),
                    Some(MNode::Dir) => {
                        model.tree.remove(path);
                        Ok(())
                    }
                });
                prop_assert_eq!(got, want, "{}", when);
            }
            Op::Read { path } => {
                let got = vfs_parent(&vfs, path).and_then(|(parent, name)| {
                    let attr = vfs.lookup(parent, &name).map_err(|e| e.errno)?;
                    if attr.kind == NodeKind::Dir {
                        return Ok(None);
                    }
                    let fh = errno(vfs.open(attr.ino, RO))?;
                    let bytes = read_all(&vfs, fh);
                    errno(vfs.release(fh))?;
                    Ok(Some(bytes))
                });
                let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                    None => Err(libc::ENOENT),
                    Some(MNode::Dir) => Ok(None),
                    Some(MNode::File(id)) => Ok(Some(model.data[*id].clone())),
                });
                prop_assert_eq!(got, want, "{}", when);
            }
        }
    }

    for handle in handles.drain(..) {
        prop_assert_eq!(vfs.flush(handle.fh), Ok(()));
        prop_assert_eq!(vfs.release(handle.fh), Ok(()));
    }
    check_tree(&vfs, &model, "after the sequence")?;
    prop_assert!(
        vfs.unflushed().is_empty(),
        "unflushed after closing everything: {:?}",
        vfs.unflushed()
    );
    let before = plan_summary(&vfs);
    let vfs = if remount {
        drop(vfs);
        let vfs = env.mount(&listing);
        check_tree(&vfs, &model, "after remount")?;
        prop_assert_eq!(plan_summary(&vfs), before, "what would be sent after remount");
        vfs
    } else {
        vfs
    };

    // Every journaled change is plannable (valid paths, known nodes): the
    // deletions now, the rest once the deletions they wait for are done.
    let queued = vfs.queued().len();
    let mut planned = 0;
    for item in plan(&vfs) {
        if let DrainOp::Delete { node, .. } = item.op {
            prop_assert_eq!(vfs.ack_delete(item.uid, item.rev, node, &[]), Ok(()));
            planned += 1;
        }
    }
    let rest = plan(&vfs);
    prop_assert!(
        !rest.iter().any(|i| matches!(i.op, DrainOp::Delete { .. })),
        "{:?}",
        describe(&rest)
    );
    planned += rest.len();
    prop_assert_eq!(planned, queued, "records without a plan: {:?}", vfs.queued());
    Ok(())
}

/// What a drain would send, comparable across mounts (uids are not).
pub fn plan_summary(vfs: &Vfs) -> Vec<String> {
    let mut out: Vec<String> = plan(vfs)
        .iter()
        .map(|i| match &i.op {
            DrainOp::Commit {
                path,
                node,
                base_version,
                hash,
                mode,
                ..
            } => {
                format!(
                    "commit {path} node {node:?} base {base_version:?} mode {mode:o} {}",
                    &hash.as_str()[..8]
                )
            }
            DrainOp::Delete { node, path, recursive } => format!("delete {path} node {node} recursive {recursive}"),
            DrainOp::Rename { node, from, to } => format!("rename {from} -> {to} node {node}"),
            DrainOp::Mkdir { path, mode } => format!("mkdir {path} mode {mode:o}"),
            DrainOp::Forget => "forget".into(),
        })
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn vfs_matches_model(ops in any_ops(), with_server in any::<bool>()) {
        run_model(&ops, with_server, false)?;
    }

    #[test]
    fn journal_replay_rebuilds_the_tree(ops in any_ops(), with_server in any::<bool>()) {
        run_model(&ops, with_server, true)?;
    }
}
