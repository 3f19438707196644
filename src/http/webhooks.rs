//! Provider webhooks (`/v1/wearables/{provider}/webhook/{projectId}`), the inbox listing and
//! replay, and the admin calls that create the subscriptions at the providers.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiResult, Problem};
use super::extract::{Admin, ApiPath, ApiQuery, RawBody};
use crate::providers::webhook::WebhookRequest;
use crate::store::EventFilter;
use crate::webhooks::{self, Receipt};
use crate::Services;

/// Strava's validation query, for the OpenAPI document (handshakes read the whole query).
#[derive(Deserialize, IntoParams)]
#[allow(dead_code)]
pub struct ChallengeQuery {
    #[serde(rename = "hub.mode")]
    #[param(rename = "hub.mode")]
    pub mode: Option<String>,
    #[serde(rename = "hub.challenge")]
    #[param(rename = "hub.challenge")]
    pub challenge: Option<String>,
    #[serde(rename = "hub.verify_token")]
    #[param(rename = "hub.verify_token")]
    pub verify_token: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct DeliveryResponse {
    pub ok: bool,
    /// The provider sent an event already stored (a retry); stored once.
    pub duplicate: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SubscriptionResponse {
    pub provider: String,
    /// The provider's id of the subscription / webhook.
    pub id: String,
    /// Where the provider delivers events.
    pub url: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct EventsQuery {
    pub patient_id: Option<String>,
    /// `received`, `synced`, `done`, `ignored` or `dead`.
    pub state: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventInfo {
    pub id: String,
    pub provider: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub remote_user_id: Option<String>,
    pub patient_id: Option<String>,
    pub endpoint_id: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// Epoch milliseconds.
    pub received_at: i64,
    /// Epoch milliseconds.
    pub processed_at: Option<i64>,
    /// What the provider sent the event about (Strava `object_type`, `object_id`, `aspect_type`;
    /// Polar `entity_id`, `url`, `date`).
    #[schema(value_type = Object)]
    pub object: serde_json::Value,
    /// The FHIR resources (`Type/id`) a `synced` event wrote.
    pub synced_refs: Option<Vec<String>>,
}

/// The fields of a provider's event that say what it is about.
fn event_object(payload: &str) -> serde_json::Value {
    const FIELDS: &[&str] = &["object_type", "object_id", "aspect_type", "entity_id", "url", "date"];
    let parsed: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
    let picked: serde_json::Map<String, serde_json::Value> =
        FIELDS.iter().filter_map(|f| parsed.get(*f).map(|v| (f.to_string(), v.clone()))).collect();
    serde_json::Value::Object(picked)
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct EventsResponse {
    pub events: Vec<EventInfo>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct OkResponse {
    pub ok: bool,
}

/// The request as the domain reads it: header names in lower case, the query's pairs.
type Pairs = Vec<(String, String)>;

fn parts(headers: &HeaderMap, query: Option<&str>) -> (Pairs, Pairs) {
    let headers = headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_ascii_lowercase(), v.to_string())))
        .collect();
    let query = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    (headers, query)
}

/// The provider validating the URL: Strava's `hub.*` (echoes `hub.challenge` when
/// `hub.verify_token` is the project's webhook secret), Oura's `verification_token` and
/// `challenge`; a HEAD (Withings) is answered the same way, without a body.
#[utoipa::path(get, path = "/v1/wearables/{provider}/webhook/{projectId}", tag = "webhooks",
    params(("provider" = String, Path, description = "a provider whose webhooks are validated by a GET"), ("projectId" = String, Path), ChallengeQuery),
    responses((status = 200, body = Object, description = "What the provider expects back (Strava: `{\"hub.challenge\"}`)"),
        (status = 401, body = Problem, description = "A URL that must carry the project's webhook secret (Withings' `?token=`) without it"),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn challenge(
    State(s): State<Arc<Services>>,
    ApiPath((provider, project_id)): ApiPath<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let (headers, query) = parts(&headers, uri.query());
    let request = WebhookRequest { headers: &headers, query: &query, body: &[] };
    let answer = webhooks::handshake(&s, &provider, &project_id, &request).await?;
    Ok(Json(answer))
}

/// A provider event. Verified by the provider's rules (signatures over the body or timestamp and
/// body, shared headers), stored durably (deduplicated) before the answer, processed in the
/// background. Verification deliveries (Polar's PING, Google's `{"type": "verification"}`) are
/// acknowledged without being stored (Google's with 201).
#[utoipa::path(post, path = "/v1/wearables/{provider}/webhook/{projectId}", tag = "webhooks",
    params(("provider" = String, Path, description = "a provider slug"), ("projectId" = String, Path)),
    request_body(content = Object, description = "The provider's event, as it sends it"),
    responses((status = 200, body = DeliveryResponse), (status = 201, body = DeliveryResponse, description = "A verification delivery acknowledged"),
        (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 413, body = Problem),
        (status = 503, body = Problem)))]
pub async fn deliver(
    State(s): State<Arc<Services>>,
    ApiPath((provider, project_id)): ApiPath<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<(StatusCode, Json<DeliveryResponse>)> {
    let (headers, query) = parts(&headers, uri.query());
    let request = WebhookRequest { headers: &headers, query: &query, body: &body };
    let receipt = webhooks::receive(&s, &provider, &project_id, &request).await?;
    let (status, duplicate) = match receipt {
        Receipt::Stored { new } => (StatusCode::OK, !new),
        Receipt::Acknowledged(status) => (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), false),
    };
    Ok((status, Json(DeliveryResponse { ok: true, duplicate })))
}

/// Creates the webhook subscription at the provider for this project (admin).
#[utoipa::path(post, path = "/v1/wearables/{provider}/webhook-subscription", tag = "webhooks",
    security(("bearer" = ["admin"])), params(("provider" = String, Path)),
    responses((status = 200, body = SubscriptionResponse), (status = 404, body = Problem), (status = 422, body = Problem), (status = 502, body = Problem)))]
pub async fn subscribe(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(provider): ApiPath<String>,
) -> ApiResult<Json<SubscriptionResponse>> {
    let (id, url) = webhooks::subscribe(&s, &principal, &provider).await?;
    Ok(Json(SubscriptionResponse { provider, id, url }))
}

/// Received events and their processing state (admin), newest first.
#[utoipa::path(get, path = "/v1/wearables/events", tag = "webhooks", security(("bearer" = ["admin"])),
    params(EventsQuery),
    responses((status = 200, body = EventsResponse)))]
pub async fn list_events(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventsResponse>> {
    let filter = EventFilter { patient_id: q.patient_id, state: q.state };
    let events = webhooks::list_events(&s, &principal, filter)
        .await?
        .into_iter()
        .map(|e| EventInfo {
            id: e.id,
            provider: e.provider,
            event_type: e.event_type,
            remote_user_id: e.remote_user_id,
            patient_id: e.patient_id,
            endpoint_id: e.endpoint_id,
            state: e.state,
            attempts: e.attempts,
            last_error: e.last_error,
            received_at: e.received_at,
            processed_at: e.processed_at,
            object: event_object(&e.payload),
            synced_refs: e.synced_refs,
        })
        .collect();
    Ok(Json(EventsResponse { events }))
}

/// Puts an event (a dead letter, typically) back in the processing queue (admin).
#[utoipa::path(post, path = "/v1/wearables/events/{eventId}/replay", tag = "webhooks", security(("bearer" = ["admin"])),
    params(("eventId" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 404, body = Problem)))]
pub async fn replay(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(event_id): ApiPath<String>,
) -> ApiResult<Json<OkResponse>> {
    webhooks::replay(&s, &principal, &event_id).await?;
    Ok(Json(OkResponse { ok: true }))
}
