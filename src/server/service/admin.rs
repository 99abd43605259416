//! Projects and tokens: the admin routes, and the projects a caller may list.

use super::{meta, Service, MAX_AGENT_ID};
use crate::api::*;
use crate::model::validate_project_name;
use crate::server::auth::{new_secret, secret_hash, Caller};
use crate::server::error::ApiError;
use crate::server::store::{format_time, ProjectRow, TokenRow};

fn project_info(p: &ProjectRow) -> ProjectInfo {
    ProjectInfo {
        name: p.name.clone(),
        created_at: format_time(p.created_at),
        cursor: p.cursor,
    }
}

fn token_info(t: &TokenRow) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        project: t.project.clone(),
        access: t.access,
        label: t.label.clone(),
        created_at: format_time(t.created_at),
        revoked: t.revoked,
    }
}

impl Service {
    pub async fn create_project(&self, caller: &Caller, req: CreateProjectRequest) -> Result<ProjectInfo, ApiError> {
        caller.require_admin()?;
        validate_project_name(&req.name).map_err(|e| ApiError::bad_request(ErrorCode::InvalidName, e.to_string()))?;
        let row = self.store.create_project(&req.name, meta(caller, None, None)?).await?;
        Ok(project_info(&row))
    }

    pub async fn list_projects(&self, caller: &Caller) -> Result<Vec<ProjectInfo>, ApiError> {
        let rows = self.store.projects().await?;
        Ok(rows
            .iter()
            .filter(|p| caller.admin || caller.project.as_deref() == Some(p.name.as_str()))
            .map(project_info)
            .collect())
    }

    pub async fn project(&self, caller: &Caller, name: &str) -> Result<ProjectInfo, ApiError> {
        Ok(project_info(&self.project_for(caller, name, false).await?))
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        project: &str,
        req: CreateTokenRequest,
    ) -> Result<CreatedToken, ApiError> {
        caller.require_admin()?;
        let project = self.project_for(caller, project, true).await?;
        if req.label.as_ref().is_some_and(|l| l.len() > MAX_AGENT_ID) {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidField,
                "label is longer than 256 bytes",
            ));
        }
        let secret = new_secret();
        let id = format!("tok_{}", hex::encode(rand::random::<[u8; 6]>()));
        let row = self
            .store
            .create_token(
                project.id,
                &id,
                &secret_hash(&secret),
                req.access,
                req.label,
                meta(caller, None, None)?,
            )
            .await?;
        Ok(CreatedToken {
            token: secret,
            info: token_info(&row),
        })
    }

    pub async fn list_tokens(&self, caller: &Caller, project: &str) -> Result<Vec<TokenInfo>, ApiError> {
        caller.require_admin()?;
        let project = self.project_for(caller, project, false).await?;
        Ok(self.store.tokens(project.id).await?.iter().map(token_info).collect())
    }

    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<(), ApiError> {
        caller.require_admin()?;
        if self.store.revoke_token(id, meta(caller, None, None)?).await? {
            // The store has the revocation now, so a lookup that starts after
            // this bump sees it; entries from earlier lookups (including one
            // still in flight) carry an older epoch and are ignored.
            self.revocation_epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.token_cache.invalidate_all();
            Ok(())
        } else {
            Err(ApiError::not_found(format!("token {id} not found")))
        }
    }
}
