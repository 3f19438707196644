//! The project's own FHIR server: the check operation, signing-key rotation, the public JWKS, the
//! switch between the stores and the outbox's dead letters.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiResult, Problem};
use super::extract::{Admin, ApiJson, ApiPath, ApiQuery};
use crate::fhir_server;
use crate::Services;

/// What the check found.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FhirServerCheck {
    /// `FHIR_SERVER_URL`.
    pub url: String,
    /// The `fhirVersion` its CapabilityStatement declares (4.0.x).
    pub fhir_version: String,
    /// `transaction` or `batch`: how Bundles will be written.
    pub bundles: String,
    pub software: Option<String>,
    /// `bearer`, `client_credentials` or `private_key_jwt`.
    pub auth: String,
    /// The token URL used (set, or found in the server's SMART configuration).
    pub token_url: Option<String>,
    /// The URL to register at the platform for `private_key_jwt`.
    pub jwks_url: String,
    /// Always `ok`: a failed check answers a problem instead.
    pub credentials: String,
}

/// A JWK Set (RFC 7517): the project's public signing keys.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct JwkSet {
    /// `{kty: "EC", crv: "P-384", x, y, kid, alg: "ES384", use: "sig"}` each, newest first.
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<Value>,
}

/// Checks the project's FHIR server (admin): its address, its CapabilityStatement, a token
/// request and an authenticated read with the stored credentials.
#[utoipa::path(post, path = "/v1/project/fhir-server/check", tag = "project", security(("bearer" = ["admin"])),
    responses(
        (status = 200, body = FhirServerCheck),
        (status = 409, description = "No FHIR_SERVER_URL is set (`fhir_server_not_configured`)", body = Problem),
        (status = 422, description = "Incomplete (`fhir_server_incomplete`, naming what to set), a refused address (`validation_failed`), a server that does not qualify (`fhir_server_unsuitable`) or credentials it does not accept (`fhir_server_auth_failed`)", body = Problem),
        (status = 502, description = "The server (or its token URL) could not be reached or failed (`fhir_server_unreachable`, `fhir_server_failed`)", body = Problem)))]
pub async fn check(State(s): State<Arc<Services>>, Admin(principal): Admin) -> ApiResult<Json<FhirServerCheck>> {
    let report = fhir_server::check_project(&s, &principal).await?;
    Ok(Json(FhirServerCheck {
        url: report.url,
        fhir_version: report.fhir_version,
        bundles: report.bundles.into(),
        software: report.software,
        auth: report.auth.map(|a| a.as_str().to_string()).unwrap_or_default(),
        token_url: report.token_url,
        jwks_url: report.jwks_url,
        credentials: "ok".into(),
    }))
}

/// Makes a new signing key for `private_key_jwt` (admin); it signs from now on, and the key it
/// replaces stays in the JWKS for 7 days. Answers the JWKS as now served.
#[utoipa::path(post, path = "/v1/project/fhir-server/keys", tag = "project", security(("bearer" = ["admin"])),
    responses((status = 200, body = JwkSet)))]
pub async fn rotate_keys(State(s): State<Arc<Services>>, Admin(principal): Admin) -> ApiResult<Json<Value>> {
    Ok(Json(fhir_server::rotate_keys(&s, &principal).await?))
}

/// The project's public signing keys, for the platform's FHIR server to verify Wearlink's client
/// assertions (SMART Backend Services). No token: register this URL at the platform.
#[utoipa::path(get, path = "/v1/projects/{projectId}/jwks.json", tag = "project",
    params(("projectId" = String, Path, description = "The project's id")),
    responses(
        (status = 200, content_type = "application/json", body = JwkSet),
        (status = 404, description = "No such project", body = Problem)))]
pub async fn jwks(
    State(s): State<Arc<Services>>,
    ApiPath(project_id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let keys = fhir_server::jwks(&s, &project_id).await?;
    // Verifiers cache it; a short lifetime lets a rotation reach them soon.
    Ok(([(header::CACHE_CONTROL, "public, max-age=300")], Json(keys)))
}

/// `{"store": "server" | "embedded"}`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SwitchBody {
    /// `server`: write into the project's FHIR server (copies every current resource there);
    /// `embedded`: Wearlink's own store only.
    pub store: String,
}

/// A switch between the stores and its progress.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchInfo {
    pub id: String,
    /// `server` or `embedded`.
    pub target: String,
    /// Resources the switch queued for the server.
    pub total: i64,
    /// Written (or replaced by a newer version written since).
    pub done: i64,
    pub pending: i64,
    /// Dead letters (`GET /v1/fhir-outbox?state=dead`).
    pub dead: i64,
    /// Epoch milliseconds.
    pub started_at: i64,
    /// Epoch milliseconds; null while rows are pending.
    pub finished_at: Option<i64>,
}

/// Where the project's FHIR resources are written.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FhirStoreInfo {
    /// `embedded` (Wearlink's store only) or `server` (also written into the project's FHIR server).
    pub store: String,
    /// The latest switch, if any.
    pub switch: Option<SwitchInfo>,
}

impl From<fhir_server::outbox::StoreView> for FhirStoreInfo {
    fn from(view: fhir_server::outbox::StoreView) -> Self {
        FhirStoreInfo {
            store: view.mode.into(),
            switch: view.switch.map(|s| SwitchInfo {
                done: (s.total - s.pending - s.dead).max(0),
                id: s.id,
                target: s.target,
                total: s.total,
                pending: s.pending,
                dead: s.dead,
                started_at: s.started_at,
                finished_at: s.finished_at,
            }),
        }
    }
}

/// Where the project's FHIR resources are written, and the latest switch's progress (admin).
#[utoipa::path(get, path = "/v1/project/fhir-store", tag = "project", security(("bearer" = ["admin"])),
    responses((status = 200, body = FhirStoreInfo)))]
pub async fn get_store(State(s): State<Arc<Services>>, Admin(principal): Admin) -> ApiResult<Json<FhirStoreInfo>> {
    Ok(Json(fhir_server::outbox::store_view(&s, &principal).await?.into()))
}

/// Switches the project between the embedded store and its own FHIR server (admin). To `server`:
/// the configuration must be complete and pass its checks; every current Endpoint and synced
/// resource is queued for the server with the flip, and every later change follows. To
/// `embedded`: nothing more is queued; what is pending is still written. The same mode again
/// changes nothing.
#[utoipa::path(post, path = "/v1/project/fhir-store", tag = "project", security(("bearer" = ["admin"])),
    request_body = SwitchBody,
    responses((status = 200, body = FhirStoreInfo),
        (status = 409, description = "A switch is still copying (`conflict`)", body = Problem),
        (status = 422, description = "Not `server` or `embedded` (`validation_failed`), or the FHIR server's configuration is incomplete or fails its checks (`fhir_server_incomplete`, `fhir_server_unsuitable`, `fhir_server_auth_failed`)", body = Problem),
        (status = 502, description = "The FHIR server could not be reached (`fhir_server_unreachable`, `fhir_server_failed`)", body = Problem)))]
pub async fn switch_store(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiJson(body): ApiJson<SwitchBody>,
) -> ApiResult<Json<FhirStoreInfo>> {
    Ok(Json(fhir_server::outbox::switch(&s, &principal, &body.store).await?.into()))
}

#[derive(Deserialize, IntoParams)]
pub struct OutboxQuery {
    /// `dead` (default) or `pending`.
    pub state: Option<String>,
    /// Rows after this id (the last id of the previous page).
    pub after: Option<i64>,
    /// 1..500 (100).
    pub limit: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
pub struct ReplayQuery {
    /// `dead` (default) or `pending` (tried again now).
    pub state: Option<String>,
}

/// A resource waiting to be written into the project's FHIR server, or refused by it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    pub id: String,
    /// `Type/id` in Wearlink's store.
    pub resource: String,
    /// The version queued (the write sends the then-current one).
    pub version_id: i64,
    /// `pending` or `dead`.
    pub state: String,
    pub attempts: i64,
    /// Epoch milliseconds.
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    /// The server's OperationOutcome that refused it (dead letters).
    #[schema(value_type = Option<Object>)]
    pub outcome: Option<Value>,
    /// The switch that queued it.
    pub switch_id: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxPage {
    pub entries: Vec<OutboxEntry>,
    /// The `after` of the next page; null on the last page.
    pub next_after: Option<i64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ReplayedResponse {
    pub replayed: u64,
}

/// The project's FHIR outbox (admin): dead letters (default) or pending rows, oldest first.
#[utoipa::path(get, path = "/v1/fhir-outbox", tag = "project", security(("bearer" = ["admin"])),
    params(OutboxQuery),
    responses((status = 200, body = OutboxPage), (status = 422, body = Problem)))]
pub async fn list_outbox(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiQuery(q): ApiQuery<OutboxQuery>,
) -> ApiResult<Json<OutboxPage>> {
    let limit = q.limit;
    let rows = fhir_server::outbox::list(&s, &principal, q.state.as_deref(), q.after, limit).await?;
    let full = rows.len() as i64 == limit.unwrap_or(100);
    let next_after = if full { rows.last().map(|r| r.seq) } else { None };
    let entries = rows
        .into_iter()
        .map(|r| OutboxEntry {
            id: r.seq.to_string(),
            resource: format!("{}/{}", r.resource_type, r.resource_id),
            version_id: r.version_id,
            state: r.state,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            outcome: r.outcome,
            switch_id: r.switch_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect();
    Ok(Json(OutboxPage { entries, next_after }))
}

/// Sends one row again (admin): a dead letter goes back to pending, with the resource's
/// then-current body; a pending row is tried now.
#[utoipa::path(post, path = "/v1/fhir-outbox/{id}/replay", tag = "project", security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "An outbox entry's id")),
    responses((status = 202), (status = 404, body = Problem)))]
pub async fn replay_outbox(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    fhir_server::outbox::replay(&s, &principal, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Sends every row of a state again (admin): dead letters (default) back to pending, or pending
/// rows now. Answers how many.
#[utoipa::path(post, path = "/v1/fhir-outbox/replay", tag = "project", security(("bearer" = ["admin"])),
    params(ReplayQuery),
    responses((status = 202, body = ReplayedResponse), (status = 422, body = Problem)))]
pub async fn replay_all_outbox(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiQuery(q): ApiQuery<ReplayQuery>,
) -> ApiResult<(StatusCode, Json<ReplayedResponse>)> {
    let replayed = fhir_server::outbox::replay_all(&s, &principal, q.state.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(ReplayedResponse { replayed })))
}
