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

/// Creates a Patient in the caller's project; the server assigns `id` and `meta`.
#[utoipa::path(post, path = "/fhir/R4/Patient", tag = "fhir", security(("bearer" = [])),
    request_body(content = Object, content_type = "application/fhir+json", description = "A FHIR R4 Patient"),
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
