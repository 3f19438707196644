//! Withings' data API (developer.withings.com/api-reference): every call a form POST with the
//! user's bearer token, every answer the envelope `{status, body}` with HTTP 200 even on errors
//! (status 401: the access token is refused; 601: too many requests).
//!
//! Streams: `measures` (`POST /measure action=getmeas category=1`), `activity` (`POST /v2/measure
//! action=getactivity`, then `action=getworkouts`: a notification of appli 16 names both), and
//! `sleep` (`POST /v2/sleep action=getsummary`). Each is read with `lastupdate` (what was created
//! or changed since the range's start, Withings' way to synchronise: an old measure entered late
//! is found too) and paged with `more`/`offset`; the cursor is `{action, offset}`.

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use url::Url;

use super::{mapping, Notification, Withings};
use crate::fhir::{MapContext, MapError, ResourceDraft};
use crate::providers::data::{DataApi, DataError, DataSource, EventAction, Item, ObjectRef, Page, TimeRange};
use crate::store::sync::RateWindow;

pub const MEASURES: &str = "measures";
pub const ACTIVITY: &str = "activity";
pub const SLEEP: &str = "sleep";
/// Object kinds beside the streams' own.
pub const WORKOUT: &str = "workout";

/// The envelope's status for an access token Withings refuses (spec ◐: "Expired tokens answer
/// HTTP 200 with `{"status": 401}`").
pub const STATUS_INVALID_TOKEN: i64 = 401;
/// "Too many requests" (developer.withings.com, response status 601).
pub const STATUS_TOO_MANY_REQUESTS: i64 = 601;

/// How far before a range's start `lastupdate` reaches: a device whose clock runs ahead stores a
/// measure whose `date` is later than its `modified`, and such a group must still be listed when
/// its range is re-read, or it would look deleted.
const CLOCK_MARGIN_S: i64 = 86_400;

/// The fields asked for (`data_fields`); Withings answers only what is asked.
const SLEEP_FIELDS: &str = "total_sleep_time,deepsleepduration,lightsleepduration,remsleepduration,hr_average";
const ACTIVITY_FIELDS: &str = "steps,distance,totalcalories";
const WORKOUT_FIELDS: &str = "calories,distance,hr_average,hr_max";

/// The envelope's body, or the error its status means.
pub fn envelope_body(answer: Option<Value>) -> Result<Value, DataError> {
    let answer = answer.ok_or(DataError::BadAnswer("empty answer"))?;
    match answer.get("status").and_then(Value::as_i64) {
        Some(0) => Ok(answer.get("body").cloned().unwrap_or(Value::Null)),
        Some(STATUS_INVALID_TOKEN) => Err(DataError::Unauthorized),
        Some(STATUS_TOO_MANY_REQUESTS) => {
            Err(DataError::RateLimited { retry_after: Some(std::time::Duration::from_secs(60)) })
        }
        Some(status) => Err(DataError::Failed(u16::try_from(status).unwrap_or(u16::MAX))),
        None => Err(DataError::BadAnswer("no status in the envelope")),
    }
}

/// Which call a cursor is at and from which offset.
fn position(stream: &str, cursor: Option<&Value>) -> (&'static str, i64) {
    let offset = cursor.and_then(|c| c.get("offset")).and_then(Value::as_i64).filter(|o| *o >= 0).unwrap_or(0);
    let action = cursor.and_then(|c| c.get("action")).and_then(Value::as_str);
    match (stream, action) {
        (MEASURES, _) => ("getmeas", offset),
        (SLEEP, _) => ("getsummary", offset),
        (_, Some("getworkouts")) => ("getworkouts", offset),
        _ => ("getactivity", offset),
    }
}

fn item(kind: &str, id: Option<String>, data: Value) -> Option<Item> {
    Some(Item { object: ObjectRef { kind: kind.into(), id: id?, url: None }, data: Some(data) })
}

#[async_trait]
impl DataSource for Withings {
    fn streams(&self) -> &'static [&'static str] {
        &[MEASURES, ACTIVITY, SLEEP]
    }

    async fn list(
        &self,
        api: &DataApi<'_>,
        stream: &str,
        range: TimeRange,
        cursor: Option<&Value>,
    ) -> Result<Page, DataError> {
        if !self.streams().contains(&stream) {
            return Err(DataError::Refused(format!("{stream} is not a synced Withings stream")));
        }
        let (action, offset) = position(stream, cursor);
        let mut form = vec![
            ("action", action.to_string()),
            ("lastupdate", (range.from.div_euclid(1000) - CLOCK_MARGIN_S).to_string()),
        ];
        let path = match action {
            "getmeas" => {
                let types: Vec<String> = mapping::MEASURE_TYPES.iter().map(i64::to_string).collect();
                form.push(("meastypes", types.join(",")));
                form.push(("category", "1".into()));
                "measure"
            }
            "getsummary" => {
                form.push(("data_fields", SLEEP_FIELDS.into()));
                "v2/sleep"
            }
            "getworkouts" => {
                form.push(("data_fields", WORKOUT_FIELDS.into()));
                "v2/measure"
            }
            _ => {
                form.push(("data_fields", ACTIVITY_FIELDS.into()));
                "v2/measure"
            }
        };
        if offset > 0 {
            form.push(("offset", offset.to_string()));
        }
        let body = envelope_body(api.post_form(&api.url(path), &form).await?)?;
        let list = |key: &str| body.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        let items: Vec<Item> = match action {
            "getmeas" => list("measuregrps")
                .into_iter()
                .filter_map(|g| item(MEASURES, mapping::numeric_id(g.get("grpid")), g))
                .collect(),
            "getsummary" => {
                list("series").into_iter().filter_map(|s| item(SLEEP, mapping::numeric_id(s.get("id")), s)).collect()
            }
            "getworkouts" => {
                list("series").into_iter().filter_map(|w| item(WORKOUT, mapping::numeric_id(w.get("id")), w)).collect()
            }
            _ => list("activities")
                .into_iter()
                .filter_map(|a| {
                    let date = a.get("date").and_then(Value::as_str).map(String::from);
                    item(ACTIVITY, date.filter(|d| d.len() == 10), a)
                })
                .collect(),
        };
        let more = body.get("more").is_some_and(|m| m.as_bool() == Some(true) || m.as_i64().is_some_and(|n| n != 0));
        let next = if more {
            let offset = body.get("offset").and_then(Value::as_i64).filter(|o| *o > offset);
            offset.map(|o| json!({"action": action, "offset": o}))
        } else if action == "getactivity" {
            Some(json!({"action": "getworkouts", "offset": 0}))
        } else {
            None
        };
        Ok(Page { items, next, ..Page::default() })
    }

    /// Withings has no read by id: every listing carries its objects' data.
    async fn fetch(&self, _api: &DataApi<'_>, _object: &ObjectRef) -> Result<Option<Value>, DataError> {
        Ok(None)
    }

    /// A notification names a user, a category (`appli`) and the range that changed: re-read it.
    /// `action=unlink` (the user removed our app) and `action=delete` (the account is gone) end
    /// the connection.
    fn event_action(&self, payload: &Value, _api_base: &Url) -> EventAction {
        let Ok(n) = serde_json::from_value::<Notification>(payload.clone()) else {
            return EventAction::Ignore("not a Withings notification".into());
        };
        match n.action.as_deref() {
            Some("unlink") | Some("delete") if n.appli == "46" || n.startdate.is_none() => {
                return EventAction::Deauthorize
            }
            _ => {}
        }
        let stream = match n.appli.as_str() {
            "1" | "4" => MEASURES,
            "16" => ACTIVITY,
            "44" => SLEEP,
            "50" | "51" => return EventAction::Ignore("bed in/out events carry no data to sync".into()),
            other => return EventAction::Ignore(format!("appli {other} is not synced")),
        };
        let Some((from, to)) = n.range_ms() else {
            return EventAction::Ignore("the notification names no range".into());
        };
        if to < from || to - from > 31 * 86_400_000 {
            return EventAction::Ignore("the notification's range is reversed or longer than 31 days".into());
        }
        // `enddate` is inclusive (whole seconds): the range ends a second later.
        EventAction::Range { stream: stream.into(), range: TimeRange { from, to: to + 1000 } }
    }

    fn map(&self, ctx: &MapContext, object: &ObjectRef, data: &Value) -> Result<Vec<ResourceDraft>, MapError> {
        match object.kind.as_str() {
            MEASURES => mapping::map_measure_group(ctx, data),
            SLEEP => mapping::map_sleep(ctx, data),
            ACTIVITY => mapping::map_activity(ctx, data),
            WORKOUT => mapping::map_workout(ctx, data),
            kind => Err(MapError(format!("{kind} is not a synced Withings object"))),
        }
    }

    fn resource_ids(&self, ctx: &MapContext, object: &ObjectRef) -> Vec<(&'static str, String)> {
        match object.kind.as_str() {
            MEASURES => mapping::measure_resource_ids(ctx, &object.id),
            _ => Vec::new(),
        }
    }

    /// A measure group Withings no longer lists was deleted (its notification names only the
    /// range): `getmeas` with `lastupdate` answers every group created or changed since then.
    fn complete_listing(&self, stream: &str) -> Option<&'static str> {
        (stream == MEASURES).then_some(mapping::MEASURE_SYSTEM)
    }

    /// None announced: Withings allows 120 requests a minute per app and says so only with 601.
    fn rate_windows(&self, _headers: &HeaderMap, _now: i64) -> Vec<RateWindow> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://wbsapi.withings.net").unwrap()
    }

    #[test]
    fn notifications_become_range_re_reads() {
        let w = Withings::new(None);
        let n = json!({"userid": "363", "appli": "4", "startdate": "1796000000", "enddate": "1796000060"});
        assert_eq!(
            w.event_action(&n, &base()),
            EventAction::Range {
                stream: MEASURES.into(),
                range: TimeRange { from: 1_796_000_000_000, to: 1_796_000_061_000 }
            }
        );
        let sleep = json!({"userid": "363", "appli": "44", "startdate": "1796000000", "enddate": "1796030000"});
        assert!(matches!(w.event_action(&sleep, &base()), EventAction::Range { stream, .. } if stream == SLEEP));
        let bed = json!({"userid": "363", "appli": "50", "startdate": "1796000000", "enddate": "1796000000"});
        assert!(matches!(w.event_action(&bed, &base()), EventAction::Ignore(_)));
        let unlink = json!({"userid": "363", "appli": "46", "action": "unlink"});
        assert_eq!(w.event_action(&unlink, &base()), EventAction::Deauthorize);
        let reversed = json!({"userid": "363", "appli": "1", "startdate": "1796000060", "enddate": "1796000000"});
        assert!(matches!(w.event_action(&reversed, &base()), EventAction::Ignore(_)));
    }

    #[test]
    fn the_envelope_status_decides() {
        assert_eq!(envelope_body(Some(json!({"status": 0, "body": {"a": 1}}))).unwrap(), json!({"a": 1}));
        assert!(matches!(envelope_body(Some(json!({"status": 401, "body": {}}))), Err(DataError::Unauthorized)));
        assert!(matches!(envelope_body(Some(json!({"status": 601}))), Err(DataError::RateLimited { .. })));
        assert!(matches!(envelope_body(Some(json!({"status": 2555}))), Err(DataError::Failed(2555))));
        assert!(matches!(envelope_body(Some(json!({"body": {}}))), Err(DataError::BadAnswer(_))));
    }
}
