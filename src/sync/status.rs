//! What the platform sees of sync per connection, and resyncs it asks for. The state is derived
//! (from the queued jobs, the progress row and the rate-limit budget), never stored twice.

use std::collections::HashMap;

use serde::Serialize;

use super::{resync_job, BACKFILL, WEBHOOK_EVENT};
use crate::error::{Error, Result};
use crate::projects::Principal;
use crate::store::ConnectionRecord;
use crate::time::now_ms;
use crate::Services;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillView {
    /// Start of the range (epoch ms).
    pub from: Option<i64>,
    /// Objects done so far.
    pub done: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncView {
    /// `idle`, `backfilling`, `syncing`, `paused` (rate limited) or `error`.
    pub state: &'static str,
    pub backfill: BackfillView,
    pub last_synced_at: Option<i64>,
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limited_until: Option<i64>,
}

/// The sync view of each of the project's connections, by Endpoint id.
pub async fn views(
    services: &Services,
    project_id: &str,
    connections: &[ConnectionRecord],
) -> Result<HashMap<String, SyncView>> {
    let now = now_ms();
    let progress: HashMap<String, _> =
        services.store.list_sync_status(project_id).await?.into_iter().map(|s| (s.endpoint_id.clone(), s)).collect();
    let mut jobs: HashMap<(String, String), i64> = HashMap::new();
    for (endpoint, kind, n) in services.store.count_jobs(project_id).await? {
        jobs.insert((endpoint, kind), n);
    }
    let limited: HashMap<String, i64> = services
        .store
        .rate_limited(project_id, services.config.sync.background_share_percent, now)
        .await?
        .into_iter()
        .collect();
    let mut views = HashMap::new();
    for c in connections {
        let p = progress.get(&c.endpoint_id).cloned().unwrap_or_default();
        let has = |kind: &str| jobs.get(&(c.endpoint_id.clone(), kind.to_string())).is_some_and(|n| *n > 0);
        let rate_limited_until = limited.get(&c.provider).copied();
        let state = if c.status == "error" {
            "error"
        } else if c.status != "active" {
            "idle"
        } else if rate_limited_until.is_some() && (has(BACKFILL) || has(WEBHOOK_EVENT)) {
            "paused"
        } else if has(BACKFILL) {
            "backfilling"
        } else if has(WEBHOOK_EVENT) {
            "syncing"
        } else if p.last_error.is_some() {
            "error"
        } else {
            "idle"
        };
        let last_error = if c.status == "error" { c.last_error.clone().or(p.last_error) } else { p.last_error };
        views.insert(
            c.endpoint_id.clone(),
            SyncView {
                state,
                backfill: BackfillView { from: p.backfill_from, done: p.backfill_done, total: p.backfill_total },
                last_synced_at: p.last_synced_at,
                last_error,
                rate_limited_until,
            },
        );
    }
    Ok(views)
}

/// Queues a resync of `[from, to)` (default: the project's backfill days up to now). Idempotent:
/// unchanged data keeps its versions. Answers the range.
pub async fn request_resync(
    services: &Services,
    principal: &Principal,
    endpoint_id: &str,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<(i64, i64)> {
    principal.require_admin()?;
    let c = services
        .store
        .find_connection_by_endpoint(endpoint_id)
        .await?
        .filter(|c| c.project_id == principal.project_id)
        .ok_or_else(|| Error::NotFound(format!("connection {endpoint_id}")))?;
    if c.status != "active" {
        return Err(Error::Conflict(format!("the connection is {}; reconnect the patient", c.status)));
    }
    let now = now_ms();
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to - super::backfill::DEFAULT_BACKFILL_DAYS * 86_400_000);
    if from >= to {
        return Err(Error::Invalid("from must be before to".into()));
    }
    if to - from > super::backfill::MAX_BACKFILL_DAYS * 86_400_000 {
        return Err(Error::Invalid(format!("a resync covers at most {} days", super::backfill::MAX_BACKFILL_DAYS)));
    }
    services.store.enqueue_jobs(&[resync_job(&c.project_id, &c.endpoint_id, from, to, now)]).await?;
    services.sync_wake.notify_one();
    Ok((from, to))
}
