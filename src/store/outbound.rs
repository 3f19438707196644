//! Storage of outbound events: the platform's webhook endpoints, the events (written in the
//! transaction of the change that caused them) and their deliveries. Implemented for both backends
//! by `sql_outbound.rs`.

use async_trait::async_trait;

use super::sync::JobOutcome;
use super::StoreResult;
use crate::crypto::Sealed;

/// An event for the platform, ready to send: `body` is the exact JSON every delivery carries.
#[derive(Clone, Debug)]
pub struct OutboundEvent {
    /// Also the `webhook-id` of every delivery.
    pub id: String,
    pub project_id: String,
    pub event_type: String,
    pub body: String,
    pub created_at: i64,
}

#[derive(Clone, Debug)]
pub struct EndpointRecord {
    pub id: String,
    pub project_id: String,
    pub url: String,
    pub description: Option<String>,
    /// `None`: every event type.
    pub events: Option<Vec<String>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secret: Sealed,
    /// The secret before the last rotation, and until when it still signs.
    pub previous_secret: Option<(Sealed, i64)>,
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Debug)]
pub struct DeliveryRecord {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    pub project_id: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// What one attempt changed.
#[derive(Clone, Debug)]
pub struct AttemptResult {
    pub job: JobOutcome,
    pub state: String,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub next_attempt_at: Option<i64>,
    pub at: i64,
    /// The endpoint failed (it starts or continues failing) or succeeded (it stops).
    pub endpoint_failed: bool,
    /// Disable the endpoint with this reason (it failed for too long).
    pub disable: Option<String>,
}

/// One attempt to record (`OutboundStore::record_attempts`).
#[derive(Clone, Debug)]
pub struct AttemptWrite {
    /// The owner of the lease the attempt ran under: its completion is fenced on it.
    pub lease_owner: String,
    pub job_id: String,
    pub delivery_id: String,
    pub endpoint_id: String,
    pub result: AttemptResult,
}

#[async_trait]
pub trait OutboundStore: Send + Sync {
    async fn create_endpoint(&self, endpoint: &EndpointRecord) -> StoreResult<()>;
    async fn list_endpoints(&self, project_id: &str) -> StoreResult<Vec<EndpointRecord>>;
    async fn find_endpoint(&self, project_id: &str, id: &str) -> StoreResult<Option<EndpointRecord>>;
    /// Writes every field of an existing endpoint; false when it is gone.
    async fn update_endpoint(&self, endpoint: &EndpointRecord) -> StoreResult<bool>;
    /// Deletes it and drops its queued deliveries; false when there was none.
    async fn delete_endpoint(&self, project_id: &str, id: &str) -> StoreResult<bool>;
    /// Stores an event and queues a delivery to each enabled endpoint of its project subscribed to
    /// its type (or to `only_endpoint`), in one transaction.
    async fn emit(&self, event: &OutboundEvent, only_endpoint: Option<&str>) -> StoreResult<()>;
    /// The delivery, its event's body and its endpoint.
    async fn load_delivery(&self, id: &str) -> StoreResult<Option<(DeliveryRecord, String, EndpointRecord)>>;
    /// Records attempts with their jobs' completions, in one transaction, each fenced on its own
    /// lease's owner; answers per attempt whether it was recorded (false: that lease was lost and
    /// nothing of that attempt was written).
    async fn record_attempts(&self, attempts: &[AttemptWrite]) -> StoreResult<Vec<bool>>;
    async fn list_deliveries(
        &self,
        project_id: &str,
        endpoint_id: &str,
        state: Option<&str>,
    ) -> StoreResult<Vec<DeliveryRecord>>;
    /// Puts a delivery of the project back in the queue, due now; false when there is none.
    async fn retry_delivery(&self, project_id: &str, id: &str, now: i64) -> StoreResult<bool>;
}
