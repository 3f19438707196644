//! `/fhir/R4`: Patient create and read, Endpoint read and search by patient.

use std::sync::Arc;

use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use super::error::{ApiResult, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use crate::projects::Principal;
use crate::store::StoredResource;
use crate::{fhir, Services};

const FHIR_JSON: &str = "application/fhir+json";

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

/// A FHIR R4 Patient to create: any Patient (`resourceType` is all that is checked); `id` and
/// `meta` are the server's. Documents the body, which the handler reads as JSON.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct NewPatient {
    #[schema(rename = "resourceType")]
    resource_type: PatientType,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum PatientType {
    Patient,
}

/// Creates a Patient in the caller's project; the server assigns `id` and `meta`.
#[utoipa::path(post, path = "/fhir/R4/Patient", tag = "fhir", security(("bearer" = [])),
    request_body(content = NewPatient, content_type = "application/fhir+json", description = "A FHIR R4 Patient"),
    responses((status = 201, description = "The stored Patient", content_type = "application/fhir+json", body = Object),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn create_patient(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let stored = fhir::create_patient(&s, &principal, body).await?;
    let mut response = resource_response(StatusCode::CREATED, &stored);
    let location =
        format!("{}/fhir/R4/Patient/{}/_history/1", s.config.base_url.as_str().trim_end_matches('/'), stored.id);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/fhir/R4/Patient/{id}", tag = "fhir", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, content_type = "application/fhir+json", body = Object), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn read_patient(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read(&s, &principal, "Patient", &id).await?))
}

/// An Endpoint: one per connected (patient, provider). Token material is never part of it.
#[utoipa::path(get, path = "/fhir/R4/Endpoint/{id}", tag = "fhir", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, content_type = "application/fhir+json", body = Object), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn read_endpoint(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read(&s, &principal, "Endpoint", &id).await?))
}

#[derive(Deserialize, IntoParams)]
pub struct EndpointSearch {
    /// `Patient/<id>` (or a bare id).
    pub patient: Option<String>,
}

/// Endpoints of a patient, as a searchset Bundle.
#[utoipa::path(get, path = "/fhir/R4/Endpoint", tag = "fhir", security(("bearer" = [])),
    params(EndpointSearch),
    responses((status = 200, description = "searchset Bundle", content_type = "application/fhir+json", body = Object),
        (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn search_endpoints(
    State(s): State<Arc<Services>>,
    principal: Principal,
    OriginalUri(uri): OriginalUri,
    ApiQuery(search): ApiQuery<EndpointSearch>,
) -> ApiResult<Response> {
    let patient =
        search.patient.ok_or_else(|| crate::Error::Invalid("search by patient: ?patient=Patient/<id>".into()))?;
    let found = fhir::endpoints_of(&s, &principal, &patient).await?;
    let base = s.config.base_url.as_str().trim_end_matches('/');
    let self_url = format!("{base}{uri}");
    Ok(fhir_response(StatusCode::OK, &fhir::searchset(&self_url, base, &found)))
}

/// A synced Observation (from a provider's data; see docs/data-sync.md).
#[utoipa::path(get, path = "/fhir/R4/Observation/{id}", tag = "fhir", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, content_type = "application/fhir+json", body = Object), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn read_observation(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read(&s, &principal, "Observation", &id).await?))
}

/// A synced Procedure (an exercise session).
#[utoipa::path(get, path = "/fhir/R4/Procedure/{id}", tag = "fhir", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, content_type = "application/fhir+json", body = Object), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn read_procedure(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read(&s, &principal, "Procedure", &id).await?))
}

/// One version of a resource.
#[utoipa::path(get, path = "/fhir/R4/{type}/{id}/_history/{vid}", tag = "fhir", security(("bearer" = [])),
    params(("type" = String, Path), ("id" = String, Path), ("vid" = String, Path)),
    responses((status = 200, content_type = "application/fhir+json", body = Object), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn read_version(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiPath((resource_type, id, version)): ApiPath<(String, String, String)>,
) -> ApiResult<Response> {
    Ok(resource_response(StatusCode::OK, &fhir::read_version(&s, &principal, &resource_type, &id, &version).await?))
}

/// Documents the parameters; the query itself is read as pairs (parameters repeat).
#[allow(dead_code)]
#[derive(Deserialize, IntoParams)]
pub struct ResourceSearch {
    /// `Patient/<id>` (required).
    pub patient: Option<String>,
    /// `system|code` or `code`; commas for alternatives; repeatable.
    pub code: Option<String>,
    /// Observation categories, as `code`.
    pub category: Option<String>,
    /// `ge`, `le`, `gt`, `lt` (or no) prefix and a FHIR date; repeatable.
    pub date: Option<String>,
    #[serde(rename = "_count")]
    #[param(rename = "_count")]
    pub count: Option<String>,
    #[serde(rename = "_offset")]
    #[param(rename = "_offset")]
    pub offset: Option<String>,
    /// `date` or `-date`.
    #[serde(rename = "_sort")]
    #[param(rename = "_sort")]
    pub sort: Option<String>,
}

async fn search_synced(
    s: &Services,
    principal: &Principal,
    resource_type: &str,
    uri: &axum::http::Uri,
) -> ApiResult<Response> {
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let (total, found, query) = fhir::search(s, principal, resource_type, &params).await?;
    let base = s.config.base_url.as_str().trim_end_matches('/');
    let self_url = format!("{base}{uri}");
    let next = (query.offset + (found.len() as i64) < total && query.count > 0).then(|| {
        let mut kept: Vec<(String, String)> = params.into_iter().filter(|(k, _)| k != "_offset").collect();
        kept.push(("_offset".into(), (query.offset + query.count).to_string()));
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish();
        format!("{base}/fhir/R4/{resource_type}?{query}")
    });
    Ok(fhir_response(StatusCode::OK, &fhir::paged_searchset(&self_url, next.as_deref(), base, total, &found)))
}

/// Observations of a patient, as a paged searchset Bundle.
#[utoipa::path(get, path = "/fhir/R4/Observation", tag = "fhir", security(("bearer" = [])),
    params(ResourceSearch),
    responses((status = 200, description = "searchset Bundle", content_type = "application/fhir+json", body = Object),
        (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn search_observations(
    State(s): State<Arc<Services>>,
    principal: Principal,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    search_synced(&s, &principal, "Observation", &uri).await
}

/// Procedures (exercise sessions) of a patient, as a paged searchset Bundle.
#[utoipa::path(get, path = "/fhir/R4/Procedure", tag = "fhir", security(("bearer" = [])),
    params(ResourceSearch),
    responses((status = 200, description = "searchset Bundle", content_type = "application/fhir+json", body = Object),
        (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn search_procedures(
    State(s): State<Arc<Services>>,
    principal: Principal,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    search_synced(&s, &principal, "Procedure", &uri).await
}
