//! Outbound events to the platform, as Standard Webhooks (standardwebhooks.com): the events
//! Wearlink emits, the platform's endpoints, signing and delivery. An event is written with the
//! change that caused it (one `store::outbound::emit_in` in that change's transaction) and
//! delivered by jobs of the one queue, from any instance, retried on a schedule.

use serde_json::{json, Value};

use crate::store::outbound::OutboundEvent;
use crate::store::ConnectionRecord;

mod deliver;
pub mod endpoints;
pub mod sign;
pub mod target;

pub use deliver::{deliver, Outcomes};

pub const CONNECTION_CREATED: &str = "connection.created";
pub const CONNECTION_UPDATED: &str = "connection.updated";
pub const CONNECTION_ERROR: &str = "connection.error";
pub const CONNECTION_REVOKED: &str = "connection.revoked";
pub const DATA_SYNCED: &str = "data.synced";
pub const BACKFILL_COMPLETED: &str = "backfill.completed";
pub const ENDPOINT_TEST: &str = "webhook-endpoint.test";

/// Every event type, as endpoints subscribe to them.
pub const TYPES: &[&str] = &[
    CONNECTION_CREATED,
    CONNECTION_UPDATED,
    CONNECTION_ERROR,
    CONNECTION_REVOKED,
    DATA_SYNCED,
    BACKFILL_COMPLETED,
    ENDPOINT_TEST,
];

/// An event of `event_type` with `data`: `{"type", "timestamp", "data"}`. Never token material.
pub fn event(project_id: &str, event_type: &str, data: Value, now: i64) -> OutboundEvent {
    let body = json!({ "type": event_type, "timestamp": crate::time::to_rfc3339(now), "data": data });
    OutboundEvent {
        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        project_id: project_id.into(),
        event_type: event_type.into(),
        body: body.to_string(),
        created_at: now,
    }
}

/// `connection.*`: `{projectId, patientId, provider, endpointId, status, reason?}`.
pub fn connection_event(event_type: &str, c: &ConnectionRecord, reason: Option<&str>, now: i64) -> OutboundEvent {
    let mut data = json!({
        "projectId": c.project_id,
        "patientId": c.patient_id,
        "provider": c.provider,
        "endpointId": c.endpoint_id,
        "status": c.status,
    });
    if let Some(reason) = reason {
        data["reason"] = json!(reason);
    }
    event(&c.project_id, event_type, data, now)
}

/// What synced data came through: the connection.
#[derive(Clone, Debug)]
pub struct SyncSource {
    pub project_id: String,
    pub patient_id: String,
    pub provider: String,
    pub endpoint_id: String,
}

impl From<&crate::fhir::MapContext> for SyncSource {
    fn from(ctx: &crate::fhir::MapContext) -> Self {
        Self {
            project_id: ctx.project_id.clone(),
            patient_id: ctx.patient_id.clone(),
            provider: ctx.provider.clone(),
            endpoint_id: ctx.endpoint_id.clone(),
        }
    }
}

impl SyncSource {
    fn data(&self) -> Value {
        json!({
            "projectId": self.project_id,
            "patientId": self.patient_id,
            "provider": self.provider,
            "endpointId": self.endpoint_id,
        })
    }

    /// `data.synced` with the resources (`Type/id`) that were created or changed.
    pub fn data_synced(&self, references: &[String], now: i64) -> OutboundEvent {
        let mut data = self.data();
        data["resources"] = references
            .iter()
            .map(|r| json!({ "reference": r, "resourceType": r.split('/').next().unwrap_or_default() }))
            .collect();
        event(&self.project_id, DATA_SYNCED, data, now)
    }

    /// `backfill.completed` for the range `[from, to)` (epoch ms) and the objects it went through.
    pub fn backfill_completed(&self, from: i64, to: i64, objects: i64, now: i64) -> OutboundEvent {
        let mut data = self.data();
        data["from"] = json!(crate::time::to_rfc3339(from));
        data["to"] = json!(crate::time::to_rfc3339(to));
        data["objects"] = json!(objects);
        event(&self.project_id, BACKFILL_COMPLETED, data, now)
    }
}

/// Where and how events are delivered; from config.
#[derive(Clone, Debug)]
pub struct OutboundPolicy {
    /// `http://` to loopback addresses (development and tests; off by default).
    pub allow_loopback: bool,
    /// Networks an operator allows despite being private (the platform's internal range).
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// How long one delivery attempt may take.
    pub timeout: std::time::Duration,
    /// The waits before the 2nd, 3rd, … attempt (each ±10 %); after the last, the delivery fails.
    pub schedule: Vec<std::time::Duration>,
    /// How long the previous secret keeps signing after a rotation.
    pub secret_overlap: std::time::Duration,
    /// An endpoint whose deliveries all failed for this long is disabled.
    pub disable_after: std::time::Duration,
    /// Deliveries in flight at once per instance (the worker's delivery lane; 0: none here).
    pub concurrency: usize,
}

/// 5 s, 5 min, 30 min, 2 h, 5 h, 8 h, 8 h: eight attempts over about 24 hours.
pub const DEFAULT_SCHEDULE_SECS: &[u64] = &[5, 300, 1800, 7200, 18000, 28800, 28800];

impl Default for OutboundPolicy {
    fn default() -> Self {
        Self {
            allow_loopback: false,
            allow_cidrs: Vec::new(),
            timeout: std::time::Duration::from_secs(10),
            schedule: DEFAULT_SCHEDULE_SECS.iter().map(|s| std::time::Duration::from_secs(*s)).collect(),
            secret_overlap: std::time::Duration::from_secs(24 * 3600),
            disable_after: std::time::Duration::from_secs(5 * 24 * 3600),
            concurrency: 32,
        }
    }
}

impl OutboundPolicy {
    pub fn targets(&self) -> target::TargetPolicy {
        target::TargetPolicy { allow_loopback: self.allow_loopback, allow_cidrs: self.allow_cidrs.clone() }
    }
}

/// The client deliveries go out with: no redirects (a 3xx is a failed attempt, never followed to
/// another host), the policy's timeout, and the target policy's resolver.
pub fn http_client(policy: &OutboundPolicy) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // The resolver checks every address it hands out (no proxy: it must see the target's name).
        .dns_resolver(policy.targets().resolver())
        .no_proxy()
        .connect_timeout(policy.timeout)
        .timeout(policy.timeout)
        .user_agent(concat!("wearlink/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client configuration is valid")
}
