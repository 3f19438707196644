//! Dexcom API v3's data endpoints (https://developer.dexcom.com/docs/dexcom/endpoints):
//! `GET /v3/users/self/dataRange` (first and last record time per type), then `egvs` and
//! `events` with `startDate`/`endDate` (`YYYY-MM-DDThh:mm:ss`, UTC) over at most 30 days — a
//! longer range is answered 400. Answers `{recordType, recordVersion, userId, records}`, no
//! paging. Dexcom sends no rate-limit headers (60,000 calls per app per hour, then 429).
//!
//! A stream's first page is the `dataRange` call (it bounds the walk to where there is data);
//! every later page is one window: a day of EGVs, 30 days of events. Each call is one page, so the sync stage
//! counts every request against the budget.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use url::Url;

use super::{mapping, Dexcom};
use crate::fhir::{MapContext, MapError, ResourceDraft};
use crate::providers::data::{DataApi, DataError, DataSource, EventAction, Item, ObjectRef, Page, TimeRange};
use crate::store::sync::RateWindow;

const EGV: &str = "egv";
const EVENT: &str = "event";
const DEVICE: &str = "device";
/// Dexcom's longest range per request.
pub const MAX_WINDOW_MS: i64 = 30 * 86_400_000;
/// EGVs are read a day at a time (288 readings): a 30-day window is 8,640 readings held at once
/// per job, and eight jobs of those took 1.3 GB (bench/sync.sh). A day a call is still far
/// inside the budget (about 35 calls for a patient's 30 days; 60,000 an hour per app).
const EGV_WINDOW_MS: i64 = 86_400_000;
/// Tidepool polls Dexcom every 120 min ± 15 (shared/spec/providers.md).
const POLL_EVERY: Duration = Duration::from_secs(2 * 3600);
const POLL_JITTER: Duration = Duration::from_secs(15 * 60);
/// Data arrives about 1 h late in the US, 3 h elsewhere: each poll re-reads twice that.
const POLL_OVERLAP: Duration = Duration::from_secs(6 * 3600);

/// (stream, record kind, dataRange key, window). Events are sparse: Dexcom's whole 30 days.
const STREAMS: [(&str, &str, &str, i64); 2] =
    [("egvs", EGV, "egvs", EGV_WINDOW_MS), ("events", EVENT, "events", MAX_WINDOW_MS)];

/// Dexcom's date parameter: UTC wall time to the second, no zone.
fn dexcom_date(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// The epoch ms of `{start|end: {systemTime}}` in a dataRange answer.
fn range_bound(range: &Value, which: &str) -> Option<i64> {
    let text = range.get(which)?.get("systemTime")?.as_str()?;
    mapping::system_time(text).map(|t| t.timestamp_millis())
}

#[async_trait]
impl DataSource for Dexcom {
    fn streams(&self) -> &'static [&'static str] {
        &["egvs", "events"]
    }

    async fn list(
        &self,
        api: &DataApi<'_>,
        stream: &str,
        range: TimeRange,
        cursor: Option<&Value>,
    ) -> Result<Page, DataError> {
        let Some((path, kind, range_key, window)) = STREAMS.iter().find(|(s, _, _, _)| *s == stream).copied() else {
            return Err(DataError::Refused(format!("no Dexcom stream {stream}")));
        };
        let Some(cursor) = cursor else {
            // Where the data is: the walk covers the asked range within it.
            let answer = api.get_json(&api.url("users/self/dataRange"), &[]).await?.unwrap_or(Value::Null);
            let Some(known) = answer.get(range_key) else {
                return Ok(Page::default());
            };
            let (Some(first), Some(last)) = (range_bound(known, "start"), range_bound(known, "end")) else {
                return Ok(Page::default());
            };
            let (from, to) = (range.from.max(first), range.to.min(last + 1000));
            let next = (from < to).then(|| json!({ "at": from, "to": to }));
            return Ok(Page { items: Vec::new(), next, ..Page::default() });
        };
        let (Some(at), Some(to)) = (cursor.get("at").and_then(Value::as_i64), cursor.get("to").and_then(Value::as_i64))
        else {
            return Err(DataError::Refused("not a Dexcom window".into()));
        };
        let end = to.min(at + window.min(MAX_WINDOW_MS));
        let query = [("startDate", dexcom_date(at)), ("endDate", dexcom_date(end))];
        let answer = api.get_json(&api.url(&format!("users/self/{path}")), &query).await?.unwrap_or(Value::Null);
        let records = match answer.get("records") {
            Some(Value::Array(records)) => records,
            None if answer.is_null() => &Vec::new(),
            _ => return Err(DataError::BadAnswer("Dexcom answer without records")),
        };
        let mut items = Vec::with_capacity(records.len() + 1);
        // The transmitters of this window first: their Devices exist before readings name them.
        let mut transmitters: Vec<&str> = Vec::new();
        for record in records {
            if let Some(id) = mapping::transmitter_id(record) {
                if !transmitters.contains(&id) {
                    transmitters.push(id);
                    items.push(Item {
                        object: ObjectRef { kind: DEVICE.into(), id: id.to_string(), url: None },
                        data: Some(record.clone()),
                    });
                }
            }
        }
        items.extend(records.iter().filter_map(|record| {
            let id = mapping::record_id(record)?;
            Some(Item { object: ObjectRef { kind: kind.into(), id, url: None }, data: Some(record.clone()) })
        }));
        let next = (end < to).then(|| json!({ "at": end, "to": to }));
        Ok(Page { items, next, ..Page::default() })
    }

    /// Dexcom has no single-record endpoint; every listing carries its records whole.
    async fn fetch(&self, _api: &DataApi<'_>, _object: &ObjectRef) -> Result<Option<Value>, DataError> {
        Err(DataError::Refused("Dexcom serves records only in ranges".into()))
    }

    fn event_action(&self, _payload: &Value, _api_base: &Url) -> EventAction {
        EventAction::Ignore("Dexcom sends no webhooks".into())
    }

    fn map(&self, ctx: &MapContext, object: &ObjectRef, data: &Value) -> Result<Vec<ResourceDraft>, MapError> {
        match object.kind.as_str() {
            EGV => mapping::map_egv(ctx, data).map(|d| vec![d]),
            EVENT => mapping::map_event(ctx, data),
            DEVICE => mapping::map_device(ctx, data).map(|d| vec![d]),
            other => Err(MapError(format!("unknown Dexcom object kind {other}"))),
        }
    }

    fn resource_ids(&self, ctx: &MapContext, object: &ObjectRef) -> Vec<(&'static str, String)> {
        match object.kind.as_str() {
            EGV => {
                vec![("Observation", ctx.id_for("Observation", mapping::EGV_SYSTEM, &mapping::keyed(ctx, &object.id)))]
            }
            EVENT => {
                vec![(
                    "Observation",
                    ctx.id_for("Observation", mapping::EVENT_SYSTEM, &mapping::keyed(ctx, &object.id)),
                )]
            }
            _ => Vec::new(),
        }
    }

    /// Dexcom sends no rate-limit headers; a 429 parks the work (session) until it passes.
    fn rate_windows(&self, _headers: &HeaderMap, _now: i64) -> Vec<RateWindow> {
        Vec::new()
    }

    fn poll_every(&self) -> Option<(Duration, Duration)> {
        Some((POLL_EVERY, POLL_JITTER))
    }

    fn poll_overlap(&self) -> Duration {
        POLL_OVERLAP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_wall_time_to_the_second() {
        assert_eq!(dexcom_date(1_738_833_155_999), "2025-02-06T09:12:35");
        let range = json!({"start": {"systemTime": "2025-02-06T09:12:35", "displayTime": "2025-02-06T01:12:35"}});
        assert_eq!(range_bound(&range, "start"), Some(1_738_833_155_000));
        assert_eq!(range_bound(&range, "end"), None);
    }
}
