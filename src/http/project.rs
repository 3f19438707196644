//! `/v1/project/settings` and `/v1/project/secrets`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiResult, Problem};
use super::extract::{Admin, ApiJson, ApiPath};
use crate::projects::{self, Principal};
use crate::Services;

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingsResponse {
    pub project_id: String,
    /// Toggles are booleans (`WEARABLE_STRAVA_ENABLED`); valued settings are strings.
    #[schema(value_type = Object)]
    pub settings: BTreeMap<String, Value>,
}

/// A toggle takes `{"enabled": bool}`; a valued setting takes `{"value": ...}` (the allowlist a
/// string, `WEARABLE_BACKFILL_DAYS` a number of days).
#[derive(Deserialize, ToSchema)]
pub struct SettingBody {
    pub enabled: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub value: Option<serde_json::Value>,
}

#[derive(Deserialize, ToSchema)]
pub struct SecretBody {
    pub value: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    pub key: String,
    /// RFC 3339.
    pub updated_at: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsResponse {
    pub project_id: String,
    pub secrets: Vec<SecretInfo>,
}

/// The project's settings.
#[utoipa::path(get, path = "/v1/project/settings", tag = "project", security(("bearer" = [])),
    responses((status = 200, body = SettingsResponse)))]
pub async fn get_settings(State(s): State<Arc<Services>>, principal: Principal) -> ApiResult<Json<SettingsResponse>> {
    let settings = projects::settings(&s, &principal).await?;
    Ok(Json(SettingsResponse { project_id: principal.project_id, settings }))
}

/// Sets one setting (admin). Answers all settings.
#[utoipa::path(put, path = "/v1/project/settings/{key}", tag = "project", security(("bearer" = ["admin"])),
    params(("key" = String, Path, description = "WEARABLE_<PROVIDER>_ENABLED (one per provider), WEARABLE_REDIRECT_ALLOWLIST, WEARABLE_BACKFILL_DAYS, WEARABLE_CONNECT_FRAME_ANCESTORS FHIR_SERVER_{URL,AUTH,SCOPE,TOKEN_URL,CLIENT_AUTH} (checked against the server when set) or FHIR_SERVER_BUNDLE_SIZE (1..500, default 8)")),
    request_body = SettingBody,
    responses((status = 200, body = SettingsResponse), (status = 404, body = Problem),
        (status = 409, description = "FHIR_SERVER_URL / FHIR_SERVER_TOKEN_URL: a change while FHIR_SERVER_TOKEN or FHIR_SERVER_CLIENT_SECRET is stored (`conflict`)", body = Problem),
        (status = 422, body = Problem),
        (status = 502, description = "FHIR_SERVER_*: the server could not be reached (`fhir_server_unreachable`)", body = Problem)))]
pub async fn put_setting(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(key): ApiPath<String>,
    ApiJson(body): ApiJson<SettingBody>,
) -> ApiResult<Json<SettingsResponse>> {
    let change = projects::SettingChange { enabled: body.enabled, value: body.value };
    let settings = projects::put_setting(&s, &principal, &key, change).await?;
    Ok(Json(SettingsResponse { project_id: principal.project_id, settings }))
}

/// Names and update times of the project's secrets (admin); never values.
#[utoipa::path(get, path = "/v1/project/secrets", tag = "project", security(("bearer" = ["admin"])),
    responses((status = 200, body = SecretsResponse)))]
pub async fn list_secrets(State(s): State<Arc<Services>>, Admin(principal): Admin) -> ApiResult<Json<SecretsResponse>> {
    let secrets = projects::list_secrets(&s, &principal)
        .await?
        .into_iter()
        .map(|(key, updated_at)| SecretInfo { key, updated_at: crate::time::to_rfc3339(updated_at) })
        .collect();
    Ok(Json(SecretsResponse { project_id: principal.project_id, secrets }))
}

/// Stores a secret (admin), encrypted at rest. Write-only: the value is never returned.
#[utoipa::path(put, path = "/v1/project/secrets/{key}", tag = "project", security(("bearer" = ["admin"])),
    params(("key" = String, Path, description = "WEARABLE_<PROVIDER>_{CLIENT_ID,CLIENT_SECRET,WEBHOOK_SECRET} or FHIR_SERVER_{TOKEN,CLIENT_ID,CLIENT_SECRET} (checked against the server when set)")),
    request_body = SecretBody,
    responses((status = 200, body = SecretInfo), (status = 404, body = Problem), (status = 422, body = Problem),
        (status = 502, description = "FHIR_SERVER_*: the server could not be reached (`fhir_server_unreachable`)", body = Problem)))]
pub async fn put_secret(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(key): ApiPath<String>,
    ApiJson(body): ApiJson<SecretBody>,
) -> ApiResult<Json<SecretInfo>> {
    let updated_at = projects::put_secret(&s, &principal, &key, &body.value).await?;
    Ok(Json(SecretInfo { key, updated_at: crate::time::to_rfc3339(updated_at) }))
}

/// Deletes a secret (admin); deleting one that is not set also answers 204.
#[utoipa::path(delete, path = "/v1/project/secrets/{key}", tag = "project", security(("bearer" = ["admin"])),
    params(("key" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_secret(
    State(s): State<Arc<Services>>,
    Admin(principal): Admin,
    ApiPath(key): ApiPath<String>,
) -> ApiResult<StatusCode> {
    projects::delete_secret(&s, &principal, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}
