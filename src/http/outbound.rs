//! `/v1/webhook-endpoints` and `/v1/webhook-deliveries`: the platform's endpoints for outbound
//! events (admin), their secrets, test events and deliveries.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiResult, Problem};
use super::extract::{Admin, ApiJson, ApiPath, ApiQuery};
use crate::events::endpoints::{self, EndpointChange, NewEndpoint};
use crate::store::outbound::{DeliveryRecord, EndpointRecord};
use crate::Services;

#[derive(Deserialize, ToSchema)]
pub struct EndpointBody {
    /// `https://…` (plain `http://` only to loopback, when the operator allows it).
    pub url: String,
    /// Event types to receive; absent for every type.
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
}

/// A change: fields left out stay; `"events": null` means every type.
#[derive(Deserialize, ToSchema, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub events: Option<Option<Vec<String>>>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub id: String,
    pub url: String,
    /// `null`: every event type.
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// Only when the endpoint is created: `whsec_…`, never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<EndpointRecord> for EndpointView {
    fn from(e: EndpointRecord) -> Self {
        Self {
            id: e.id,
            url: e.url,
            events: e.events,
            description: e.description,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            created_at: e.created_at,
            updated_at: e.updated_at,
            secret: None,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EndpointsResponse {
    pub endpoints: Vec<EndpointView>,
}

#[derive(Serialize, ToSchema)]
pub struct SecretResponse {
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestResponse {
    pub event_id: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    /// Epoch milliseconds.
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

impl From<DeliveryRecord> for DeliveryView {
    fn from(d: DeliveryRecord) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            state: d.state,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error,
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveriesResponse {
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Deserialize, IntoParams)]
pub struct DeliveriesQuery {
    /// `pending`, `delivered` or `failed`.
    pub state: Option<String>,
}

/// Answers that carry a secret are not to be cached anywhere.
fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Registers an endpoint for outbound events (admin); its secret is shown only in this answer.
#[utoipa::path(post, path = "/v1/webhook-endpoints", tag = "events", security(("bearer" = ["admin"])),
    request_body = EndpointBody,
    responses((status = 201, body = EndpointView), (status = 422, body = Problem)))]
pub async fn create_endpoint(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiJson(body): ApiJson<EndpointBody>,
) -> ApiResult<Response> {
    let new = NewEndpoint { url: body.url, events: body.events, description: body.description };
    let (record, secret) = endpoints::create(&s, &principal, new).await?;
    let view = EndpointView { secret: Some(secret), ..record.into() };
    Ok(no_store((StatusCode::CREATED, Json(view)).into_response()))
}

/// The project's endpoints (admin); never their secrets.
#[utoipa::path(get, path = "/v1/webhook-endpoints", tag = "events", security(("bearer" = ["admin"])),
    responses((status = 200, body = EndpointsResponse)))]
pub async fn list_endpoints(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
) -> ApiResult<Json<EndpointsResponse>> {
    let endpoints = endpoints::list(&s, &principal).await?.into_iter().map(Into::into).collect();
    Ok(Json(EndpointsResponse { endpoints }))
}

#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}", tag = "events", security(("bearer" = ["admin"])),
    params(("id" = String, Path)),
    responses((status = 200, body = EndpointView), (status = 404, body = Problem)))]
pub async fn get_endpoint(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EndpointView>> {
    Ok(Json(endpoints::get(&s, &principal, &id).await?.into()))
}

/// Changes the URL, the event types or `enabled` (re-enabling a disabled endpoint).
#[utoipa::path(patch, path = "/v1/webhook-endpoints/{id}", tag = "events", security(("bearer" = ["admin"])),
    params(("id" = String, Path)),
    request_body = EndpointPatch,
    responses((status = 200, body = EndpointView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update_endpoint(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<EndpointPatch>,
) -> ApiResult<Json<EndpointView>> {
    let change =
        EndpointChange { url: patch.url, events: patch.events, enabled: patch.enabled, description: patch.description };
    Ok(Json(endpoints::update(&s, &principal, &id, change).await?.into()))
}

/// Deletes an endpoint; its pending deliveries are dropped.
#[utoipa::path(delete, path = "/v1/webhook-endpoints/{id}", tag = "events", security(("bearer" = ["admin"])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_endpoint(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    endpoints::delete(&s, &principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret; the old one keeps signing beside it for 24 hours (both signatures are sent).
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/rotate-secret", tag = "events", security(("bearer" = ["admin"])),
    params(("id" = String, Path)),
    responses((status = 200, body = SecretResponse), (status = 404, body = Problem)))]
pub async fn rotate_secret(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let secret = endpoints::rotate_secret(&s, &principal, &id).await?;
    Ok(no_store(Json(SecretResponse { secret }).into_response()))
}

/// Sends a `webhook-endpoint.test` event to this endpoint.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/test", tag = "events", security(("bearer" = ["admin"])),
    params(("id" = String, Path)),
    responses((status = 202, body = TestResponse), (status = 404, body = Problem), (status = 409, body = Problem, description = "The endpoint is disabled")))]
pub async fn test_endpoint(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<TestResponse>)> {
    let event_id = endpoints::test(&s, &principal, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(TestResponse { event_id })))
}

/// The endpoint's deliveries, newest first: attempts, last status and error, next attempt.
#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}/deliveries", tag = "events", security(("bearer" = ["admin"])),
    params(("id" = String, Path), DeliveriesQuery),
    responses((status = 200, body = DeliveriesResponse), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn list_deliveries(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<DeliveriesResponse>> {
    let found = endpoints::deliveries(&s, &principal, &id, q.state.as_deref()).await?;
    Ok(Json(DeliveriesResponse { deliveries: found.into_iter().map(Into::into).collect() }))
}

/// Sends a delivery again (a failed one, typically), now.
#[utoipa::path(post, path = "/v1/webhook-deliveries/{id}/retry", tag = "events", security(("bearer" = ["admin"])),
    params(("id" = String, Path)),
    responses((status = 202), (status = 404, body = Problem)))]
pub async fn retry_delivery(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    endpoints::retry(&s, &principal, &id).await?;
    Ok(StatusCode::ACCEPTED)
}
