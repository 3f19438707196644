//! Provider webhooks (`/v1/wearables/{provider}/webhook/{projectId}`), the inbox listing and
//! replay, and the admin calls that create the subscriptions at the providers.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{Admin, ApiPath, ApiQuery, RawBody};
use crate::store::EventFilter;
use crate::webhooks::{self, Receipt};
use crate::Services;

#[derive(Deserialize, IntoParams)]
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
pub struct ChallengeResponse {
    #[serde(rename = "hub.challenge")]
    pub challenge: String,
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

/// Strava's subscription validation: echoes `hub.challenge` when `hub.verify_token` is the
/// project's `WEARABLE_STRAVA_WEBHOOK_SECRET`.
#[utoipa::path(get, path = "/v1/wearables/{provider}/webhook/{projectId}", tag = "webhooks",
    params(("provider" = String, Path, description = "strava"), ("projectId" = String, Path), ChallengeQuery),
    responses((status = 200, body = ChallengeResponse), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn challenge(
    State(s): State<Arc<Services>>,
    ApiPath((provider, project_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ChallengeQuery>,
) -> ApiResult<Json<ChallengeResponse>> {
    if provider != "strava" {
        return Err(ApiError::RouteNotFound);
    }
    let challenge = webhooks::strava_challenge(
        &s,
        &project_id,
        q.mode.as_deref(),
        q.challenge.as_deref(),
        q.verify_token.as_deref(),
    )
    .await?;
    Ok(Json(ChallengeResponse { challenge }))
}

/// A provider event. Stored durably (deduplicated) before the 200; processed in the background.
/// Polar: `Polar-Webhook-Signature` (hex HMAC-SHA256 of the body) is required, except for PING.
#[utoipa::path(post, path = "/v1/wearables/{provider}/webhook/{projectId}", tag = "webhooks",
    params(("provider" = String, Path, description = "strava or polar"), ("projectId" = String, Path)),
    request_body(content = Object, description = "The provider's event, as it sends it"),
    responses((status = 200, body = DeliveryResponse), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 413, body = Problem),
        (status = 503, body = Problem)))]
pub async fn deliver(
    State(s): State<Arc<Services>>,
    ApiPath((provider, project_id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Json<DeliveryResponse>> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let receipt = match provider.as_str() {
        "strava" => webhooks::receive_strava(&s, &project_id, &body).await?,
        "polar" => {
            webhooks::receive_polar(
                &s,
                &project_id,
                header("polar-webhook-event"),
                header("polar-webhook-signature"),
                &body,
            )
            .await?
        }
        _ => return Err(ApiError::RouteNotFound),
    };
    let duplicate = receipt == Receipt::Stored { new: false };
    Ok(Json(DeliveryResponse { ok: true, duplicate }))
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
