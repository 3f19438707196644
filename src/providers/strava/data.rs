//! Strava's data API v3 (https://developers.strava.com/docs/reference/): activities listed by
//! time range, each fetched in detail (only the detail carries `calories` and `device_name`).

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use serde_json::Value;
use url::Url;

use super::{mapping, Strava, StravaEvent};
use crate::fhir::{MapContext, MapError, ResourceDraft};
use crate::providers::data::{
    header, pair, DataApi, DataError, DataSource, EventAction, Item, ObjectRef, Page, TimeRange,
};
use crate::store::sync::RateWindow;

/// Activities per listing page (Strava allows up to 200).
const PER_PAGE: usize = 100;
const DAY_MS: i64 = 86_400_000;

fn activity(id: String) -> ObjectRef {
    ObjectRef { kind: "activity".into(), id, url: None }
}

#[async_trait]
impl DataSource for Strava {
    fn streams(&self) -> &'static [&'static str] {
        &["activities"]
    }

    async fn list(
        &self,
        api: &DataApi<'_>,
        _stream: &str,
        range: TimeRange,
        cursor: Option<&Value>,
    ) -> Result<Page, DataError> {
        let page = cursor.and_then(Value::as_u64).unwrap_or(1);
        let query = [
            ("after", (range.from / 1000).to_string()),
            ("before", (range.to / 1000).to_string()),
            ("page", page.to_string()),
            ("per_page", PER_PAGE.to_string()),
        ];
        let answer = api.get_json(&api.url("athlete/activities"), &query).await?.unwrap_or(Value::Array(vec![]));
        let listed = answer.as_array().ok_or(DataError::BadAnswer("activity list is not an array"))?;
        let items: Vec<Item> = listed
            .iter()
            .filter_map(|a| crate::providers::id_text(a.get("id")))
            .map(|id| Item { object: activity(id), data: None })
            .collect();
        // Page until a short page, as Strava documents.
        let next = (listed.len() >= PER_PAGE).then(|| Value::from(page + 1));
        Ok(Page { items, next, ..Page::default() })
    }

    async fn fetch(&self, api: &DataApi<'_>, object: &ObjectRef) -> Result<Option<Value>, DataError> {
        if !object.id.bytes().all(|b| b.is_ascii_digit()) || object.id.is_empty() {
            return Err(DataError::Refused("a Strava activity id is a number".into()));
        }
        api.get_json(&api.url(&format!("activities/{}", object.id)), &[]).await
    }

    fn event_action(&self, payload: &Value, _api_base: &Url) -> EventAction {
        let Ok(event) = serde_json::from_value::<StravaEvent>(payload.clone()) else {
            return EventAction::Ignore("not a Strava event".into());
        };
        if event.deauthorizes() {
            return EventAction::Deauthorize;
        }
        if event.object_type != "activity" {
            return EventAction::Ignore(format!("{} events carry no data to sync", event.object_type));
        }
        let object = activity(event.object_id.to_string());
        match event.aspect_type.as_str() {
            "create" | "update" => EventAction::Fetch(object),
            "delete" => EventAction::Delete(object),
            other => EventAction::Ignore(format!("unknown aspect_type {other}")),
        }
    }

    fn map(&self, ctx: &MapContext, _object: &ObjectRef, data: &Value) -> Result<Vec<ResourceDraft>, MapError> {
        mapping::map_activity(ctx, data)
    }

    fn resource_ids(&self, ctx: &MapContext, object: &ObjectRef) -> Vec<(&'static str, String)> {
        mapping::activity_resource_ids(ctx, &object.id)
    }

    /// `X-RateLimit-*` (all requests) and `X-ReadRateLimit-*` (reads), each "15-minute,daily".
    /// The short windows start at :00, :15, :30, :45; the daily one at midnight UTC.
    fn rate_windows(&self, headers: &HeaderMap, now: i64) -> Vec<RateWindow> {
        let short = self.short_window_ms();
        let next = |length: i64| (now / length + 1) * length;
        let mut windows = Vec::new();
        for (prefix, name) in [("x-ratelimit", "overall"), ("x-readratelimit", "read")] {
            let limit = header(headers, &format!("{prefix}-limit")).and_then(pair);
            let usage = header(headers, &format!("{prefix}-usage")).and_then(pair);
            if let (Some((short_limit, daily_limit)), Some((short_used, daily_used))) = (limit, usage) {
                windows.push(RateWindow {
                    name: format!("{name}-short"),
                    limit: short_limit,
                    used: short_used,
                    resets_at: next(short),
                    length_ms: short,
                });
                windows.push(RateWindow {
                    name: format!("{name}-daily"),
                    limit: daily_limit,
                    used: daily_used,
                    resets_at: next(DAY_MS),
                    length_ms: DAY_MS,
                });
            }
        }
        windows
    }
}
