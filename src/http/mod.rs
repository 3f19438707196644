//! The HTTP layer: routes, extractors, the error → problem+json mapping and the OpenAPI document.
//! Handlers only translate HTTP to a domain call and back.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Services;

pub mod error;
mod extract;
mod fhir;
mod fhir_server;
mod metrics;
mod openapi;
mod outbound;
mod page;
mod page_text;
mod project;
mod wearables;
mod webhooks;

pub use metrics::router as metrics_router;

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "Wearlink", description = "Wearable-connection gateway for FHIR health platforms"),
    modifiers(&BearerAuth),
    components(schemas(error::Problem)),
    tags((name = "wearables"), (name = "webhooks"), (name = "events"), (name = "project"), (name = "fhir"), (name = "health"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The database answers and every migration is applied; 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = error::Problem)))]
async fn readyz(State(services): State<Arc<Services>>) -> error::ApiResult<Json<Health>> {
    services.store.ready().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready");
        crate::Error::Store(crate::store::StoreError::Unavailable(e.to_string()))
    })?;
    Ok(Json(Health { status: "ready" }))
}

/// Every route and its OpenAPI description, from the same code.
fn routes() -> (Router<Arc<Services>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(wearables::connect))
        .routes(routes!(wearables::callback))
        .routes(routes!(wearables::get_credentials, wearables::put_credentials, wearables::delete_credentials))
        .routes(routes!(wearables::list_connections))
        .routes(routes!(wearables::disconnect))
        .routes(routes!(wearables::access_token))
        .routes(routes!(wearables::resync))
        .routes(routes!(page::create_session))
        .routes(routes!(page::delete_session))
        .routes(routes!(webhooks::challenge, webhooks::deliver))
        .routes(routes!(webhooks::subscribe))
        .routes(routes!(webhooks::list_events))
        .routes(routes!(webhooks::replay))
        .routes(routes!(project::get_settings))
        .routes(routes!(project::put_setting))
        .routes(routes!(project::list_secrets))
        .routes(routes!(project::put_secret, project::delete_secret))
        .routes(routes!(fhir_server::check))
        .routes(routes!(fhir_server::rotate_keys))
        .routes(routes!(fhir_server::jwks))
        .routes(routes!(fhir_server::get_store, fhir_server::switch_store))
        .routes(routes!(fhir_server::list_outbox))
        .routes(routes!(fhir_server::replay_outbox))
        .routes(routes!(fhir_server::replay_all_outbox))
        .routes(routes!(fhir::metadata))
        .routes(routes!(fhir::create_patient))
        .routes(routes!(fhir::read_patient))
        .routes(routes!(fhir::read_endpoint))
        .routes(routes!(fhir::search_endpoints))
        .routes(routes!(fhir::read_observation))
        .routes(routes!(fhir::read_procedure))
        .routes(routes!(fhir::read_device))
        .routes(routes!(fhir::search_observations))
        .routes(routes!(fhir::search_procedures))
        .routes(routes!(fhir::read_version))
        .routes(routes!(outbound::create_endpoint, outbound::list_endpoints))
        .routes(routes!(outbound::get_endpoint, outbound::update_endpoint, outbound::delete_endpoint))
        .routes(routes!(outbound::rotate_secret))
        .routes(routes!(outbound::test_endpoint))
        .routes(routes!(outbound::list_deliveries))
        .routes(routes!(outbound::retry_delivery))
        .split_for_parts();
    openapi::complete(&mut doc);
    (router, doc)
}

/// The OpenAPI document, as `/openapi.json` serves it.
pub fn openapi() -> serde_json::Value {
    openapi::to_json(&routes().1)
}

/// The whole application: what `serve` runs and what tests drive.
pub fn router(services: Arc<Services>) -> Router {
    let (router, openapi) = routes();
    let openapi = Arc::new(openapi::to_json(&openapi));
    let request_timeout = services.config.request_timeout;
    // With WEARLINK_METRICS_BIND set, /metrics is served on that listener only.
    let router = match services.config.metrics_bind {
        None => router.route("/metrics", get(metrics::scrape)),
        Some(_) => router,
    };
    let in_flight = Arc::clone(&services.requests_in_flight);
    router
        .route("/openapi.json", get(move || async move { Json(openapi.as_ref().clone()) }))
        // The hosted connect page: HTML for people, outside the OpenAPI document.
        .route("/connect/{token}", get(page::show).post(page::act))
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(move |request, next| {
            time_limit(request, next, request_timeout, Arc::clone(&in_flight))
        }))
        // Outside the time limit, so a timeout under /fhir/R4 is an OperationOutcome too.
        .layer(axum::middleware::from_fn(fhir::outcomes))
        .layer(axum::middleware::from_fn_with_state(services.metrics.http.clone(), metrics::track))
        .layer(
            // Spans carry the path only: queries hold OAuth codes and states.
            TraceLayer::new_for_http()
                .make_span_with(
                    |req: &Request<_>| tracing::info_span!("request", method = %req.method(), path = %req.uri().path()),
                )
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, header::COOKIE]))
        .with_state(services)
}

/// Answers 503 `timeout` (problem+json, like every error) when a request takes longer than `limit`;
/// the request's work is dropped (a batched write it joined still completes for the others).
/// Counts it in `in_flight` while it runs (background work paces itself meanwhile, see `sync`).
async fn time_limit(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    limit: Duration,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
) -> Response {
    let _serving = crate::sync::Serving::new(in_flight);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error::ApiError::Timeout(limit).into_response(),
    }
}
