//! Oura API v2's user collections (https://cloud.ouraring.com/v2/docs): listed by day with
//! `start_date` / `end_date` and paged with `next_token` (`{data: […], next_token}`); each
//! document fetched by id at `/v2/usercollection/{type}/{id}`, as webhooks name it.

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use serde_json::Value;
use url::Url;

use super::mapping::{self, DAILY_ACTIVITY, DAILY_SPO2, SLEEP, WORKOUT};
use super::{Oura, OuraEvent};
use crate::fhir::{MapContext, MapError, ResourceDraft};
use crate::providers::data::{header, DataApi, DataError, DataSource, EventAction, Item, ObjectRef, Page, TimeRange};
use crate::store::sync::RateWindow;

const STREAMS: &[&str] = &[WORKOUT, SLEEP, DAILY_ACTIVITY, DAILY_SPO2];
const DAY_MS: i64 = 86_400_000;
/// Oura's documented limit is 5000 requests per 5 minutes (429 beyond it, `Retry-After`).
const WINDOW_MS: i64 = 5 * 60 * 1000;

fn day(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%d").to_string()
}

fn collection(kind: &str) -> Option<&'static str> {
    STREAMS.iter().copied().find(|s| *s == kind)
}

#[async_trait]
impl DataSource for Oura {
    fn streams(&self) -> &'static [&'static str] {
        STREAMS
    }

    async fn list(
        &self,
        api: &DataApi<'_>,
        stream: &str,
        range: TimeRange,
        cursor: Option<&Value>,
    ) -> Result<Page, DataError> {
        let kind = collection(stream).ok_or_else(|| DataError::Refused(format!("unknown Oura stream {stream}")))?;
        // Days, not instants: the day after `to` too, so a night or workout of the last day is
        // in (Oura's `end_date` bounds by `day`; a re-listed document is the same resource).
        let mut query = vec![("start_date", day(range.from)), ("end_date", day(range.to + DAY_MS))];
        if let Some(token) = cursor.and_then(Value::as_str) {
            query.push(("next_token", token.to_string()));
        }
        let answer = api.get_json(&api.url(&format!("v2/usercollection/{kind}")), &query).await?;
        let Some(answer) = answer else { return Ok(Page::default()) };
        let documents = answer.get("data").and_then(Value::as_array).ok_or(DataError::BadAnswer("no data array"))?;
        let items = documents
            .iter()
            .filter_map(|doc| {
                let id = doc.get("id").and_then(Value::as_str).filter(|id| mapping::valid_id(id))?;
                Some(Item {
                    object: ObjectRef { kind: kind.into(), id: id.into(), url: None },
                    data: Some(doc.clone()),
                })
            })
            .collect();
        let next = answer.get("next_token").and_then(Value::as_str).filter(|t| !t.is_empty()).map(Value::from);
        Ok(Page { items, next, ..Page::default() })
    }

    async fn fetch(&self, api: &DataApi<'_>, object: &ObjectRef) -> Result<Option<Value>, DataError> {
        let kind = collection(&object.kind).ok_or_else(|| DataError::Refused("unknown Oura collection".into()))?;
        if !mapping::valid_id(&object.id) {
            return Err(DataError::Refused("unexpected Oura document id".into()));
        }
        api.get_json(&api.url(&format!("v2/usercollection/{kind}/{}", object.id)), &[]).await
    }

    /// `create` / `update` → fetch `/v2/usercollection/{data_type}/{object_id}`; `delete` → the
    /// resources the document wrote become `entered-in-error`.
    fn event_action(&self, payload: &Value, _api_base: &Url) -> EventAction {
        let Ok(event) = serde_json::from_value::<OuraEvent>(payload.clone()) else {
            return EventAction::Ignore("not an Oura event".into());
        };
        let Some(kind) = collection(&event.data_type) else {
            return EventAction::Ignore(format!("{} events are not synced", event.data_type));
        };
        let Some(id) = event.object_id.filter(|id| mapping::valid_id(id)) else {
            return EventAction::Ignore("the event names no valid object_id".into());
        };
        let object = ObjectRef { kind: kind.into(), id, url: None };
        match event.event_type.as_str() {
            "create" | "update" => EventAction::Fetch(object),
            "delete" => EventAction::Delete(object),
            other => EventAction::Ignore(format!("unknown event_type {other}")),
        }
    }

    fn map(&self, ctx: &MapContext, object: &ObjectRef, data: &Value) -> Result<Vec<ResourceDraft>, MapError> {
        mapping::map(ctx, &object.kind, data)
    }

    fn resource_ids(&self, ctx: &MapContext, object: &ObjectRef) -> Vec<(&'static str, String)> {
        mapping::resource_ids(ctx, &object.kind, &object.id)
    }

    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds to go, or an epoch second), when
    /// Oura sends them (spec ✔ names them; their exact values are not documented).
    fn rate_windows(&self, headers: &HeaderMap, now: i64) -> Vec<RateWindow> {
        let read = |name: &str| header(headers, name).and_then(|v| v.trim().parse::<i64>().ok());
        let (Some(limit), Some(remaining)) = (read("x-ratelimit-limit"), read("x-ratelimit-remaining")) else {
            return Vec::new();
        };
        let resets_at = match read("x-ratelimit-reset") {
            Some(epoch) if epoch > 1_000_000_000 => epoch * 1000,
            Some(seconds) if seconds >= 0 => now + seconds * 1000,
            _ => now + WINDOW_MS,
        };
        vec![RateWindow {
            name: "requests".into(),
            limit,
            used: (limit - remaining).max(0),
            resets_at,
            length_ms: WINDOW_MS,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Url {
        Url::parse("https://api.ouraring.com").unwrap()
    }

    #[test]
    fn events_fetch_or_delete_the_named_document() {
        let oura = Oura::new(None);
        let event = |event_type: &str, data_type: &str, id: &str| {
            json!({"event_type": event_type, "data_type": data_type, "object_id": id,
                   "event_time": "2024-01-15T08:00:00+00:00", "user_id": "u1"})
        };
        let object = |kind: &str, id: &str| ObjectRef { kind: kind.into(), id: id.into(), url: None };
        assert_eq!(
            oura.event_action(&event("create", "sleep", "abc-123"), &base()),
            EventAction::Fetch(object("sleep", "abc-123"))
        );
        assert_eq!(
            oura.event_action(&event("update", "workout", "w1"), &base()),
            EventAction::Fetch(object("workout", "w1"))
        );
        assert_eq!(
            oura.event_action(&event("delete", "workout", "w1"), &base()),
            EventAction::Delete(object("workout", "w1"))
        );
        assert_eq!(
            oura.event_action(&event("create", "daily_spo2", "s1"), &base()),
            EventAction::Fetch(object("daily_spo2", "s1"))
        );
        for ignored in [
            event("create", "tag", "t1"),
            event("create", "sleep", "../x"),
            event("touch", "sleep", "a"),
            json!({"x": 1}),
        ] {
            assert!(matches!(oura.event_action(&ignored, &base()), EventAction::Ignore(_)), "{ignored}");
        }
    }

    #[test]
    fn rate_limit_headers_become_a_window() {
        let oura = Oura::new(None);
        let mut headers = HeaderMap::new();
        assert!(oura.rate_windows(&headers, 0).is_empty());
        headers.insert("x-ratelimit-limit", "5000".parse().unwrap());
        headers.insert("x-ratelimit-remaining", "4990".parse().unwrap());
        headers.insert("x-ratelimit-reset", "120".parse().unwrap());
        let windows = oura.rate_windows(&headers, 1_000);
        assert_eq!(windows.len(), 1);
        assert_eq!((windows[0].limit, windows[0].used, windows[0].resets_at), (5000, 10, 121_000));
    }
}
