//! The published skills as a read-only folder `skills/` of every project
//! (unless the project has its own `skills` entry), as a mount shows them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::SkillsListing;
use crate::model::BlobHash;

pub const SKILLS_DIR: &str = "skills";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkillNode {
    Dir,
    File { hash: BlobHash, size: u64, mode: u32 },
}

/// Every file and directory of the published skills, by path relative to
/// `skills/` (`""` is `skills/` itself).
#[derive(Debug)]
pub struct SkillsView {
    nodes: BTreeMap<String, SkillNode>,
    pub published: SystemTime,
}

impl SkillsView {
    pub fn new(listing: &SkillsListing) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(String::new(), SkillNode::Dir);
        for file in listing.skills.iter().flat_map(|s| s.files.iter()) {
            let path = file.path.as_str();
            let mut at = 0;
            while let Some(i) = path[at..].find('/') {
                nodes.insert(path[..at + i].to_string(), SkillNode::Dir);
                at += i + 1;
            }
            nodes.insert(
                path.to_string(),
                SkillNode::File {
                    hash: file.hash.clone(),
                    size: file.size,
                    mode: file.mode,
                },
            );
        }
        let published = listing
            .published_at
            .as_deref()
            .map(super::fs::system_time)
            .unwrap_or(UNIX_EPOCH);
        Self { nodes, published }
    }

    pub fn node(&self, rel: &str) -> Option<SkillNode> {
        self.nodes.get(rel).cloned()
    }

    /// The direct children of directory `rel`, by name.
    pub fn children(&self, rel: &str) -> Vec<(String, SkillNode)> {
        let prefix = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| p.len() > prefix.len() && !p[prefix.len()..].contains('/'))
            .map(|(p, n)| (p[prefix.len()..].to_string(), n.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SkillFile, SkillInfo};
    use crate::model::WsPath;

    #[test]
    fn lists_skill_folders_and_files() {
        let hash = BlobHash::of(b"x");
        let file = |p: &str| SkillFile {
            path: WsPath::parse(p).expect("valid"),
            hash: hash.clone(),
            size: 1,
            mode: 0o644,
        };
        let view = SkillsView::new(&SkillsListing {
            published_at: None,
            skills: vec![SkillInfo {
                name: "pdf".into(),
                description: "d".into(),
                files: vec![file("pdf/SKILL.md"), file("pdf/scripts/x.sh")],
            }],
        });
        let names = |rel| view.children(rel).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(""), vec!["pdf"]);
        assert_eq!(names("pdf"), vec!["SKILL.md", "scripts"]);
        assert_eq!(names("pdf/scripts"), vec!["x.sh"]);
        assert_eq!(view.node("pdf/scripts"), Some(SkillNode::Dir));
        assert_eq!(view.node("nope"), None);
    }
}
