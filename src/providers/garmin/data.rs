//! Garmin's data comes by push only. A backfill asks Garmin to push a range again:
//! `GET /wellness-api/rest/backfill/{activities,sleeps,dailies}?summaryStartTimeInSeconds=&summaryEndTimeInSeconds=`
//! → 202 without a body; at most 30 days a request, the same range again → 409 (already asked:
//! taken as accepted), 403 without the user's `HISTORICAL_DATA_EXPORT` permission (nothing to
//! wait for). (shared/spec/providers.md, "Garmin, corrections and additions" ◐)

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use url::Url;

use super::{mapping, Garmin, DATA_LISTS, DEREGISTRATIONS, PERMISSIONS_CHANGE};
use crate::fhir::{MapContext, MapError, ResourceDraft};
use crate::providers::data::{DataApi, DataError, DataSource, EventAction, ObjectRef, Page, TimeRange};
use crate::store::sync::RateWindow;

/// Garmin's limit for one backfill request.
const MAX_REQUEST_MS: i64 = 30 * 86_400_000;

#[async_trait]
impl DataSource for Garmin {
    fn streams(&self) -> &'static [&'static str] {
        &["activities", "sleeps", "dailies"]
    }

    /// One backfill request of at most 30 days (the cursor: where the next one starts, epoch ms).
    /// Answers no items: the data comes by push (`pushed_later`).
    async fn list(
        &self,
        api: &DataApi<'_>,
        stream: &str,
        range: TimeRange,
        cursor: Option<&Value>,
    ) -> Result<Page, DataError> {
        if !self.streams().contains(&stream) {
            return Err(DataError::Refused(format!("no Garmin stream {stream}")));
        }
        let from = cursor.and_then(|c| c.get("from")).and_then(Value::as_i64).unwrap_or(range.from).max(range.from);
        if from >= range.to {
            return Ok(Page::default());
        }
        let to = range.to.min(from + MAX_REQUEST_MS);
        let query = [
            ("summaryStartTimeInSeconds", (from / 1000).to_string()),
            ("summaryEndTimeInSeconds", (to / 1000).to_string()),
        ];
        let accepted = match api.get_json(&api.url(&format!("wellness-api/rest/backfill/{stream}")), &query).await {
            // 202 with no body (an answer with one is accepted all the same).
            Ok(_) => true,
            Err(DataError::Failed(409)) => true,
            Err(DataError::Forbidden) => {
                tracing::warn!(stream, "Garmin refused the backfill: the user did not grant HISTORICAL_DATA_EXPORT");
                false
            }
            Err(e) => return Err(e),
        };
        let next = (to < range.to).then(|| json!({ "from": to }));
        Ok(Page { items: Vec::new(), next, pushed_later: accepted })
    }

    /// Garmin has no call that answers one summary: everything comes by push.
    async fn fetch(&self, _api: &DataApi<'_>, _object: &ObjectRef) -> Result<Option<Value>, DataError> {
        Ok(None)
    }

    /// A stored push item (`{type, item}`, see `super::event_payload`): data lists carry their
    /// data, a deregistration ends the connection.
    fn event_action(&self, payload: &Value, _api_base: &Url) -> EventAction {
        let (Some(list), Some(item)) = (payload.get("type").and_then(Value::as_str), payload.get("item")) else {
            return EventAction::Ignore("not a Garmin push item".into());
        };
        if list == DEREGISTRATIONS {
            return EventAction::Deauthorize;
        }
        if list == PERMISSIONS_CHANGE {
            let permissions = item.get("permissions").map(Value::to_string).unwrap_or_default();
            return EventAction::Ignore(format!("the user's permissions changed: {permissions}"));
        }
        let Some((_, kind)) = DATA_LISTS.iter().find(|(name, _)| *name == list) else {
            return EventAction::Ignore(format!("Garmin {list} are not synced"));
        };
        let Some(id) = mapping::summary_id(item) else {
            return EventAction::Ignore("the item has no summaryId".into());
        };
        EventAction::Items(vec![(ObjectRef { kind: (*kind).into(), id, url: None }, item.clone())])
    }

    fn map(&self, ctx: &MapContext, object: &ObjectRef, data: &Value) -> Result<Vec<ResourceDraft>, MapError> {
        match object.kind.as_str() {
            "activity" => mapping::map_activity(ctx, data),
            "sleep" => mapping::map_sleep(ctx, data),
            "daily" => mapping::map_daily(ctx, data),
            other => Err(MapError(format!("no Garmin mapping for {other}"))),
        }
    }

    /// Garmin pushes no deletes.
    fn resource_ids(&self, _ctx: &MapContext, _object: &ObjectRef) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Garmin documents no rate-limit headers (✖).
    fn rate_windows(&self, _headers: &HeaderMap, _now: i64) -> Vec<RateWindow> {
        Vec::new()
    }
}
