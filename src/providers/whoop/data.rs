//! WHOOP API v2's data endpoints (https://developer.whoop.com/api): workouts, sleep, recovery and
//! physiological cycles, listed by `start`/`end` with `limit` ≤ 25 and `nextToken`, answering
//! `{records, next_token}`.

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use serde_json::Value;
use url::Url;

use super::{mapping, Whoop, WhoopEvent};
use crate::fhir::{MapContext, MapError, ResourceDraft};
use crate::providers::data::{header, DataApi, DataError, DataSource, EventAction, Item, ObjectRef, Page, TimeRange};
use crate::store::sync::RateWindow;

const WORKOUT: &str = "workout";
const SLEEP: &str = "sleep";
const RECOVERY: &str = "recovery";
const CYCLE: &str = "cycle";
/// WHOOP's largest page.
const LIMIT: &str = "25";
/// How far back a v2 `recovery.updated` looks (see `event_action`).
const RECOVERY_EVENT_REACH_MS: i64 = 7 * 86_400_000;

/// (stream, kind, collection path).
const STREAMS: [(&str, &str, &str); 4] = [
    ("workouts", WORKOUT, "v2/activity/workout"),
    ("sleep", SLEEP, "v2/activity/sleep"),
    ("recovery", RECOVERY, "v2/recovery"),
    ("cycles", CYCLE, "v2/cycle"),
];

fn iso(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The id a record of this kind is known by: workouts and sleeps their UUID, recoveries their
/// sleep's UUID (what v2 webhooks name), cycles their number.
fn record_id(kind: &str, record: &Value) -> Option<String> {
    match kind {
        RECOVERY => mapping::plain_id(record.get("sleep_id")),
        CYCLE => crate::providers::id_text(record.get("id")).filter(|id| id.bytes().all(|b| b.is_ascii_digit())),
        _ => mapping::plain_id(record.get("id")),
    }
}

fn numeric(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

#[async_trait]
impl DataSource for Whoop {
    fn streams(&self) -> &'static [&'static str] {
        &["workouts", "sleep", "recovery", "cycles"]
    }

    async fn list(
        &self,
        api: &DataApi<'_>,
        stream: &str,
        range: TimeRange,
        cursor: Option<&Value>,
    ) -> Result<Page, DataError> {
        let Some((_, kind, path)) = STREAMS.iter().find(|(s, _, _)| *s == stream) else {
            return Err(DataError::Refused(format!("no WHOOP stream {stream}")));
        };
        let mut query = vec![("start", iso(range.from)), ("end", iso(range.to)), ("limit", LIMIT.to_string())];
        if let Some(token) = cursor.and_then(Value::as_str) {
            query.push(("nextToken", token.to_string()));
        }
        let answer = api.get_json(&api.url(path), &query).await?.unwrap_or(Value::Null);
        let records = match answer.get("records") {
            Some(Value::Array(records)) => records.clone(),
            None | Some(Value::Null) if answer.is_null() => Vec::new(),
            _ => return Err(DataError::BadAnswer("WHOOP collection without records")),
        };
        let items = records
            .into_iter()
            .filter_map(|record| {
                let id = record_id(kind, &record)?;
                Some(Item { object: ObjectRef { kind: (*kind).into(), id, url: None }, data: Some(record) })
            })
            .collect();
        let next = answer.get("next_token").and_then(Value::as_str).filter(|t| !t.is_empty()).map(Value::from);
        Ok(Page { items, next, ..Page::default() })
    }

    async fn fetch(&self, api: &DataApi<'_>, object: &ObjectRef) -> Result<Option<Value>, DataError> {
        let id = object.id.as_str();
        let uuid = mapping::plain_id(Some(&Value::from(id))).is_some_and(|p| p == id);
        let path = match object.kind.as_str() {
            WORKOUT if uuid => format!("v2/activity/workout/{id}"),
            SLEEP if uuid => format!("v2/activity/sleep/{id}"),
            // v2 addresses a recovery by its cycle only (`GET /v2/cycle/{cycleId}/recovery`).
            RECOVERY if numeric(id) => format!("v2/cycle/{id}/recovery"),
            CYCLE if numeric(id) => format!("v2/cycle/{id}"),
            _ => return Err(DataError::Refused("unexpected WHOOP object id".into())),
        };
        api.get_json(&api.url(&path), &[]).await
    }

    fn event_action(&self, payload: &Value, _api_base: &Url) -> EventAction {
        let Ok(bytes) = serde_json::to_vec(payload) else {
            return EventAction::Ignore("not a WHOOP event".into());
        };
        let event = match WhoopEvent::parse(&bytes) {
            Ok(event) => event,
            Err(e) => return EventAction::Ignore(format!("not a WHOOP event: {e}")),
        };
        let Some(id) = event.object_id() else {
            return EventAction::Ignore("the event names no object".into());
        };
        let object = |kind: &str| ObjectRef { kind: kind.into(), id: id.clone(), url: None };
        match event.event_type.as_str() {
            "workout.updated" => EventAction::Fetch(object(WORKOUT)),
            "workout.deleted" => EventAction::Delete(object(WORKOUT)),
            "sleep.updated" => EventAction::Fetch(object(SLEEP)),
            "sleep.deleted" => EventAction::Delete(object(SLEEP)),
            // A v1 (legacy) recovery event names the cycle, which v2 can fetch the recovery by.
            "recovery.updated" if numeric(&id) => EventAction::Fetch(object(RECOVERY)),
            // A v2 recovery event names the recovery's *sleep* (a UUID), and v2 has no recovery
            // by sleep: one listing of the recent recoveries finds it (writes of unchanged ones
            // change nothing). https://developer.whoop.com/docs/developing/webhooks
            "recovery.updated" => {
                let now = crate::time::now_ms();
                EventAction::Range {
                    stream: "recovery".into(),
                    range: TimeRange { from: now - RECOVERY_EVENT_REACH_MS, to: now + 3_600_000 },
                }
            }
            "recovery.deleted" if numeric(&id) => {
                EventAction::Ignore("a v1 recovery.deleted names a cycle; recoveries are kept by sleep".into())
            }
            "recovery.deleted" => EventAction::Delete(object(RECOVERY)),
            other => EventAction::Ignore(format!("{other} events are not synced")),
        }
    }

    fn map(&self, ctx: &MapContext, object: &ObjectRef, data: &Value) -> Result<Vec<ResourceDraft>, MapError> {
        match object.kind.as_str() {
            WORKOUT => mapping::map_workout(ctx, data),
            SLEEP => mapping::map_sleep(ctx, data),
            RECOVERY => mapping::map_recovery(ctx, data),
            CYCLE => mapping::map_cycle(ctx, data),
            other => Err(MapError(format!("unknown WHOOP object kind {other}"))),
        }
    }

    fn resource_ids(&self, ctx: &MapContext, object: &ObjectRef) -> Vec<(&'static str, String)> {
        match object.kind.as_str() {
            WORKOUT => mapping::workout_resource_ids(ctx, &object.id),
            SLEEP => mapping::sleep_resource_ids(ctx, &object.id),
            RECOVERY => mapping::recovery_resource_ids(ctx, &object.id),
            _ => Vec::new(),
        }
    }

    /// WHOOP's headers follow the IETF RateLimit draft
    /// (https://developer.whoop.com/docs/developing/rate-limiting): `X-RateLimit-Limit:
    /// "100, 100;window=60, 10000;window=86400"` — the first number is the limit closest to being
    /// hit, then every policy — with `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds)
    /// for that closest one. So each answer describes one window: the policy of that limit.
    fn rate_windows(&self, headers: &HeaderMap, now: i64) -> Vec<RateWindow> {
        let number = |name: &str| header(headers, name).and_then(|v| v.trim().parse::<i64>().ok());
        let (Some(limit_header), Some(remaining), Some(reset)) =
            (header(headers, "x-ratelimit-limit"), number("x-ratelimit-remaining"), number("x-ratelimit-reset"))
        else {
            return Vec::new();
        };
        let mut parts = limit_header.split(',').map(str::trim);
        let Some(limit) = parts.next().and_then(|l| l.parse::<i64>().ok()) else {
            return Vec::new();
        };
        // The policy whose quota is the closest limit; a bare number is the minute window.
        let window_secs = parts
            .filter_map(|policy| {
                let (quota, params) = policy.split_once(';')?;
                let window = params.split(';').find_map(|p| p.trim().strip_prefix("window="))?;
                Some((quota.trim().parse::<i64>().ok()?, window.trim().parse::<i64>().ok()?))
            })
            .find(|(quota, _)| *quota == limit)
            .map_or(60, |(_, window)| window);
        let name = match window_secs {
            60 => "minute".to_string(),
            86_400 => "day".to_string(),
            s => format!("{s}s"),
        };
        vec![RateWindow {
            name,
            limit,
            used: (limit - remaining.max(0)).max(0),
            resets_at: now + reset.max(0) * 1000,
            length_ms: window_secs.max(1) * 1000,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_closest_window_is_read_from_whoops_headers() {
        let whoop = Whoop::new(None);
        let h = headers(&[
            ("x-ratelimit-limit", "100, 100;window=60, 10000;window=86400"),
            ("x-ratelimit-remaining", "98"),
            ("x-ratelimit-reset", "3"),
        ]);
        let w = whoop.rate_windows(&h, 1_000_000);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].name.as_str(), w[0].limit, w[0].used), ("minute", 100, 2));
        assert_eq!((w[0].resets_at, w[0].length_ms), (1_003_000, 60_000));
        let h = headers(&[
            ("x-ratelimit-limit", "10000, 100;window=60, 10000;window=86400"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "4000"),
        ]);
        let w = whoop.rate_windows(&h, 0);
        assert_eq!((w[0].name.as_str(), w[0].limit, w[0].used, w[0].resets_at), ("day", 10_000, 10_000, 4_000_000));
        assert!(whoop.rate_windows(&headers(&[("x-ratelimit-limit", "100")]), 0).is_empty());
    }

    #[test]
    fn events_become_fetches_deletes_or_a_recovery_listing() {
        let whoop = Whoop::new(None);
        let base = Url::parse("https://api.prod.whoop.com/developer").unwrap();
        let uuid = "ecfc6a15-4661-442f-a9a4-f160dd7afae8";
        let event = |t: &str, id: Value| json!({"user_id": 10129, "id": id, "type": t, "trace_id": "t-1"});
        let obj = |kind: &str, id: &str| ObjectRef { kind: kind.into(), id: id.into(), url: None };
        assert_eq!(
            whoop.event_action(&event("workout.updated", json!(uuid)), &base),
            EventAction::Fetch(obj(WORKOUT, uuid))
        );
        assert_eq!(
            whoop.event_action(&event("workout.deleted", json!(uuid)), &base),
            EventAction::Delete(obj(WORKOUT, uuid))
        );
        assert_eq!(
            whoop.event_action(&event("sleep.updated", json!(uuid)), &base),
            EventAction::Fetch(obj(SLEEP, uuid))
        );
        assert_eq!(
            whoop.event_action(&event("recovery.deleted", json!(uuid)), &base),
            EventAction::Delete(obj(RECOVERY, uuid))
        );
        assert_eq!(
            whoop.event_action(&event("recovery.updated", json!(93845)), &base),
            EventAction::Fetch(obj(RECOVERY, "93845"))
        );
        match whoop.event_action(&event("recovery.updated", json!(uuid)), &base) {
            EventAction::Range { stream, range } => {
                assert_eq!(stream, "recovery");
                assert!(range.to - range.from >= RECOVERY_EVENT_REACH_MS);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(whoop.event_action(&json!({"x": 1}), &base), EventAction::Ignore(_)));
    }
}
