//! Storage of hosted connect page sessions (`crate::connect_sessions`). Implemented for both
//! backends by `sql_sessions.rs`.

use async_trait::async_trait;

use super::StoreResult;

#[derive(Clone, Debug)]
pub struct ConnectSessionRecord {
    pub id: String,
    /// SHA-256 of the session token; the token itself is never stored.
    pub token_hash: String,
    pub project_id: String,
    pub patient_id: String,
    pub redirect_uri: Option<String>,
    /// The providers the page may offer; `None`: every one the project has set up.
    pub providers: Option<Vec<String>>,
    pub locale: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    /// When the platform deleted it or the patient pressed "Done".
    pub ended_at: Option<i64>,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn insert_connect_session(&self, session: &ConnectSessionRecord) -> StoreResult<()>;
    async fn find_connect_session_by_token(&self, token_hash: &str) -> StoreResult<Option<ConnectSessionRecord>>;
    async fn find_connect_session(&self, id: &str) -> StoreResult<Option<ConnectSessionRecord>>;
    /// Ends the project's session (first end wins); false when the project has no such session.
    async fn end_connect_session(&self, project_id: &str, id: &str, now: i64) -> StoreResult<bool>;
    /// Deletes sessions that expired or ended before `before`; answers how many.
    async fn delete_connect_sessions_before(&self, before: i64) -> StoreResult<u64>;
    /// The project's display name.
    async fn project_name(&self, project_id: &str) -> StoreResult<Option<String>>;
}
