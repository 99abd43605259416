//! Skills: their blobs, the published listing, publishing, and the SKILL.md
//! front matter that names and describes each skill.

use std::collections::BTreeMap;

use super::{check_mode, meta, Service};
use crate::api::*;
use crate::model::BlobHash;
use crate::server::auth::Caller;
use crate::server::blobs::ByteStream;
use crate::server::error::ApiError;

impl Service {
    pub async fn put_skill_blob(
        &self,
        caller: &Caller,
        hash: &BlobHash,
        body: ByteStream,
    ) -> Result<BlobReceipt, ApiError> {
        caller.require_admin()?;
        let (hash, size, created) = self
            .blobs
            .put_stream(Some(hash), body, self.limits.max_blob_bytes)
            .await?;
        Ok(BlobReceipt { hash, size, created })
    }

    pub async fn get_skill_blob(&self, hash: &BlobHash) -> Result<(u64, ByteStream), ApiError> {
        if !self.store.skill_has_blob(hash).await? {
            return Err(ApiError::not_found(format!(
                "blob {hash} is not part of the published skills"
            )));
        }
        Ok(self.blobs.get(hash).await?)
    }

    pub async fn skills(&self) -> Result<SkillsListing, ApiError> {
        Ok(self.store.skills().await?)
    }

    /// Replaces the published skills. Each skill is a top-level folder with a
    /// SKILL.md whose front matter names it and describes it.
    pub async fn publish_skills(&self, caller: &Caller, req: PublishSkillsRequest) -> Result<SkillsListing, ApiError> {
        caller.require_admin()?;
        let mut by_skill: BTreeMap<String, Vec<SkillFile>> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for file in req.files {
            check_mode(Some(file.mode))?;
            if !seen.insert(file.path.clone()) {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidSkill,
                    format!("{} is listed twice; each skill file appears once", file.path),
                ));
            }
            let Some((skill, _)) = file.path.as_str().split_once('/') else {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidSkill,
                    format!(
                        "{}: every skill file must be inside a skill folder (skill-name/...)",
                        file.path
                    ),
                ));
            };
            by_skill.entry(skill.to_string()).or_default().push(file);
        }
        let mut skills = Vec::new();
        for (name, files) in by_skill {
            let manifest = files
                .iter()
                .find(|f| f.path.as_str() == format!("{name}/SKILL.md"))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        ErrorCode::InvalidSkill,
                        format!("skill {name}: missing {name}/SKILL.md"),
                    )
                })?;
            for f in &files {
                match self.blobs.size(&f.hash).await? {
                    Some(size) if size == f.size => {}
                    Some(size) => {
                        return Err(ApiError::bad_request(
                            ErrorCode::InvalidSkill,
                            format!("skill {name}: {} is {size} bytes, not {}", f.path, f.size),
                        ))
                    }
                    None => {
                        return Err(ApiError::bad_request(
                            ErrorCode::BlobMissing,
                            format!("skill {name}: blob {} of {} was not uploaded", f.hash, f.path),
                        ))
                    }
                }
            }
            let text = self.blobs.read_all(&manifest.hash, 1 << 20).await?;
            let (front_name, description) = parse_skill_front_matter(&text).map_err(|problem| {
                ApiError::bad_request(ErrorCode::InvalidSkill, format!("skill {name}: SKILL.md {problem}"))
            })?;
            if front_name != name {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidSkill,
                    format!("skill {name}: SKILL.md front matter says name: {front_name}, but the folder is {name}"),
                ));
            }
            skills.push(SkillInfo {
                name,
                description,
                files,
            });
        }
        self.store.publish_skills(skills, meta(caller, None, None)?).await?;
        self.skills().await
    }
}

/// The `name` and `description` of a SKILL.md's YAML front matter.
pub fn parse_skill_front_matter(bytes: &[u8]) -> Result<(String, String), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
        .ok_or("does not start with a front matter block (a line `---`)")?;
    let end = rest.find("\n---").ok_or("front matter is not closed by a line `---`")?;
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&rest[..end]).map_err(|e| format!("front matter is not valid YAML: {e}"))?;
    let field = |key: &str| -> Result<String, String> {
        match yaml.get(key) {
            Some(serde_yaml::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(_) => Err(format!("front matter field `{key}` must be a non-empty string")),
            None => Err(format!("front matter has no `{key}` field")),
        }
    };
    Ok((field("name")?, field("description")?))
}

#[cfg(test)]
mod tests {
    use super::parse_skill_front_matter;

    #[test]
    fn front_matter() {
        let ok = b"---\nname: pdf\ndescription: Read PDFs\n---\n# PDF\n";
        assert_eq!(
            parse_skill_front_matter(ok).unwrap(),
            ("pdf".into(), "Read PDFs".into())
        );
        assert!(parse_skill_front_matter(b"# no front matter")
            .unwrap_err()
            .contains("front matter"));
        assert!(parse_skill_front_matter(b"---\nname: x\n---\n")
            .unwrap_err()
            .contains("description"));
        assert!(parse_skill_front_matter(b"---\nname: [x\n---\n")
            .unwrap_err()
            .contains("YAML"));
        assert!(parse_skill_front_matter(b"---\nname: x\ndescription: y\n")
            .unwrap_err()
            .contains("closed"));
    }
}
