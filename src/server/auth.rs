//! Bearer-token authentication.
//!
//! Project tokens are stored only as blake3 hashes. A token for another
//! project gets the same 404 as a project that does not exist, so a token
//! cannot be used to discover project names.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::ApiError;
use super::service::Service;
use super::store::ProjectRow;
use crate::api::Access;

pub const ADMIN_ID: &str = "admin";

#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub admin: bool,
    /// The one project a project token may touch.
    pub project: Option<String>,
    pub access: Access,
}

/// A new random secret, as handed to users: `cfs_` + 48 hex characters.
pub fn new_secret() -> String {
    format!("cfs_{}", hex::encode(rand::random::<[u8; 24]>()))
}

pub fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

impl FromRequestParts<Arc<Service>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, service: &Arc<Service>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
        let secret = header
            .to_str()
            .ok()
            // The auth scheme is case-insensitive (RFC 9110 §11.1).
            .and_then(|v| {
                v.split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            })
            .map(|(_, token)| token.trim())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        service.authenticate(secret).await
    }
}

impl Caller {
    pub fn may_write(&self) -> bool {
        self.access == Access::ReadWrite
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs the admin token"))
        }
    }
}

/// Test-only fault injection: `CONTEXTFS_TEST_TOKEN_FILL_DELAY_MS` holds
/// every token-cache fill that long after its store lookup, which makes the
/// race between a fill in flight and a revocation happen every time.
fn token_fill_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("CONTEXTFS_TEST_TOKEN_FILL_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    })
}

impl Service {
    pub async fn authenticate(&self, secret: &str) -> Result<Caller, ApiError> {
        let hash = secret_hash(secret);
        if hash == self.admin_token_hash {
            return Ok(Caller {
                token_id: ADMIN_ID.into(),
                admin: true,
                project: None,
                access: Access::ReadWrite,
            });
        }
        // Read before the lookup: a revocation that lands after this point
        // bumps the epoch, so what this lookup fills is never used again.
        let epoch = self.revocation_epoch.load(Ordering::SeqCst);
        if let Some((caller, filled_in)) = self.token_cache.get(&hash) {
            if filled_in == epoch {
                return Ok(caller);
            }
        }
        match self.store.token_by_secret_hash(&hash).await? {
            Some(token) if !token.revoked => {
                let caller = Caller {
                    token_id: token.id,
                    admin: false,
                    project: Some(token.project),
                    access: token.access,
                };
                if let Some(delay) = token_fill_delay() {
                    // Fault injection for the revocation test: hold the fill
                    // in flight so a revocation can land before it.
                    tokio::time::sleep(delay).await;
                }
                self.token_cache.insert(hash, (caller.clone(), epoch));
                Ok(caller)
            }
            Some(_) => Err(ApiError::unauthorized(
                "this token has been revoked; ask an admin for a new one",
            )),
            None => Err(ApiError::unauthorized("unknown token")),
        }
    }

    /// The project `name`, if the caller may use it (and write to it when `write`).
    pub async fn project_for(&self, caller: &Caller, name: &str, write: bool) -> Result<ProjectRow, ApiError> {
        let not_found = || ApiError::not_found(format!("project {name} not found"));
        if !caller.admin && caller.project.as_deref() != Some(name) {
            return Err(not_found());
        }
        let project = self
            .store
            .project(name)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(not_found)?;
        if write && !caller.may_write() {
            return Err(ApiError::forbidden(format!(
                "token {} is read-only for project {name}",
                caller.token_id
            )));
        }
        Ok(project)
    }
}
