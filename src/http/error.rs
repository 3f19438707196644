//! The HTTP layer's one error type, and the one place errors become responses:
//! RFC 9457 problem details, `application/problem+json`, always the same five fields.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::connect::Failure;
use crate::error::Error;
use crate::store::StoreError;

/// Problem details (RFC 9457). `code` is stable and meant for programs; `detail` for people.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// `https://wearlink.dev/problems/<code>`
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Domain(#[from] Error),
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("{0}")]
    BadRequest(String),
    #[error("no route for this path")]
    RouteNotFound,
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// The answer would have to be in a format we do not write (FHIR `_format` or `Accept`).
    #[error("{0}")]
    NotAcceptable(String),
    /// The body is in a format we do not read (e.g. FHIR XML).
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request took longer than {0:?}; retry shortly")]
    Timeout(std::time::Duration),
    /// A connect callback that failed after a valid state, with no redirectUri to report it to.
    #[error("the connection failed: {}", .0.code())]
    Callback(Failure),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        use StatusCode as S;
        let detail = self.to_string();
        match self {
            ApiError::Domain(e) => match e {
                Error::Unauthenticated => (S::UNAUTHORIZED, "unauthorized", detail),
                Error::Forbidden => (S::FORBIDDEN, "forbidden", detail),
                Error::NotFound(_) => (S::NOT_FOUND, "not_found", detail),
                Error::Invalid(_) => (S::UNPROCESSABLE_ENTITY, "validation_failed", detail),
                Error::ProviderDisabled { .. } => (S::UNPROCESSABLE_ENTITY, "provider_disabled", detail),
                Error::CredentialsMissing { .. } => (S::UNPROCESSABLE_ENTITY, "credentials_missing", detail),
                Error::InvalidState => (S::BAD_REQUEST, "invalid_state", detail),
                Error::Conflict(_) => (S::CONFLICT, "conflict", detail),
                Error::InvalidSignature => (S::UNAUTHORIZED, "invalid_signature", detail),
                Error::Rejected(_) => (S::FORBIDDEN, "rejected", detail),
                Error::Malformed(_) => (S::BAD_REQUEST, "malformed_json", detail),
                Error::Upstream(_) => (S::BAD_GATEWAY, "upstream_failed", detail),
                Error::Store(StoreError::Unavailable(_)) => {
                    (S::SERVICE_UNAVAILABLE, "unavailable", "the database is unavailable; retry shortly".into())
                }
                // Internal details go to the log, never to the caller.
                Error::Store(_) | Error::Crypto(_) => (S::INTERNAL_SERVER_ERROR, "internal", "internal error".into()),
                Error::FhirServer(e) if e.status() == 500 => {
                    (S::INTERNAL_SERVER_ERROR, "internal", "internal error".into())
                }
                Error::FhirServer(e) => (S::from_u16(e.status()).unwrap_or(S::BAD_GATEWAY), e.code(), detail),
            },
            ApiError::MalformedJson(_) => (S::BAD_REQUEST, "malformed_json", detail),
            ApiError::PayloadTooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large", detail),
            ApiError::BadRequest(_) => (S::BAD_REQUEST, "bad_request", detail),
            ApiError::RouteNotFound => (S::NOT_FOUND, "not_found", detail),
            ApiError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed", detail),
            ApiError::NotAcceptable(_) => (S::NOT_ACCEPTABLE, "not_acceptable", detail),
            ApiError::UnsupportedMediaType(_) => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", detail),
            ApiError::Timeout(_) => (S::SERVICE_UNAVAILABLE, "timeout", detail),
            ApiError::Callback(failure) => {
                let status = match failure {
                    Failure::AccessDenied | Failure::ProviderError | Failure::InvalidRequest => S::BAD_REQUEST,
                    Failure::ProviderDisabled | Failure::CredentialsMissing => S::UNPROCESSABLE_ENTITY,
                    Failure::TokenExchangeFailed | Failure::ProviderRegistrationFailed => S::BAD_GATEWAY,
                    Failure::ServerError => S::INTERNAL_SERVER_ERROR,
                    Failure::SessionEnded => S::GONE,
                };
                (status, failure.code(), detail)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, detail) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %self, code, "request failed");
        }
        let problem = Problem {
            type_uri: format!("https://wearlink.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            code: code.to_string(),
        };
        let mut response = (status, axum::Json(problem.clone())).into_response();
        // Kept beside the body for layers that answer errors in another shape (FHIR's
        // OperationOutcome under /fhir/R4), so they need not parse it back.
        response.extensions_mut().insert(problem);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub async fn route_not_found() -> ApiError {
    ApiError::RouteNotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metrics label outcomes with `Error::code`; callers read `code` in problem+json.
    #[test]
    fn domain_error_codes_are_the_problem_codes() {
        let all = [
            Error::Unauthenticated,
            Error::Forbidden,
            Error::NotFound("x".into()),
            Error::Invalid("x".into()),
            Error::ProviderDisabled { provider: "x".into(), setting: "x".into() },
            Error::CredentialsMissing { keys: vec![] },
            Error::Conflict("x".into()),
            Error::InvalidSignature,
            Error::Rejected("x".into()),
            Error::Malformed("x".into()),
            Error::Upstream("x".into()),
            Error::InvalidState,
            Error::Store(StoreError::Unavailable("x".into())),
            Error::Store(StoreError::Conflict),
            Error::Crypto(crate::crypto::CryptoError::Open),
            Error::FhirServer(crate::fhir_server::FhirServerError::NotConfigured),
            Error::FhirServer(crate::fhir_server::FhirServerError::Unsuitable(vec![])),
            Error::FhirServer(crate::fhir_server::FhirServerError::AuthFailed("x".into())),
            Error::FhirServer(crate::fhir_server::FhirServerError::Unreachable("x".into())),
            Error::FhirServer(crate::fhir_server::FhirServerError::Keys("x".into())),
        ];
        for error in all {
            let code = error.code();
            assert_eq!(ApiError::Domain(error).parts().1, code);
        }
    }
}
