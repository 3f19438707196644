//! Storage of the FHIR outbox (issue 20): resource versions still to be written into a project's
//! own FHIR server, the switches between the embedded store and the server, and the server's ids
//! of what was written. Rows enter the outbox in the transaction of the resource write itself
//! (`write_resources`, the connection saves); implemented for both backends by `sql_outbox.rs`.

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::Value;

use super::{Lease, StoreResult};

/// The reserved project setting holding the mode (`"embedded"` or `"server"`); the settings API
/// refuses it: only the switch operation writes it.
pub const MODE_SETTING: &str = "FHIR_STORE";
pub const MODE_SERVER: &str = "server";
pub const MODE_EMBEDDED: &str = "embedded";

/// The job kind that drains a project's outbox (one at a time per project: its unique key).
pub const DRAIN_KIND: &str = "fhir_outbox";

pub const PENDING: &str = "pending";
pub const DEAD: &str = "dead";

/// The drain job of a project (the unique key makes it one per project).
pub fn drain_job(project_id: &str, due_at: i64) -> super::sync::NewJob {
    super::sync::NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        kind: DRAIN_KIND.into(),
        project_id: project_id.into(),
        endpoint_id: None,
        unique_key: Some(format!("fhir-outbox:{project_id}")),
        payload: serde_json::json!({}),
        priority: 0,
        due_at,
    }
}

/// One row of the outbox: a version of a resource to write (several pending rows of one resource
/// are written once, with its then-current body).
#[derive(Clone, Debug)]
pub struct OutboxRow {
    pub seq: i64,
    pub project_id: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: i64,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    /// The server's OperationOutcome for a dead letter.
    pub outcome: Option<Value>,
    pub switch_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Which rows a listing wants: one state, after a sequence number (the cursor), at most `limit`.
#[derive(Clone, Debug)]
pub struct OutboxFilter {
    pub state: String,
    pub after: Option<i64>,
    pub limit: i64,
}

/// A resource's current version, as the drain sends it.
#[derive(Clone, Debug)]
pub struct CurrentResource {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub body: Value,
}

/// What one bundle's answer did to its rows, recorded in one transaction.
#[derive(Clone, Debug, Default)]
pub struct DrainResults {
    /// Written (or gone from the store): `(type, id, up to seq)`; its pending rows up to that
    /// sequence number leave the outbox, and so do its older dead letters.
    pub written: Vec<(String, String, i64)>,
    /// The server's id of each resource written, `(type, id, server id)`.
    pub server_ids: Vec<(String, String, String)>,
    /// Tried again later: `(type, id, up to seq, next attempt, error)`.
    pub retry: Vec<(String, String, i64, i64, String)>,
    /// Dead letters: `(type, id, up to seq, error, the server's OperationOutcome)`.
    pub dead: Vec<(String, String, i64, String, Option<Value>)>,
}

/// A switch between the stores, with its progress.
#[derive(Clone, Debug)]
pub struct SwitchRecord {
    pub id: String,
    pub project_id: String,
    pub target: String,
    pub total: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// Rows of the switch still pending, and dead.
    pub pending: i64,
    pub dead: i64,
}

/// What a switch request did.
#[derive(Clone, Debug)]
pub enum SwitchOutcome {
    Started(SwitchRecord),
    /// The project is in that mode already: nothing changed.
    Unchanged,
    /// A switch is still copying: answered 409.
    Busy(SwitchRecord),
}

/// Outbox depth for metrics: `(state, rows, oldest created_at)`, all projects together.
pub type OutboxDepth = Vec<(String, i64, Option<i64>)>;

#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// The project's due pending rows, oldest first, at most `limit`.
    async fn due_outbox(&self, project_id: &str, now: i64, limit: i64) -> StoreResult<Vec<OutboxRow>>;
    /// The current versions of these resources (those still stored).
    async fn current_resources(&self, project_id: &str, refs: &[(String, String)])
        -> StoreResult<Vec<CurrentResource>>;
    /// The server ids learned for these resources on `server`.
    async fn server_ids(
        &self,
        project_id: &str,
        server: &str,
        refs: &[(String, String)],
    ) -> StoreResult<HashMap<(String, String), String>>;
    /// Records a bundle's results while `lease` holds job `job_id` (and extends the lease);
    /// false, recording nothing, when the lease was lost.
    async fn record_outbox(
        &self,
        lease: &Lease,
        job_id: &str,
        project_id: &str,
        server: &str,
        results: &DrainResults,
        now: i64,
    ) -> StoreResult<bool>;
    /// Ends the drain job: done when nothing is pending, else parked until the next row is due
    /// (not before `not_before`: the server's backoff, while it is unavailable). Serialized with
    /// the writers that enqueue (they find the job and add nothing), so no row is left without a job.
    async fn finish_drain(
        &self,
        lease: &Lease,
        job_id: &str,
        project_id: &str,
        now: i64,
        not_before: Option<i64>,
    ) -> StoreResult<bool>;
    async fn list_outbox(&self, project_id: &str, filter: &OutboxFilter) -> StoreResult<Vec<OutboxRow>>;
    /// Puts rows of `state` (one, or all with `seq` `None`) back to pending, due now, and queues
    /// the drain; answers how many.
    async fn replay_outbox(&self, project_id: &str, state: &str, seq: Option<i64>, now: i64) -> StoreResult<u64>;
    async fn outbox_depth(&self) -> StoreResult<OutboxDepth>;
    /// Flips the project's mode to `target`; to the server, queues every current resource of the
    /// project but its Patients (Endpoints first, then Devices and Procedures, then the rest),
    /// all in one transaction with the flip.
    async fn switch_fhir_store(
        &self,
        project_id: &str,
        target: &str,
        switch_id: &str,
        now: i64,
    ) -> StoreResult<SwitchOutcome>;
    /// The project's latest switch with its progress.
    async fn latest_switch(&self, project_id: &str) -> StoreResult<Option<SwitchRecord>>;
}
