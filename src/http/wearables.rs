//! `/v1/wearables/{provider}/…`: connect, callback and the credentials view.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{Admin, ApiJson, ApiPath, ApiQuery};
use crate::connect::{self, CallbackParams, ConnectRequest};
use crate::projects::{self, CredentialsStatus, NewCredentials, Principal};
use crate::Services;

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectBody {
    /// FHIR Patient id to connect.
    pub patient_id: String,
    /// Where to send the user after the callback. Defaults to a JSON success page.
    pub redirect_uri: Option<String>,
    /// The provider region of the user's account, for providers with regions (Dexcom: `us`,
    /// `eu`, `jp`; default `us`); 422 for a region the provider does not have.
    pub region: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectResponse {
    pub provider: String,
    pub authorization_url: String,
    /// Opaque; the provider echoes it back to the callback.
    pub state: String,
}

#[derive(Deserialize, IntoParams)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// Set by the provider when the user declined (`access_denied`).
    pub error: Option<String>,
    /// Scopes the user granted (Strava).
    pub scope: Option<String>,
}

/// The JSON success page shown when connect had no `redirectUri`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallbackSuccess {
    /// Always `connected`.
    pub status: String,
    pub provider: String,
    pub patient_id: String,
    pub endpoint_id: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsBody {
    pub client_id: String,
    pub client_secret: String,
    pub webhook_secret: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsResponse {
    pub configured: bool,
    pub client_id_last4: Option<String>,
    pub has_secret: bool,
    pub has_webhook_secret: bool,
}

impl From<CredentialsStatus> for CredentialsResponse {
    fn from(c: CredentialsStatus) -> Self {
        Self {
            configured: c.configured,
            client_id_last4: c.client_id_last4,
            has_secret: c.has_secret,
            has_webhook_secret: c.has_webhook_secret,
        }
    }
}

/// Pages that carry a state or a code must not be cached or leak through the Referer.
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Start a wearable OAuth flow: answers the provider authorization URL to send the user to.
#[utoipa::path(post, path = "/v1/wearables/{provider}/connect", tag = "wearables", security(("bearer" = [])),
    params(("provider" = String, Path, description = "a provider slug (the enum lists them)")),
    request_body = ConnectBody,
    responses((status = 200, body = ConnectResponse), (status = 404, body = Problem), (status = 422, body = Problem),
        (status = 503, description = "Timed out, the database is unavailable, or the project's own FHIR server could not say whether the patient is there (`fhir_server_unavailable`); nothing was stored", body = Problem)))]
pub async fn connect(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiPath(provider): ApiPath<String>,
    ApiJson(body): ApiJson<ConnectBody>,
) -> ApiResult<Response> {
    let started = connect::start(
        &s,
        &principal,
        &provider,
        ConnectRequest {
            patient_id: body.patient_id,
            redirect_uri: body.redirect_uri,
            session: None,
            region: body.region,
        },
    )
    .await?;
    Ok(no_store(
        Json(ConnectResponse {
            provider: started.provider,
            authorization_url: started.authorization_url.into(),
            state: started.state,
        })
        .into_response(),
    ))
}

/// Where the provider sends the user back. Redirects (303) to the connect's `redirectUri` with
/// `status`, `provider`, `patientId` and `endpointId` or `error` added, or answers a JSON page.
#[utoipa::path(get, path = "/v1/wearables/{provider}/callback", tag = "wearables",
    params(("provider" = String, Path), CallbackQuery),
    responses((status = 303, description = "Redirect to the redirectUri with the outcome in its query",
            headers(("Location" = String, description = "The redirectUri with `status`, `provider`, `patientId` and `endpointId` or `error` added"))),
        (status = 200, body = CallbackSuccess), (status = 400, body = Problem, description = "Unknown, expired, reused or other-provider state; or the user declined"),
        (status = 404, body = Problem), (status = 422, body = Problem), (status = 502, body = Problem)))]
pub async fn callback(
    State(s): State<Arc<Services>>,
    ApiPath(provider): ApiPath<String>,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> ApiResult<Response> {
    let params = CallbackParams { state: query.state, code: query.code, error: query.error, scope: query.scope };
    let outcome = connect::finish(&s, &provider, params).await?;
    let response = if let Some(page) = crate::connect_sessions::return_url(&s, &outcome) {
        // A connect from the hosted page: back to it (the URL holds the session token).
        (StatusCode::SEE_OTHER, [(header::LOCATION, page.to_string())]).into_response()
    } else if let Some(target) = outcome.redirect_target() {
        (StatusCode::SEE_OTHER, [(header::LOCATION, target.to_string())]).into_response()
    } else {
        match outcome.result {
            Ok(endpoint_id) => Json(CallbackSuccess {
                status: "connected".into(),
                provider: outcome.provider,
                patient_id: outcome.patient_id,
                endpoint_id,
            })
            .into_response(),
            Err(failure) => ApiError::Callback(failure).into_response(),
        }
    };
    Ok(no_store(response))
}

/// Whether the provider's OAuth app is configured (admin). Never a value.
#[utoipa::path(get, path = "/v1/wearables/{provider}/credentials", tag = "wearables", security(("bearer" = ["admin"])),
    params(("provider" = String, Path)),
    responses((status = 200, body = CredentialsResponse), (status = 404, body = Problem)))]
pub async fn get_credentials(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(provider): ApiPath<String>,
) -> ApiResult<Json<CredentialsResponse>> {
    Ok(Json(projects::credentials(&s, &principal, &provider).await?.into()))
}

/// Sets the provider's client id and secret, and optionally its webhook secret (admin).
#[utoipa::path(put, path = "/v1/wearables/{provider}/credentials", tag = "wearables", security(("bearer" = ["admin"])),
    params(("provider" = String, Path)),
    request_body = CredentialsBody,
    responses((status = 200, body = CredentialsResponse), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn put_credentials(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(provider): ApiPath<String>,
    ApiJson(body): ApiJson<CredentialsBody>,
) -> ApiResult<Json<CredentialsResponse>> {
    let new = NewCredentials {
        client_id: body.client_id,
        client_secret: body.client_secret,
        webhook_secret: body.webhook_secret,
    };
    Ok(Json(projects::put_credentials(&s, &principal, &provider, &new).await?.into()))
}

/// Removes the provider's client id, client secret and webhook secret (admin).
#[utoipa::path(delete, path = "/v1/wearables/{provider}/credentials", tag = "wearables", security(("bearer" = ["admin"])),
    params(("provider" = String, Path)),
    responses((status = 200, body = CredentialsResponse), (status = 404, body = Problem)))]
pub async fn delete_credentials(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(provider): ApiPath<String>,
) -> ApiResult<Json<CredentialsResponse>> {
    Ok(Json(projects::delete_credentials(&s, &principal, &provider).await?.into()))
}

// ---- connections ----

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionsQuery {
    pub patient_id: Option<String>,
    pub provider: Option<String>,
}

/// One connection, as the platform documents it, plus our lifecycle fields. Never token material.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// The Endpoint id.
    pub id: String,
    pub provider: String,
    pub patient_id: String,
    pub remote_user_id: String,
    /// Epoch milliseconds.
    pub expires_at: Option<i64>,
    pub scopes: Vec<String>,
    /// `active`, `error` or `off`.
    pub status: String,
    /// Epoch milliseconds.
    pub connected_at: i64,
    /// Epoch milliseconds.
    pub last_refreshed_at: Option<i64>,
    pub last_error: Option<String>,
    /// Data sync of this connection.
    #[schema(value_type = Option<Object>)]
    pub sync: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ConnectionsResponse {
    pub connections: Vec<Connection>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisconnectResponse {
    pub ok: bool,
    /// The provider could not be reached; the revoke is retried in the background.
    pub revoke_pending: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessTokenResponse {
    pub access_token: String,
    pub token_type: String,
    /// Epoch milliseconds.
    pub expires_at: Option<i64>,
}

/// The project's connections, optionally filtered by patient and provider.
#[utoipa::path(get, path = "/v1/wearables/connections", tag = "wearables", security(("bearer" = [])),
    params(ConnectionsQuery),
    responses((status = 200, body = ConnectionsResponse), (status = 404, body = Problem)))]
pub async fn list_connections(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ConnectionsQuery>,
) -> ApiResult<Json<ConnectionsResponse>> {
    let filter = crate::store::ConnectionFilter { patient_id: query.patient_id, provider: query.provider };
    let listed = crate::connections::list(&s, &principal, filter).await?;
    let mut sync = crate::sync::status::views(&s, &principal.project_id, &listed).await?;
    let connections = listed
        .into_iter()
        .map(|c| Connection {
            sync: sync.remove(&c.endpoint_id).and_then(|v| serde_json::to_value(v).ok()),
            id: c.endpoint_id,
            provider: c.provider,
            patient_id: c.patient_id,
            remote_user_id: c.remote_user_id,
            expires_at: c.tokens.as_ref().and(c.expires_at),
            scopes: c.scopes,
            status: c.status,
            connected_at: c.connected_at,
            last_refreshed_at: c.last_refreshed_at,
            last_error: c.last_error,
        })
        .collect();
    Ok(Json(ConnectionsResponse { connections }))
}

/// Disconnects a patient from a provider: revokes upstream, wipes the tokens, sets the Endpoint
/// `off`. Idempotent.
#[utoipa::path(delete, path = "/v1/wearables/{provider}/connections/{patientId}", tag = "wearables",
    security(("bearer" = [])),
    params(("provider" = String, Path), ("patientId" = String, Path)),
    responses((status = 200, body = DisconnectResponse), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
pub async fn disconnect(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiPath((provider, patient_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<DisconnectResponse>> {
    let done = crate::connections::disconnect(&s, &principal, &provider, &patient_id).await?;
    Ok(Json(DisconnectResponse { ok: true, revoke_pending: done.revoke_pending }))
}

/// A currently valid access token for the platform's own data jobs (admin; refreshed first when
/// about to expire). Every call is audited.
#[utoipa::path(post, path = "/v1/wearables/connections/{endpointId}/token", tag = "wearables",
    security(("bearer" = ["admin"])),
    params(("endpointId" = String, Path)),
    responses((status = 200, body = AccessTokenResponse), (status = 404, body = Problem), (status = 409, body = Problem, description = "The connection is not active")))]
pub async fn access_token(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(endpoint_id): ApiPath<String>,
) -> ApiResult<Response> {
    use secrecy::ExposeSecret;
    let grant = crate::connections::access_token(&s, &principal, &endpoint_id).await?;
    let body = AccessTokenResponse {
        access_token: grant.access_token.expose_secret().to_string(),
        token_type: grant.token_type,
        expires_at: grant.expires_at,
    };
    Ok(no_store(Json(body).into_response()))
}

/// A range to resync: epoch milliseconds or FHIR dates/instants (`2026-03-01`, `2026-03-01T00:00:00Z`).
#[derive(Deserialize, ToSchema)]
pub struct ResyncRequest {
    #[schema(value_type = Option<Object>)]
    pub from: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub to: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResyncResponse {
    pub queued: bool,
    /// Epoch milliseconds.
    pub from: i64,
    pub to: i64,
}

fn instant(value: Option<serde_json::Value>, name: &str) -> Result<Option<i64>, crate::Error> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            n.as_i64().map(Some).ok_or_else(|| crate::Error::Invalid(format!("{name} must be epoch milliseconds")))
        }
        Some(serde_json::Value::String(s)) => crate::fhir::search::date_bounds(&s)
            .map(|(lo, _)| Some(lo))
            .ok_or_else(|| crate::Error::Invalid(format!("{name} must be a FHIR date or epoch milliseconds"))),
        Some(_) => Err(crate::Error::Invalid(format!("{name} must be a FHIR date or epoch milliseconds"))),
    }
}

/// Queues a resync of a range (admin). Idempotent: unchanged data keeps its versions.
#[utoipa::path(post, path = "/v1/wearables/connections/{endpointId}/sync", tag = "wearables",
    security(("bearer" = ["admin"])),
    params(("endpointId" = String, Path)),
    request_body(content = ResyncRequest, content_type = "application/json"),
    responses((status = 202, body = ResyncResponse), (status = 404, body = Problem), (status = 409, body = Problem, description = "The connection is not active"),
        (status = 422, body = Problem)))]
pub async fn resync(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(endpoint_id): ApiPath<String>,
    ApiJson(request): ApiJson<ResyncRequest>,
) -> ApiResult<(StatusCode, Json<ResyncResponse>)> {
    let (from, to) = (instant(request.from, "from")?, instant(request.to, "to")?);
    let (from, to) = crate::sync::request_resync(&s, &principal, &endpoint_id, from, to).await?;
    Ok((StatusCode::ACCEPTED, Json(ResyncResponse { queued: true, from, to })))
}
