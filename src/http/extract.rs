//! Extractors whose rejections are problem+json: the bearer-token `Principal` (and `Admin`),
//! JSON bodies, paths and queries.
//!
//! Handlers take the caller first (`Principal` or `Admin`), then the path, the query and the body
//! last: axum runs extractors in that order, so a caller who may not call an operation gets its 401
//! or 403 before anything of the request is read or validated (and learns nothing of its shape).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::error::Error;
use crate::projects::{self, Principal};
use crate::Services;

impl FromRequestParts<Arc<Services>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, services: &Arc<Services>) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or(Error::Unauthenticated)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(Error::Unauthenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(Error::Unauthenticated.into());
        }
        Ok(projects::authenticate(services, token.trim()).await?)
    }
}

/// A caller whose token has the admin role: no valid token → 401, another role → 403.
pub struct Admin(pub Principal);

impl FromRequestParts<Arc<Services>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, services: &Arc<Services>) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, services).await?;
        principal.require_admin()?;
        Ok(Admin(principal))
    }
}

/// The raw body, up to the body limit (beyond it: 413, without reading the rest).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state).await.map(RawBody).map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("the request body could not be read".into())
            }
        })
    }
}

/// A JSON body: not JSON at all → 400; JSON of the wrong shape → 422; too large → 413.
/// The content type is not insisted on: a JSON body is judged by what it is.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        let parsed = serde_json::from_value(value).map_err(|e| Error::Invalid(format!("invalid body: {e}")))?;
        Ok(ApiJson(parsed))
    }
}

/// `axum::extract::Path` with a problem+json rejection.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// `axum::extract::Query` with a problem+json rejection.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|_| ApiError::BadRequest("the query string could not be parsed".into()))
    }
}
