//! The domain's one error type. The HTTP layer maps it to responses in `http::error`.

use crate::crypto::CryptoError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing or invalid API token")]
    Unauthenticated,
    #[error("this action needs an admin token")]
    Forbidden,
    /// `what` names the missing thing ("provider foo", "Patient/123").
    #[error("{0} not found")]
    NotFound(String),
    /// A field is missing or invalid; the text says which and why.
    #[error("{0}")]
    Invalid(String),
    #[error("provider {provider} is not enabled for this project: set {setting} to true")]
    ProviderDisabled { provider: String, setting: String },
    #[error("provider credentials missing: set {}", keys.join(", "))]
    CredentialsMissing { keys: Vec<String> },
    /// The request is valid but the resource is in a state that forbids it.
    #[error("{0}")]
    Conflict(String),
    /// A webhook body failed its signature check.
    #[error("the webhook signature is missing or wrong")]
    InvalidSignature,
    /// The caller is known but what it sent is not acceptable (a wrong verify token, subscription).
    #[error("{0}")]
    Rejected(String),
    /// A body that is not the JSON it should be.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// A call to a provider failed (while setting something up there).
    #[error("the provider call failed: {0}")]
    Upstream(String),
    #[error("the state is unknown, expired, already used or for another provider")]
    InvalidState,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a stored secret could not be opened")]
    Crypto(#[from] CryptoError),
    /// The project's own FHIR server (its configuration, its checks, its answers).
    #[error(transparent)]
    FhirServer(#[from] crate::fhir_server::FhirServerError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable code of this error, as the API's problem+json `code` says it (`http::error`
    /// maps each variant to its status; a test there keeps the two in step).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unauthenticated => "unauthorized",
            Error::Forbidden => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::Invalid(_) => "validation_failed",
            Error::ProviderDisabled { .. } => "provider_disabled",
            Error::CredentialsMissing { .. } => "credentials_missing",
            Error::Conflict(_) => "conflict",
            Error::InvalidSignature => "invalid_signature",
            Error::Rejected(_) => "rejected",
            Error::Malformed(_) => "malformed_json",
            Error::Upstream(_) => "upstream_failed",
            Error::InvalidState => "invalid_state",
            Error::Store(StoreError::Unavailable(_)) => "unavailable",
            Error::Store(_) | Error::Crypto(_) => "internal",
            Error::FhirServer(e) => e.code(),
        }
    }
}
