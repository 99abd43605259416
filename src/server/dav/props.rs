//! Dead properties (PROPPATCH of properties the server does not compute:
//! Finder's, Office's, any client's own), kept per node in the metadata
//! database (`dav_props`). A MOVE keeps the node, so its properties follow;
//! a DELETE through WebDAV drops them ([`ProjectFs::forget_props`]); a COPY
//! copies them. The project root and the published `skills/` have none.
//!
//! A PROPFIND lists every dead property of each resource it answers for
//! (dav-server 0.11 appends `get_props` to every PROPFIND answer, `prop`
//! requests included), so one listing reads the properties of all its
//! entries with one query, kept for the rest of the request in [`PropCache`].

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;
use dav_server::davpath::DavPath;
use dav_server::fs::{DavProp, FsError, FsResult};

use super::fs::{fs_error, ws_path, ProjectFs, Resolved};
use crate::server::store::dav::DeadPropRow;

/// What one request learned about nodes and their dead properties.
#[derive(Default)]
pub struct PropCache {
    /// Project path → node id.
    nodes: Mutex<HashMap<String, i64>>,
    /// Node id → its dead properties, for nodes read together.
    props: Mutex<HashMap<i64, Vec<DeadPropRow>>>,
}

impl PropCache {
    pub fn remember_node(&self, path: &str, node: i64) {
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.insert(path.to_string(), node);
        }
    }

    fn node(&self, path: &str) -> Option<i64> {
        self.nodes.lock().ok()?.get(path).copied()
    }

    fn props(&self, node: i64) -> Option<Vec<DeadPropRow>> {
        self.props.lock().ok()?.get(&node).cloned()
    }
}

fn to_dav(row: DeadPropRow, with_content: bool) -> DavProp {
    DavProp {
        name: row.name,
        prefix: row.prefix,
        namespace: (!row.namespace.is_empty()).then_some(row.namespace),
        xml: with_content.then_some(row.xml),
    }
}

impl ProjectFs {
    /// The node behind a path that can carry dead properties.
    async fn prop_node(&self, path: &DavPath) -> FsResult<i64> {
        let ws = ws_path(path)?.ok_or(FsError::NotFound)?;
        if let Some(node) = self.props.node(ws.as_str()) {
            return Ok(node);
        }
        match self.resolve(&Some(ws.clone())).await? {
            Resolved::Node(v) => {
                self.props.remember_node(ws.as_str(), v.node);
                Ok(v.node)
            }
            _ => Err(FsError::NotFound),
        }
    }

    /// Reads the dead properties of many nodes at once (a listing).
    pub async fn prefetch_props(&self, nodes: Vec<i64>) -> FsResult<()> {
        let rows = self
            .service
            .store
            .dead_props(nodes.clone())
            .await
            .map_err(|e| fs_error(e.into()))?;
        let mut by_node: HashMap<i64, Vec<DeadPropRow>> = nodes.into_iter().map(|n| (n, Vec::new())).collect();
        for (node, row) in rows {
            by_node.entry(node).or_default().push(row);
        }
        if let Ok(mut cache) = self.props.props.lock() {
            cache.extend(by_node);
        }
        Ok(())
    }

    /// Forgets the dead properties of nodes WebDAV deleted.
    pub async fn forget_props(&self, nodes: Vec<i64>) -> FsResult<()> {
        self.service
            .store
            .drop_dead_props(nodes)
            .await
            .map_err(|e| fs_error(e.into()))
    }

    /// COPY: the copy gets the source's dead properties.
    pub async fn copy_props(&self, from: i64, to: i64) -> FsResult<()> {
        self.service
            .store
            .copy_dead_props(from, to)
            .await
            .map_err(|e| fs_error(e.into()))
    }

    pub fn may_have_props(&self, path: &DavPath) -> bool {
        ws_path(path).ok().flatten().is_some_and(|p| !self.in_skills(&p))
    }

    pub async fn dead_props(&self, path: &DavPath, with_content: bool) -> FsResult<Vec<DavProp>> {
        let node = self.prop_node(path).await?;
        let rows = match self.props.props(node) {
            Some(rows) => rows,
            None => self
                .service
                .store
                .dead_props(vec![node])
                .await
                .map_err(|e| fs_error(e.into()))?
                .into_iter()
                .map(|(_, row)| row)
                .collect(),
        };
        Ok(rows.into_iter().map(|r| to_dav(r, with_content)).collect())
    }

    /// PROPPATCH of dead properties: all stored in one transaction, or none.
    pub async fn patch_dead_props(
        &self,
        path: &DavPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsResult<Vec<(StatusCode, DavProp)>> {
        let ws = ws_path(path)?.ok_or(FsError::Forbidden)?;
        if self.in_skills(&ws) {
            return Err(FsError::Forbidden);
        }
        let node = self.prop_node(path).await?;
        let mut set = Vec::new();
        let mut remove = Vec::new();
        let mut answer = Vec::with_capacity(patch.len());
        for (is_set, prop) in patch {
            let namespace = prop.namespace.clone().unwrap_or_default();
            if is_set {
                let Some(xml) = prop.xml.clone() else {
                    answer.push((StatusCode::CONFLICT, prop));
                    continue;
                };
                set.push(DeadPropRow {
                    namespace,
                    name: prop.name.clone(),
                    prefix: prop.prefix.clone(),
                    xml,
                });
            } else {
                remove.push((namespace, prop.name.clone()));
            }
            answer.push((StatusCode::OK, DavProp { xml: None, ..prop }));
        }
        if answer.iter().any(|(s, _)| *s != StatusCode::OK) {
            // RFC 4918 §9.2: all or nothing.
            return Ok(answer
                .into_iter()
                .map(|(s, p)| {
                    let s = if s == StatusCode::OK {
                        StatusCode::FAILED_DEPENDENCY
                    } else {
                        s
                    };
                    (s, p)
                })
                .collect());
        }
        self.service
            .store
            .patch_dead_props(node, set, remove)
            .await
            .map_err(|e| fs_error(e.into()))?;
        Ok(answer)
    }
}
