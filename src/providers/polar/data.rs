//! Polar AccessLink v3's non-transactional data endpoints (the transaction model is deprecated
//! since August 2025): exercises, sleep and daily activity.

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use serde_json::Value;
use url::Url;

use super::{mapping, Polar, PolarEvent};
use crate::fhir::{MapContext, MapError, ResourceDraft};
use crate::providers::data::{
    header, is_under, pair, DataApi, DataError, DataSource, EventAction, Item, ObjectRef, Page, TimeRange,
};
use crate::store::sync::RateWindow;

const EXERCISE: &str = "exercise";
const SLEEP: &str = "sleep";
const DAILY_ACTIVITY: &str = "daily_activity";
/// Polar's windows: 15 minutes and 24 hours, each from its first request.
const SHORT_MS: i64 = 15 * 60 * 1000;
const LONG_MS: i64 = 24 * 3600 * 1000;

/// The entries of a listing: an array, or the first array inside an object (`{"nights": […]}`).
fn entries(answer: Option<Value>) -> Vec<Value> {
    match answer {
        Some(Value::Array(items)) => items,
        Some(Value::Object(map)) => map.into_iter().find_map(|(_, v)| v.as_array().cloned()).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn day(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%d").to_string()
}

/// An entry's day: `date`, or the date part of `start_time` (daily summaries carry no `date`).
fn entry_day(entry: &Value) -> Option<String> {
    let text = entry.get("date").or_else(|| entry.get("start_time")).and_then(Value::as_str)?;
    text.get(..10).map(String::from)
}

/// Whether an entry's day is within the range.
fn in_range(entry: &Value, range: TimeRange) -> bool {
    let Some(day_text) = entry_day(entry) else { return false };
    (day(range.from)..=day(range.to)).contains(&day_text)
}

#[async_trait]
impl DataSource for Polar {
    fn streams(&self) -> &'static [&'static str] {
        &["exercises", "sleep", "daily_activity"]
    }

    /// Exercises of the last 30 days, sleep of the last 28; daily activity in ranges of 28 days.
    fn reach_days(&self, stream: &str) -> Option<i64> {
        Some(if stream == "exercises" { 30 } else { 28 })
    }

    async fn list(
        &self,
        api: &DataApi<'_>,
        stream: &str,
        range: TimeRange,
        _cursor: Option<&Value>,
    ) -> Result<Page, DataError> {
        let (kind, answer) = match stream {
            "exercises" => (EXERCISE, api.get_json(&api.url("exercises"), &[]).await?),
            "sleep" => (SLEEP, api.get_json(&api.url("users/sleep"), &[]).await?),
            _ => {
                // At most 28 days a request: the range's last 28 days (reach_days keeps it so).
                let from = range.from.max(range.to - 27 * 86_400_000);
                let query = [("from", day(from)), ("to", day(range.to))];
                (DAILY_ACTIVITY, api.get_json(&api.url("users/activities"), &query).await?)
            }
        };
        let items = entries(answer)
            .into_iter()
            .filter(|entry| in_range(entry, range))
            .filter_map(|entry| {
                let id = match kind {
                    EXERCISE => crate::providers::id_text(entry.get("id"))?,
                    _ => entry_day(&entry)?,
                };
                Some(Item { object: ObjectRef { kind: kind.into(), id, url: None }, data: Some(entry) })
            })
            .collect();
        Ok(Page { items, next: None, ..Page::default() })
    }

    async fn fetch(&self, api: &DataApi<'_>, object: &ObjectRef) -> Result<Option<Value>, DataError> {
        let safe = |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let url = match (&object.url, object.kind.as_str()) {
            (Some(url), _) => url.clone(),
            (None, _) if !safe(&object.id) => return Err(DataError::Refused("unexpected Polar id".into())),
            (None, EXERCISE) => api.url(&format!("exercises/{}", object.id)),
            (None, SLEEP) => api.url(&format!("users/sleep/{}", object.id)),
            (None, _) => api.url(&format!("users/activities/{}", object.id)),
        };
        api.get_json(&url, &[]).await
    }

    fn event_action(&self, payload: &Value, api_base: &Url) -> EventAction {
        let Ok(event) = serde_json::from_value::<PolarEvent>(payload.clone()) else {
            return EventAction::Ignore("not a Polar event".into());
        };
        let kind = match event.event.as_str() {
            "EXERCISE" => EXERCISE,
            "SLEEP" => SLEEP,
            "ACTIVITY_SUMMARY" => DAILY_ACTIVITY,
            other => return EventAction::Ignore(format!("{other} events are not synced")),
        };
        let id = if kind == EXERCISE { event.entity_id.clone() } else { payload_date(payload) };
        let Some(id) = id.filter(|id| !id.is_empty()) else {
            return EventAction::Ignore("the event names no object".into());
        };
        if let Some(url) = &event.url {
            // Never follow a webhook's URL to another host (or outside the API).
            if !is_under(url, api_base) {
                return EventAction::Ignore("the event's url is outside the configured Polar API base".into());
            }
        }
        EventAction::Fetch(ObjectRef { kind: kind.into(), id, url: event.url })
    }

    fn map(&self, ctx: &MapContext, object: &ObjectRef, data: &Value) -> Result<Vec<ResourceDraft>, MapError> {
        match object.kind.as_str() {
            EXERCISE => mapping::map_exercise(ctx, data),
            SLEEP => mapping::map_sleep(ctx, data),
            _ => mapping::map_daily_activity(ctx, data),
        }
    }

    /// Polar sends no deletes.
    fn resource_ids(&self, _ctx: &MapContext, _object: &ObjectRef) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// `RateLimit-Usage`, `RateLimit-Limit`, `RateLimit-Reset` (seconds), each "short,long".
    fn rate_windows(&self, headers: &HeaderMap, now: i64) -> Vec<RateWindow> {
        let (Some(used), Some(limit), Some(reset)) = (
            header(headers, "ratelimit-usage").and_then(pair),
            header(headers, "ratelimit-limit").and_then(pair),
            header(headers, "ratelimit-reset").and_then(pair),
        ) else {
            return Vec::new();
        };
        vec![
            RateWindow {
                name: "short".into(),
                limit: limit.0,
                used: used.0,
                resets_at: now + reset.0 * 1000,
                length_ms: SHORT_MS,
            },
            RateWindow {
                name: "long".into(),
                limit: limit.1,
                used: used.1,
                resets_at: now + reset.1 * 1000,
                length_ms: LONG_MS,
            },
        ]
    }
}

fn payload_date(payload: &Value) -> Option<String> {
    payload.get("date").and_then(Value::as_str).map(String::from)
}
