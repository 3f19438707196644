//! The project's own FHIR server: the check operation, signing-key rotation and the public JWKS.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiResult, Problem};
use super::extract::{Admin, ApiPath};
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
