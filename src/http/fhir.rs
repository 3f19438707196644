//! `/fhir/R4`: the CapabilityStatement, Patient create and read, Endpoint, Observation and
//! Procedure read and search, and any kept version, spoken as FHIR: `application/fhir+json`
//! both ways (`application/json` accepted, `_format` honoured) and every error an
//! `OperationOutcome` (the [`outcomes`] layer).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{ApiJson, ApiPath};
use crate::projects::Principal;
use crate::store::StoredResource;
use crate::{fhir, Services};

/// FHIR asks servers to name the charset (R4 http.html, "Content Types and encodings").
const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Where the FHIR conventions apply.
pub fn is_fhir_path(path: &str) -> bool {
    path == "/fhir/R4" || path.starts_with("/fhir/R4/")
}

/// The public base of the FHIR API (`fullUrl`s and links start with it).
fn fhir_base(s: &Services) -> String {
    format!("{}/fhir/R4", s.config.base_url.as_str().trim_end_matches('/'))
}

fn fhir_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// A resource with its version as `ETag`, as FHIR servers answer reads.
fn resource_response(status: StatusCode, resource: &StoredResource) -> Response {
    let mut response = fhir_response(status, &resource.body);
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", resource.version_id)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// Rewrites every error answered under `/fhir/R4` (handlers, extractors, the 404/405 fallbacks,
/// the time limit) into an `OperationOutcome`, keeping its status and `WWW-Authenticate`.
/// A layer rather than a second error mapping: `ApiError` stays the one place that decides
/// status and code, and nothing under `/fhir/R4` can slip out as problem+json.
pub async fn outcomes(request: Request, next: Next) -> Response {
    if !is_fhir_path(request.uri().path()) {
        return next.run(request).await;
    }
    let mut response = next.run(request).await;
    let Some(problem) = response.extensions_mut().remove::<Problem>() else {
        return response;
    };
    let outcome = fhir::operation_outcome(issue_type(&problem), &problem.code, &problem.title, &problem.detail);
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    Response::from_parts(parts, Body::from(outcome.to_string()))
}

/// The FHIR issue type (`http://hl7.org/fhir/issue-type`) of one of our errors.
fn issue_type(problem: &Problem) -> &'static str {
    match problem.code.as_str() {
        "unauthorized" => "login",
        "forbidden" => "forbidden",
        "not_found" => "not-found",
        "malformed_json" => "structure",
        "validation_failed" | "bad_request" => "invalid",
        "payload_too_large" => "too-long",
        "method_not_allowed" | "not_acceptable" | "unsupported_media_type" => "not-supported",
        "conflict" => "conflict",
        // Not an error of the request: the data is served by another server.
        "fhir_data_on_server" => "not-supported",
        "timeout" => "timeout",
        "unavailable" => "transient",
        _ if problem.status >= 500 => "exception",
        _ => "processing",
    }
}

fn is_json_media(media: &str) -> bool {
    // `application/json+fhir` is the DSTU2 name some clients still send; a `+` in `_format`
    // arrives as a space when not percent-encoded.
    matches!(
        media.trim().to_ascii_lowercase().replace(' ', "+").as_str(),
        "json" | "application/json" | "application/fhir+json" | "application/json+fhir"
    )
}

/// The answer's format, negotiated: `_format` when given (it overrides `Accept`, as FHIR says),
/// else `Accept`; anything but JSON is 406. Put after `Principal` so that who may ask is
/// answered before how.
pub struct FhirFormat;

impl<S: Send + Sync> FromRequestParts<S> for FhirFormat {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        if let Some((_, format)) = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "_format") {
            let media = format.split(';').next().unwrap_or_default();
            if !is_json_media(media) {
                return Err(ApiError::NotAcceptable(format!("_format {format} is not served: use json")));
            }
            return Ok(FhirFormat);
        }
        let Some(accept) = parts.headers.get(header::ACCEPT) else {
            return Ok(FhirFormat);
        };
        let accept = accept.to_str().unwrap_or_default();
        let acceptable = accept.trim().is_empty()
            || accept.split(',').any(|item| {
                let mut fields = item.split(';');
                let media = fields.next().unwrap_or_default().trim().to_ascii_lowercase();
                let refused = fields.any(|f| {
                    f.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()).is_some_and(|q| q <= 0.0)
                });
                !refused && (is_json_media(&media) || media == "*/*" || media == "application/*")
            });
        if !acceptable {
            return Err(ApiError::NotAcceptable(format!(
                "Accept {accept} names no format we write: use application/fhir+json"
            )));
        }
        Ok(FhirFormat)
    }
}

/// A FHIR JSON body: `application/fhir+json` or `application/json`. A body declared as another
/// FHIR format (XML, RDF) is 415; any other declared type (curl's default form type) is judged,
/// as everywhere in this API, by what the body is.
pub struct FhirJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for FhirJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(declared) = req.headers().get(header::CONTENT_TYPE) {
            let declared = declared.to_str().unwrap_or_default().to_ascii_lowercase();
            let media = declared.split(';').next().unwrap_or_default().trim();
            if media.contains("xml") || media.contains("turtle") || media.contains("rdf") {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "a body of type {media} is not read: send application/fhir+json"
                )));
            }
        }
        let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
        Ok(FhirJson(value))
    }
}

/// What the OpenAPI document says a FHIR resource is: any object naming its `resourceType`.
#[derive(Serialize, ToSchema)]
#[schema(as = FhirResource)]
pub struct FhirResourceDoc {
    #[serde(rename = "resourceType")]
    pub resource_type: String,
    pub id: Option<String>,
    #[schema(value_type = Object)]
    pub meta: Option<Value>,
}

/// A new Patient: any FHIR R4 Patient (`id` and `meta` are assigned by the server).
#[derive(Serialize, ToSchema)]
#[schema(as = PatientInput)]
pub struct PatientInputDoc {
    /// `Patient`
    #[serde(rename = "resourceType")]
    #[schema(pattern = "^Patient$")]
    pub resource_type: String,
}

#[derive(Serialize, ToSchema)]
pub struct BundleLink {
    /// `self`, `next` or `previous`
    pub relation: String,
    pub url: String,
}

#[derive(Serialize, ToSchema)]
pub struct BundleEntrySearch {
    /// `match`
    pub mode: String,
}

#[derive(Serialize, ToSchema)]
pub struct BundleEntry {
    /// `<WEARLINK_BASE_URL>/fhir/R4/<type>/<id>`
    #[serde(rename = "fullUrl")]
    pub full_url: String,
    pub resource: FhirResourceDoc,
    pub search: BundleEntrySearch,
}

/// A searchset Bundle: one page of `total` matches, with `self`, `next` and `previous` links.
#[derive(Serialize, ToSchema)]
#[schema(as = Bundle)]
pub struct BundleDoc {
    /// `Bundle`
    #[serde(rename = "resourceType")]
    pub resource_type: String,
    /// `searchset`
    #[serde(rename = "type")]
    pub bundle_type: String,
    pub total: i64,
    pub link: Vec<BundleLink>,
    /// Absent when the page has no matches (FHIR JSON has no empty arrays).
    pub entry: Option<Vec<BundleEntry>>,
}

#[derive(Serialize, ToSchema)]
pub struct OutcomeCoding {
    /// `https://wearlink.dev/problems`
    pub system: String,
    /// Our stable error code (the `code` of problem+json elsewhere).
    pub code: String,
    pub display: String,
}

#[derive(Serialize, ToSchema)]
pub struct OutcomeDetails {
    pub coding: Vec<OutcomeCoding>,
    /// What went wrong, for people.
    pub text: String,
}

#[derive(Serialize, ToSchema)]
pub struct OutcomeIssue {
    /// `error`
    pub severity: String,
    /// A code of the FHIR issue-type value set (`login`, `forbidden`, `not-found`, `invalid`,
    /// `structure`, `not-supported`, `too-long`, `timeout`, `transient`, `exception`, …).
    pub code: String,
    pub details: OutcomeDetails,
}

/// Every error under `/fhir/R4`.
#[derive(Serialize, ToSchema)]
#[schema(as = OperationOutcome)]
pub struct OperationOutcomeDoc {
    /// `OperationOutcome`
    #[serde(rename = "resourceType")]
    pub resource_type: String,
    pub issue: Vec<OutcomeIssue>,
}

/// What the server supports, as FHIR clients read it first (no token needed).
#[derive(Serialize, ToSchema)]
#[schema(as = CapabilityStatement)]
pub struct CapabilityStatementDoc {
    /// `CapabilityStatement`
    #[serde(rename = "resourceType")]
    pub resource_type: String,
    pub status: String,
    pub date: String,
    pub kind: String,
    #[serde(rename = "fhirVersion")]
    pub fhir_version: String,
    pub format: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    pub rest: Vec<Value>,
}

/// The CapabilityStatement: resource types, interactions and search parameters served here.
#[utoipa::path(get, path = "/fhir/R4/metadata", tag = "fhir",
    responses((status = 200, description = "The CapabilityStatement", content_type = "application/fhir+json", body = CapabilityStatementDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "Timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn metadata(State(s): State<Arc<Services>>, _format: FhirFormat) -> Response {
    let date = crate::time::to_rfc3339(crate::time::now_ms());
    fhir_response(StatusCode::OK, &fhir::capability::capability_statement(&fhir_base(&s), &date))
}

/// Creates a Patient in the caller's project; the server assigns `id` and `meta`.
#[utoipa::path(post, path = "/fhir/R4/Patient", tag = "fhir", security(("bearer" = [])),
    request_body(content((PatientInputDoc = "application/fhir+json"), (PatientInputDoc = "application/json")), description = "A FHIR R4 Patient"),
    responses((status = 201, description = "The stored Patient", content_type = "application/fhir+json", body = FhirResourceDoc),
        (status = 400, description = "The body is not JSON", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 401, description = "No or an unknown API token", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 409, description = "The project writes its FHIR data to its own FHIR server (`fhir_data_on_server`): read it there", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 413, description = "The body is over 1 MiB", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 415, description = "The body is FHIR XML or RDF", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 422, description = "The body is not a Patient", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "The database is unavailable or the request timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn create_patient(
    State(s): State<Arc<Services>>,
    principal: Principal,
    _format: FhirFormat,
    FhirJson(body): FhirJson<Value>,
) -> ApiResult<Response> {
    let stored = fhir::create_patient(&s, &principal, body).await?;
    let mut response = resource_response(StatusCode::CREATED, &stored);
    let location = format!("{}/Patient/{}/_history/1", fhir_base(&s), stored.id);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/fhir/R4/Patient/{id}", tag = "fhir", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9.-]{1,64}$"), FormatParam),
    responses((status = 200, description = "The Patient", content_type = "application/fhir+json", body = FhirResourceDoc),
        (status = 401, description = "No or an unknown API token", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 409, description = "The project writes its FHIR data to its own FHIR server (`fhir_data_on_server`): read it there", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 404, description = "Not found in the caller's project", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "The database is unavailable or the request timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn read_patient(
    State(s): State<Arc<Services>>,
    principal: Principal,
    _format: FhirFormat,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read(&s, &principal, "Patient", &id).await?))
}

/// An Endpoint: one per connected (patient, provider). Token material is never part of it.
#[utoipa::path(get, path = "/fhir/R4/Endpoint/{id}", tag = "fhir", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9.-]{1,64}$"), FormatParam),
    responses((status = 200, description = "The Endpoint", content_type = "application/fhir+json", body = FhirResourceDoc),
        (status = 401, description = "No or an unknown API token", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 409, description = "The project writes its FHIR data to its own FHIR server (`fhir_data_on_server`): read it there", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 404, description = "Not found in the caller's project", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "The database is unavailable or the request timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn read_endpoint(
    State(s): State<Arc<Services>>,
    principal: Principal,
    _format: FhirFormat,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read(&s, &principal, "Endpoint", &id).await?))
}

/// `_format`, taken by every FHIR route.
#[allow(dead_code)]
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FormatParam {
    /// Overrides `Accept`; XML and other formats are 406.
    #[serde(rename = "_format")]
    #[param(rename = "_format", inline)]
    pub format: Option<FormatName>,
}

/// The `_format` values served.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
pub enum FormatName {
    #[serde(rename = "json")]
    Json,
    #[serde(rename = "application/fhir+json")]
    FhirJson,
    #[serde(rename = "application/json")]
    ApplicationJson,
}

/// Documents the parameters; the query itself is read as pairs (parameters repeat).
#[allow(dead_code)]
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EndpointSearch {
    /// `Patient/<id>` (or a bare id); required.
    #[param(pattern = "^(Patient/)?[A-Za-z0-9.-]{1,64}$")]
    pub patient: String,
    /// Page size (default 50; more than 1000 answers 1000; 0 answers the total only).
    #[serde(rename = "_count")]
    #[param(rename = "_count", minimum = 0)]
    pub count: Option<i64>,
    #[serde(rename = "_offset")]
    #[param(rename = "_offset", minimum = 0)]
    pub offset: Option<i64>,
}

/// Endpoints of a patient, as a paged searchset Bundle.
#[utoipa::path(get, path = "/fhir/R4/Endpoint", tag = "fhir", security(("bearer" = [])),
    params(EndpointSearch, FormatParam),
    responses((status = 200, description = "searchset Bundle", content_type = "application/fhir+json", body = BundleDoc),
        (status = 401, description = "No or an unknown API token", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 409, description = "The project writes its FHIR data to its own FHIR server (`fhir_data_on_server`): read it there", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 422, description = "A search parameter is unknown or invalid, or the patient is missing", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "The database is unavailable or the request timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn search_endpoints(
    State(s): State<Arc<Services>>,
    principal: Principal,
    _format: FhirFormat,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    search(&s, &principal, "Endpoint", &uri).await
}

/// A synced Observation (from a provider's data; see docs/data-sync.md).
#[utoipa::path(get, path = "/fhir/R4/Observation/{id}", tag = "fhir", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9.-]{1,64}$"), FormatParam),
    responses((status = 200, description = "The Observation", content_type = "application/fhir+json", body = FhirResourceDoc),
        (status = 401, description = "No or an unknown API token", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 409, description = "The project writes its FHIR data to its own FHIR server (`fhir_data_on_server`): read it there", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 404, description = "Not found in the caller's project", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "The database is unavailable or the request timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn read_observation(
    State(s): State<Arc<Services>>,
    principal: Principal,
    _format: FhirFormat,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read(&s, &principal, "Observation", &id).await?))
}

/// A synced Procedure (an exercise session).
#[utoipa::path(get, path = "/fhir/R4/Procedure/{id}", tag = "fhir", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9.-]{1,64}$"), FormatParam),
    responses((status = 200, description = "The Procedure", content_type = "application/fhir+json", body = FhirResourceDoc),
        (status = 401, description = "No or an unknown API token", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 409, description = "The project writes its FHIR data to its own FHIR server (`fhir_data_on_server`): read it there", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 404, description = "Not found in the caller's project", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "The database is unavailable or the request timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn read_procedure(
    State(s): State<Arc<Services>>,
    principal: Principal,
    _format: FhirFormat,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read(&s, &principal, "Procedure", &id).await?))
}

/// A device that measured synced data (a CGM transmitter), referenced by its readings.
#[utoipa::path(get, path = "/fhir/R4/Device/{id}", tag = "fhir", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9.-]{1,64}$"), FormatParam),
    responses((status = 200, description = "The Device", content_type = "application/fhir+json", body = FhirResourceDoc),
        (status = 401, description = "No or an unknown API token", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 409, description = "The project writes its FHIR data to its own FHIR server (`fhir_data_on_server`): read it there", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 404, description = "Not found in the caller's project", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "The database is unavailable or the request timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn read_device(
    State(s): State<Arc<Services>>,
    principal: Principal,
    _format: FhirFormat,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read(&s, &principal, "Device", &id).await?))
}

/// One version of a resource.
#[utoipa::path(get, path = "/fhir/R4/{type}/{id}/_history/{vid}", tag = "fhir", security(("bearer" = [])),
    params(("type" = String, Path), ("id" = String, Path, pattern = "^[A-Za-z0-9.-]{1,64}$"), ("vid" = String, Path), FormatParam),
    responses((status = 200, description = "That version", content_type = "application/fhir+json", body = FhirResourceDoc),
        (status = 401, description = "No or an unknown API token", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 409, description = "The project writes its FHIR data to its own FHIR server (`fhir_data_on_server`): read it there", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 404, description = "Not found in the caller's project", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "The database is unavailable or the request timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn read_version(
    State(s): State<Arc<Services>>,
    principal: Principal,
    _format: FhirFormat,
    ApiPath((resource_type, id, version)): ApiPath<(String, String, String)>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read_version(&s, &principal, &resource_type, &id, &version).await?))
}

/// Documents the Observation search parameters; the query itself is read as pairs (parameters repeat).
#[allow(dead_code)]
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ObservationSearch {
    /// `Patient/<id>` (required; `subject` is the same).
    #[param(pattern = "^(Patient/)?[A-Za-z0-9.-]{1,64}$")]
    pub patient: String,
    /// `system|code` or `code`; commas for alternatives; repeatable.
    #[param(pattern = "^([^|,]*[|])?[^|,]+(,([^|,]*[|])?[^|,]+)*$")]
    pub code: Option<String>,
    /// Observation categories, as `code`.
    #[param(pattern = "^([^|,]*[|])?[^|,]+(,([^|,]*[|])?[^|,]+)*$")]
    pub category: Option<String>,
    /// `ge`, `le`, `gt`, `lt` (or no) prefix and a FHIR date; repeatable.
    #[param(
        pattern = "^(eq|ge|le|gt|lt)?[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|1[0-9]|2[0-8])(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?)?)?)?$"
    )]
    pub date: Option<String>,
    /// Page size (default 50; more than 1000 answers 1000; 0 answers the total only).
    #[serde(rename = "_count")]
    #[param(rename = "_count", minimum = 0)]
    pub count: Option<i64>,
    #[serde(rename = "_offset")]
    #[param(rename = "_offset", minimum = 0)]
    pub offset: Option<i64>,
    /// `date` or `-date`.
    #[serde(rename = "_sort")]
    #[param(rename = "_sort", pattern = "^-?date$")]
    pub sort: Option<String>,
}

/// Documents the Procedure search parameters; the query itself is read as pairs (parameters repeat).
#[allow(dead_code)]
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProcedureSearch {
    /// `Patient/<id>` (required; `subject` is the same).
    #[param(pattern = "^(Patient/)?[A-Za-z0-9.-]{1,64}$")]
    pub patient: String,
    /// `system|code` or `code`; commas for alternatives; repeatable.
    #[param(pattern = "^([^|,]*[|])?[^|,]+(,([^|,]*[|])?[^|,]+)*$")]
    pub code: Option<String>,
    /// `ge`, `le`, `gt`, `lt` (or no) prefix and a FHIR date; repeatable.
    #[param(
        pattern = "^(eq|ge|le|gt|lt)?[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|1[0-9]|2[0-8])(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?)?)?)?$"
    )]
    pub date: Option<String>,
    /// Page size (default 50; more than 1000 answers 1000; 0 answers the total only).
    #[serde(rename = "_count")]
    #[param(rename = "_count", minimum = 0)]
    pub count: Option<i64>,
    #[serde(rename = "_offset")]
    #[param(rename = "_offset", minimum = 0)]
    pub offset: Option<i64>,
    /// `date` or `-date`.
    #[serde(rename = "_sort")]
    #[param(rename = "_sort", pattern = "^-?date$")]
    pub sort: Option<String>,
}

/// A search of `resource_type` as a searchset Bundle with `self`, `next` and `previous` links
/// (offset paging: the links repeat the query with another `_offset`).
async fn search(
    s: &Services,
    principal: &Principal,
    resource_type: &str,
    uri: &axum::http::Uri,
) -> ApiResult<Response> {
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let (total, found, query) = fhir::search(s, principal, resource_type, &params).await?;
    let base = fhir_base(s);
    let at = |offset: i64| {
        let mut kept: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "_offset").cloned().collect();
        kept.push(("_offset".into(), offset.to_string()));
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish();
        format!("{base}/{resource_type}?{query}")
    };
    let mut links = vec![("self", at(query.offset))];
    if query.count > 0 && query.offset + (found.len() as i64) < total {
        links.push(("next", at(query.offset + query.count)));
    }
    if query.count > 0 && query.offset > 0 {
        links.push(("previous", at((query.offset - query.count).max(0))));
    }
    Ok(fhir_response(StatusCode::OK, &fhir::searchset(&links, &base, total, &found)))
}

/// Observations of a patient, as a paged searchset Bundle.
#[utoipa::path(get, path = "/fhir/R4/Observation", tag = "fhir", security(("bearer" = [])),
    params(ObservationSearch, FormatParam),
    responses((status = 200, description = "searchset Bundle", content_type = "application/fhir+json", body = BundleDoc),
        (status = 401, description = "No or an unknown API token", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 409, description = "The project writes its FHIR data to its own FHIR server (`fhir_data_on_server`): read it there", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 422, description = "A search parameter is unknown or invalid, or the patient is missing", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "The database is unavailable or the request timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn search_observations(
    State(s): State<Arc<Services>>,
    principal: Principal,
    _format: FhirFormat,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    search(&s, &principal, "Observation", &uri).await
}

/// Procedures (exercise sessions) of a patient, as a paged searchset Bundle.
#[utoipa::path(get, path = "/fhir/R4/Procedure", tag = "fhir", security(("bearer" = [])),
    params(ProcedureSearch, FormatParam),
    responses((status = 200, description = "searchset Bundle", content_type = "application/fhir+json", body = BundleDoc),
        (status = 401, description = "No or an unknown API token", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 409, description = "The project writes its FHIR data to its own FHIR server (`fhir_data_on_server`): read it there", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 406, description = "A format other than JSON was asked for", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 422, description = "A search parameter is unknown or invalid, or the patient is missing", content_type = "application/fhir+json", body = OperationOutcomeDoc),
        (status = 503, description = "The database is unavailable or the request timed out", content_type = "application/fhir+json", body = OperationOutcomeDoc)))]
pub async fn search_procedures(
    State(s): State<Arc<Services>>,
    principal: Principal,
    _format: FhirFormat,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    search(&s, &principal, "Procedure", &uri).await
}
