//! Google Health API v4 data points (developers.google.com/health/reference/rest/v4/
//! users.dataTypes.dataPoints/list): `GET /v4/users/me/dataTypes/{type}/dataPoints?pageSize=
//! &pageToken=&filter=` → `{dataPoints: [...], nextPageToken}`. Every data point carries its data,
//! so listings need no fetch. Google sends no rate-limit headers; a 429's `Retry-After` is read
//! by `DataApi`.

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use serde_json::Value;
use url::Url;

use super::{mapping, Google, GoogleNotification};
use crate::fhir::{MapContext, MapError, ResourceDraft};
use crate::providers::data::{DataApi, DataError, DataSource, EventAction, Item, ObjectRef, Page, TimeRange};
use crate::store::sync::RateWindow;

pub const EXERCISE: &str = "exercise";
pub const SLEEP: &str = "sleep";
pub const DAILY_RESTING_HEART_RATE: &str = "daily-resting-heart-rate";
pub const DAILY_HRV: &str = "daily-heart-rate-variability";
pub const DAILY_SPO2: &str = "daily-oxygen-saturation";
pub const STEPS: &str = "steps";
pub const DISTANCE: &str = "distance";
pub const TOTAL_CALORIES: &str = "total-calories";
const DAY_MS: i64 = 86_400_000;

/// Sessions: at most 25 a page (Google's limit for exercise and sleep, spec ◐).
const SESSION_PAGE: usize = 25;
/// Daily points: one a day, so a page covers years.
const DAILY_PAGE: usize = 1000;

fn instant(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn day(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%d").to_string()
}

/// The list filter for `range` (AIP-160 syntax; the field is the data type in snake_case:
/// `exercise.interval.start_time >= "2026-11-01T00:00:00Z"`, as the workouts guide lists it).
/// Daily types are filtered on their civil `date` (✖: Google's guides show only interval
/// filters; the day bounds are widened by one so a user ahead of UTC loses no day).
pub fn filter(data_type: &str, range: TimeRange) -> String {
    let field = data_type.replace('-', "_");
    if mapping::daily_type(data_type).is_some() {
        format!(
            "{field}.date >= \"{}\" AND {field}.date <= \"{}\"",
            day(range.from - 86_400_000),
            day(range.to + 86_400_000)
        )
    } else {
        format!(
            "{field}.interval.start_time >= \"{}\" AND {field}.interval.start_time < \"{}\"",
            instant(range.from),
            instant(range.to)
        )
    }
}

/// A data point's object: its type and id (the point's id; a daily point's day).
fn object_of(data_type: &str, point: &Value) -> Option<ObjectRef> {
    let id = match (mapping::daily_type(data_type), mapping::rollup_type(data_type)) {
        (Some(daily), _) => mapping::daily_day(daily, point)?,
        (None, Some(_)) => mapping::rollup_day(point)?.format("%Y-%m-%d").to_string(),
        (None, None) => mapping::point_id(point)?,
    };
    Some(ObjectRef { kind: data_type.to_string(), id, url: None })
}

/// A UTC day as a CivilDateTime (`{date: {year, month, day}}`, midnight).
fn civil(ms: i64) -> Value {
    let d = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default().date_naive();
    serde_json::json!({"date": {"year": chrono::Datelike::year(&d), "month": chrono::Datelike::month(&d), "day": chrono::Datelike::day(&d)}})
}

/// One request of daily totals: `POST /v4/users/me/dataTypes/{type}/dataPoints:dailyRollUp`
/// `{range: {start, end}, windowSizeDays: 1, pageSize, pageToken}` (developers.google.com/health/
/// reference/rest/v4/users.dataTypes.dataPoints/dailyRollUp). The range is whole days,
/// closed-open, at most `max_days` (14 for total-calories, 90 otherwise): a longer range is
/// walked in chunks, the cursor `{chunk: <day ms>, pageToken?}` saying where.
async fn list_rollup(
    api: &DataApi<'_>,
    rollup: &mapping::Rollup,
    range: TimeRange,
    cursor: Option<&Value>,
) -> Result<Page, DataError> {
    let first_day = range.from.div_euclid(DAY_MS) * DAY_MS;
    let last_day = (range.to - 1).div_euclid(DAY_MS) * DAY_MS + DAY_MS;
    let chunk = cursor.and_then(|c| c.get("chunk")).and_then(Value::as_i64).unwrap_or(first_day).max(first_day);
    let chunk_end = (chunk + rollup.max_days * DAY_MS).min(last_day);
    let mut body = serde_json::json!({
        "range": {"start": civil(chunk), "end": civil(chunk_end)},
        "windowSizeDays": 1,
        "pageSize": rollup.max_days
    });
    let token = page_token(cursor.and_then(|c| c.get("pageToken")));
    if let Some(token) = &token {
        body["pageToken"] = Value::String(token.clone());
    }
    let url = api.url(&format!("v4/users/me/dataTypes/{}/dataPoints:dailyRollUp", rollup.data_type));
    let answer = api.post_json(&url, &body).await?.unwrap_or(Value::Null);
    // `rollupDataPoints` ✖ (the response's field name is not in the pages found): else the
    // answer's first array.
    let points = answer
        .get("rollupDataPoints")
        .and_then(Value::as_array)
        .or_else(|| answer.as_object().and_then(|m| m.values().find_map(Value::as_array)))
        .cloned()
        .unwrap_or_default();
    let items = points
        .into_iter()
        .filter_map(|point| Some(Item { object: object_of(rollup.data_type, &point)?, data: Some(point) }))
        .collect();
    let next = match answer.get("nextPageToken").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        Some(t) => Some(serde_json::json!({"chunk": chunk, "pageToken": t})),
        None if chunk_end < last_day => Some(serde_json::json!({"chunk": chunk_end})),
        None => None,
    };
    Ok(Page { items, next, ..Page::default() })
}

fn page_token(cursor: Option<&Value>) -> Option<String> {
    let token = cursor?.as_str()?;
    (!token.is_empty() && token.len() <= 2048).then(|| token.to_string())
}

#[async_trait]
impl DataSource for Google {
    fn streams(&self) -> &'static [&'static str] {
        &[EXERCISE, SLEEP, STEPS, DISTANCE, TOTAL_CALORIES, DAILY_RESTING_HEART_RATE, DAILY_HRV, DAILY_SPO2]
    }

    async fn list(
        &self,
        api: &DataApi<'_>,
        stream: &str,
        range: TimeRange,
        cursor: Option<&Value>,
    ) -> Result<Page, DataError> {
        if !self.streams().contains(&stream) {
            return Err(DataError::Refused(format!("{stream} is not a synced Google data type")));
        }
        if let Some(rollup) = mapping::rollup_type(stream) {
            return list_rollup(api, rollup, range, cursor).await;
        }
        let size = if mapping::daily_type(stream).is_some() { DAILY_PAGE } else { SESSION_PAGE };
        let mut query = vec![("pageSize", size.to_string()), ("filter", filter(stream, range))];
        if let Some(token) = page_token(cursor) {
            query.push(("pageToken", token));
        }
        let url = api.url(&format!("v4/users/me/dataTypes/{stream}/dataPoints"));
        let answer = api.get_json(&url, &query).await?.unwrap_or(Value::Null);
        let points = match answer.get("dataPoints") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(points)) => points.clone(),
            Some(_) => return Err(DataError::BadAnswer("dataPoints is not an array")),
        };
        let items = points
            .into_iter()
            .filter_map(|point| Some(Item { object: object_of(stream, &point)?, data: Some(point) }))
            .collect();
        let next = answer
            .get("nextPageToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(|t| Value::String(t.to_string()));
        Ok(Page { items, next, ..Page::default() })
    }

    /// `GET /v4/users/me/dataTypes/{type}/dataPoints/{id}` (exercise and sleep have `get`); a
    /// daily point is read through a one-day listing.
    async fn fetch(&self, api: &DataApi<'_>, object: &ObjectRef) -> Result<Option<Value>, DataError> {
        let safe = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !self.streams().contains(&object.kind.as_str()) || !safe(&object.id) {
            return Err(DataError::Refused("unexpected Google data point".into()));
        }
        if mapping::daily_type(&object.kind).is_none() && mapping::rollup_type(&object.kind).is_none() {
            let url = api.url(&format!("v4/users/me/dataTypes/{}/dataPoints/{}", object.kind, object.id));
            return api.get_json(&url, &[]).await;
        }
        let Ok(date) = chrono::NaiveDate::parse_from_str(&object.id, "%Y-%m-%d") else {
            return Err(DataError::Refused("a daily Google point is named by its day".into()));
        };
        let from = date.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis();
        let page = self.list(api, &object.kind, TimeRange { from, to: from + 86_400_000 }, None).await?;
        Ok(page.items.into_iter().find(|i| i.object.id == object.id).and_then(|i| i.data))
    }

    /// UPSERT → re-read the notification's intervals of that data type. DELETE → ignored: Google
    /// names only an interval, not the data points that went, and a re-read of it finds nothing
    /// to write (nor any id to mark `entered-in-error`); what was written stays, as after any
    /// provider-side deletion Wearlink cannot attribute.
    fn event_action(&self, payload: &Value, _api_base: &Url) -> EventAction {
        let Ok(n) = GoogleNotification::parse(payload.to_string().as_bytes()) else {
            return EventAction::Ignore("not a Google Health notification".into());
        };
        if !self.streams().contains(&n.data_type.as_str()) {
            return EventAction::Ignore(format!("{} data is not synced", n.data_type));
        }
        match n.operation.as_str() {
            "UPSERT" => {}
            "DELETE" => {
                return EventAction::Ignore(
                    "Google's DELETE names an interval, not the data points: nothing to re-read or mark".into(),
                )
            }
            other => return EventAction::Ignore(format!("unknown operation {other}")),
        }
        let bounds: Vec<(i64, i64)> = n
            .intervals
            .iter()
            .filter_map(|i| {
                let start = crate::fhir::activity::parse_instant(&i.physical_time_interval.start_time)?;
                let end = crate::fhir::activity::parse_instant(&i.physical_time_interval.end_time)?;
                Some((start.timestamp_millis(), end.timestamp_millis()))
            })
            .filter(|(s, e)| e >= s)
            .collect();
        let (Some(from), Some(to)) = (bounds.iter().map(|b| b.0).min(), bounds.iter().map(|b| b.1).max()) else {
            return EventAction::Ignore("the notification names no interval".into());
        };
        if to - from > 31 * 86_400_000 {
            return EventAction::Ignore("the notification's interval spans more than 31 days".into());
        }
        // `[from, to]`: a session starting at the interval's start is inside `[from, to + 1 ms)`.
        EventAction::Range { stream: n.data_type, range: TimeRange { from, to: to + 1 } }
    }

    fn map(&self, ctx: &MapContext, object: &ObjectRef, data: &Value) -> Result<Vec<ResourceDraft>, MapError> {
        match object.kind.as_str() {
            EXERCISE => mapping::map_exercise(ctx, data),
            SLEEP => mapping::map_sleep(ctx, data),
            kind => match (mapping::daily_type(kind), mapping::rollup_type(kind)) {
                (Some(daily), _) => mapping::map_daily(ctx, daily, data),
                (None, Some(rollup)) => mapping::map_rollup(ctx, rollup, data),
                (None, None) => Err(MapError(format!("{kind} is not a synced Google data type"))),
            },
        }
    }

    /// Google's deletes name no data point (see `event_action`).
    fn resource_ids(&self, _ctx: &MapContext, _object: &ObjectRef) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// None announced: Google's quotas are per Cloud project and only a 429 tells.
    fn rate_windows(&self, _headers: &HeaderMap, _now: i64) -> Vec<RateWindow> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn google() -> Google {
        Google::new(None)
    }

    fn base() -> Url {
        Url::parse("https://health.googleapis.com").unwrap()
    }

    #[test]
    fn filters_name_the_type_in_snake_case() {
        let range = TimeRange { from: 1_793_491_200_000, to: 1_793_577_600_000 };
        assert_eq!(
            filter("exercise", range),
            "exercise.interval.start_time >= \"2026-11-01T00:00:00Z\" AND exercise.interval.start_time < \"2026-11-02T00:00:00Z\""
        );
        assert_eq!(
            filter("daily-resting-heart-rate", range),
            "daily_resting_heart_rate.date >= \"2026-10-31\" AND daily_resting_heart_rate.date <= \"2026-11-03\""
        );
    }

    #[test]
    fn an_upsert_re_reads_its_interval_and_a_delete_is_ignored() {
        let n = json!({"healthUserId": "NGL8Q2", "operation": "UPSERT", "dataType": "exercise",
            "intervals": [{"physicalTimeInterval": {"startTime": "2026-11-20T07:00:00Z", "endTime": "2026-11-20T08:00:00Z"}},
                          {"physicalTimeInterval": {"startTime": "2026-11-20T06:00:00+01:00", "endTime": "2026-11-20T06:30:00+01:00"}}]});
        let from = crate::fhir::activity::parse_instant("2026-11-20T05:00:00Z").unwrap().timestamp_millis();
        let to = crate::fhir::activity::parse_instant("2026-11-20T08:00:00Z").unwrap().timestamp_millis();
        assert_eq!(
            google().event_action(&n, &base()),
            EventAction::Range { stream: "exercise".into(), range: TimeRange { from, to: to + 1 } }
        );
        let mut deleted = n.clone();
        deleted["operation"] = json!("DELETE");
        assert!(matches!(google().event_action(&deleted, &base()), EventAction::Ignore(_)));
        let mut floors = n.clone();
        floors["dataType"] = json!("floors");
        assert!(matches!(google().event_action(&floors, &base()), EventAction::Ignore(_)));
        let mut empty = n;
        empty["intervals"] = json!([]);
        assert!(matches!(google().event_action(&empty, &base()), EventAction::Ignore(_)));
    }
}
