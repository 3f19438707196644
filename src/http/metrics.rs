//! `GET /metrics` (the Prometheus text format) and the middleware that counts every request by
//! its route template.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::{HttpLabels, HttpMetrics};
use crate::Services;

/// The exposition; unauthenticated, like every Prometheus target (see `WEARLINK_METRICS_BIND`).
pub async fn scrape(State(services): State<Arc<Services>>) -> Response {
    let snapshot = crate::metrics::snapshot(&services).await;
    let text = services.metrics.render(&snapshot);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// The router of the `WEARLINK_METRICS_BIND` listener: `/metrics`, nothing else.
pub fn router(services: Arc<Services>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(services)
}

/// Counts and times a request by method, route template (never the raw path: ids, and no query)
/// and status.
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(HttpLabels { method, route, status: response.status().as_u16() }, started.elapsed());
    response
}

/// A closed set: an invented method would otherwise make a series of its own.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
