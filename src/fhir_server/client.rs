//! The small internal client that connect's patient check, the switch and the outbox use: FHIR JSON to and from the project's
//! server, with the project's token (cached) and one new token when the server answers 401.
//!
//! Requests go out on `Services::outbound_http`, the client of outbound webhooks: no redirects
//! (a redirect would skip the target checks), no proxy, and a resolver that refuses addresses the
//! target policy refuses (`events::target`), so the address connected to is the one checked.
//! The outbox (`outbox.rs`) writes through it.

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{AuthMode, FhirServerError, ServerConfig};
use crate::Services;

const FHIR_JSON: &str = "application/fhir+json";

/// A server's answer: its status and its JSON body (`null` when it sent none or no JSON).
#[derive(Clone, Debug)]
pub struct FhirResponse {
    pub status: u16,
    pub body: Value,
    /// `Retry-After` (seconds or an HTTP date), as a wait.
    pub retry_after: Option<std::time::Duration>,
    /// `Location` (a write's `Type/id/_history/v`).
    pub location: Option<String>,
}

impl FhirResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Whether a Patient exists on the server (connect's and the switch's check).
#[derive(Clone, Debug, PartialEq)]
pub enum PatientLookup {
    Found(Value),
    /// 404 or 410 (deleted), or an id that cannot be a FHIR id.
    NotFound,
    /// The server could not say (down, timed out, 5xx, refused our credentials): nothing may be
    /// stored on the strength of it. The reason is for the logs and the admin.
    Unavailable(String),
}

pub struct FhirClient<'a> {
    services: &'a Services,
    project_id: String,
    config: ServerConfig,
}

impl<'a> FhirClient<'a> {
    pub(super) fn new(services: &'a Services, project_id: &str, config: ServerConfig) -> Self {
        Self { services, project_id: project_id.to_string(), config }
    }

    /// The client of the project's server; `None` when the project has none (the embedded store).
    /// `Err` when a server is set but its configuration is incomplete.
    pub async fn for_project(services: &'a Services, project_id: &str) -> crate::Result<Option<Self>> {
        let config = ServerConfig::load(services, project_id).await?;
        if config.url.is_none() {
            return Ok(None);
        }
        let missing = config.missing();
        if !missing.is_empty() {
            return Err(FhirServerError::Incomplete(missing).into());
        }
        Ok(Some(Self::new(services, project_id, config)))
    }

    pub async fn get(&self, path: &str) -> Result<FhirResponse, FhirServerError> {
        self.send(Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<FhirResponse, FhirServerError> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<FhirResponse, FhirServerError> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// `GET Patient/{id}` → found / not found / unavailable.
    pub async fn patient(&self, id: &str) -> PatientLookup {
        if !is_fhir_id(id) {
            return PatientLookup::NotFound;
        }
        match self.get(&format!("Patient/{id}")).await {
            Ok(answer) if answer.is_success() && answer.body["resourceType"] == "Patient" => {
                PatientLookup::Found(answer.body)
            }
            Ok(answer) if answer.status == 404 || answer.status == 410 => PatientLookup::NotFound,
            Ok(answer) => {
                PatientLookup::Unavailable(format!("the FHIR server answered {} to GET Patient", answer.status))
            }
            Err(e) => PatientLookup::Unavailable(e.to_string()),
        }
    }

    /// `GET /metadata`, without a token first (servers serve it to anyone), with one when the
    /// server asks for it and the credentials are complete.
    pub(super) async fn metadata(&self) -> Result<Value, FhirServerError> {
        let answer = self.once(Method::GET, "metadata", None, None).await?;
        let answer = match answer.status {
            401 | 403 if self.config.missing().is_empty() => self.get("metadata").await?,
            _ => answer,
        };
        match answer.status {
            200 => Ok(answer.body),
            status @ 500.. => Err(FhirServerError::Unreachable(format!("GET /metadata answered {status}"))),
            status => Err(FhirServerError::Unsuitable(vec![format!("GET /metadata answered {status}")])),
        }
    }

    /// A token (new unless one is cached for this configuration), then an authenticated read (a Patient count: no patient data comes back).
    pub(super) async fn check_credentials(&self) -> Result<(), FhirServerError> {
        // A token cached for this very configuration (same secrets) is as good as a new one.
        let answer = self.get("Patient?_summary=count").await?;
        match answer.status {
            200..=299 => Ok(()),
            401 | 403 => Err(FhirServerError::AuthFailed(format!(
                "an authenticated read (GET Patient?_summary=count) answered {}",
                answer.status
            ))),
            status @ 500.. => {
                Err(FhirServerError::Unreachable(format!("GET Patient?_summary=count answered {status}")))
            }
            status => Err(FhirServerError::Answered { status, what: "GET Patient?_summary=count".into() }),
        }
    }

    async fn token(&self, stale: Option<&SecretString>) -> Result<SecretString, FhirServerError> {
        self.services.fhir_tokens.token(self.services, &self.project_id, &self.config, stale).await
    }

    /// One request with the project's token; on a 401, one new token and one more try.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<FhirResponse, FhirServerError> {
        let token = self.token(None).await?;
        let answer = self.once(method.clone(), path, body, Some(&token)).await?;
        if answer.status != 401 || self.config.auth == Some(AuthMode::Bearer) {
            return Ok(answer);
        }
        let renewed = self.token(Some(&token)).await?;
        self.once(method, path, body, Some(&renewed)).await
    }

    async fn once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&SecretString>,
    ) -> Result<FhirResponse, FhirServerError> {
        let url = self.config.endpoint(path)?;
        // The resolver checks names; an IP-literal host is checked here.
        self.services.config.outbound.targets().check_url_syntax(url.as_str())?;
        let what = format!("{method} {}", path.split('?').next().unwrap_or_default());
        let mut request = self.services.outbound_http.request(method, url).header("accept", FHIR_JSON);
        if let Some(token) = token {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(body) = body {
            request = request.header("content-type", FHIR_JSON).body(body.to_string());
        }
        let answer =
            request.send().await.map_err(|e| FhirServerError::Unreachable(format!("{what}: {}", describe(&e))))?;
        let status = answer.status();
        let retry_after = crate::providers::retry_after(answer.headers());
        let location =
            answer.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
        let text =
            answer.text().await.map_err(|e| FhirServerError::Unreachable(format!("{what}: {}", describe(&e))))?;
        let body = if status == StatusCode::NO_CONTENT {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        Ok(FhirResponse { status: status.as_u16(), body, retry_after, location })
    }
}

/// A transport error in a sentence (timeouts and refused connections named as such).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "the connection failed".into()
    } else {
        e.to_string()
    }
}

/// FHIR R4 `id`: `[A-Za-z0-9\-\.]{1,64}`.
fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}
