//! Token requests to the platform's authorization server (client_credentials, with a client secret
//! or a signed client assertion), through the `oauth2` crate.
//!
//! Facts (shared/spec/fhir-server.md): Medplum `POST /oauth2/token` with Basic or form client
//! authentication, Aidbox `POST /auth/token` with Basic, Entra ID (Azure) with the client in the
//! form and a `scope` of `<fhir url>/.default`; SMART Backend Services with
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`.

use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use super::{keys, AuthMode, ClientAuth, FhirServerError, ServerConfig, CLIENT_ID_SECRET, CLIENT_SECRET_SECRET};
use crate::time::now_ms;
use crate::Services;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// A token answer without `expires_in` is taken to live this long (seconds).
const DEFAULT_LIFETIME_SECS: i64 = 300;
/// A token is renewed this long before it expires (at most half its life).
const RENEW_BEFORE_SECS: i64 = 60;

pub(super) struct Fetched {
    pub token: SecretString,
    pub renew_at: i64,
}

/// The token URL (`FHIR_SERVER_TOKEN_URL`, else the server's SMART configuration) and the client
/// authentication its configuration names: the setting, else what the SMART configuration offers
/// (`client_secret_basic` first), else Basic.
pub(super) async fn token_url(
    services: &Services,
    config: &ServerConfig,
) -> Result<(Url, ClientAuth), FhirServerError> {
    // Discovery is needed for the URL when none is set, and for the client authentication when
    // none is named; a failed discovery matters only for the first.
    let smart = if config.token_url.is_none() || config.client_auth.is_none() {
        match smart_configuration(services, config).await {
            Ok(smart) => Some(smart),
            Err(e) if config.token_url.is_none() => return Err(e),
            Err(_) => None,
        }
    } else {
        None
    };
    let url = match (&config.token_url, &smart) {
        (Some(url), _) => url.clone(),
        (None, smart) => {
            smart.as_ref().and_then(|s| s["token_endpoint"].as_str()).and_then(|u| Url::parse(u).ok()).ok_or_else(
                || {
                    FhirServerError::Unsuitable(vec![
                        "its .well-known/smart-configuration names no token_endpoint: set FHIR_SERVER_TOKEN_URL".into(),
                    ])
                },
            )?
        }
    };
    services.config.outbound.targets().check_url_syntax(url.as_str())?;
    let offered = |method: &str| {
        smart.as_ref().is_some_and(|smart| {
            smart["token_endpoint_auth_methods_supported"].as_array().is_some_and(|m| m.iter().any(|x| x == method))
        })
    };
    let client_auth =
        config.client_auth.unwrap_or(if !offered("client_secret_basic") && offered("client_secret_post") {
            ClientAuth::Form
        } else {
            ClientAuth::Basic
        });
    Ok((url, client_auth))
}

/// `GET {base}/.well-known/smart-configuration` (SMART App Launch 2.x, "Conformance").
async fn smart_configuration(services: &Services, config: &ServerConfig) -> Result<Value, FhirServerError> {
    let url = config.endpoint(".well-known/smart-configuration")?;
    services.config.outbound.targets().check_url_syntax(url.as_str())?;
    let answer = services
        .outbound_http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| FhirServerError::Unreachable(format!("its smart-configuration: {}", e.without_url())))?;
    let status = answer.status();
    if status.is_server_error() {
        return Err(FhirServerError::Unreachable(format!("its smart-configuration answered {status}")));
    }
    let body: Option<Value> = answer.json().await.ok();
    match body {
        Some(body) if status.is_success() && body.is_object() => Ok(body),
        _ => Err(FhirServerError::Unsuitable(vec![format!(
            "no FHIR_SERVER_TOKEN_URL is set and its .well-known/smart-configuration answered {status} without a SMART configuration"
        )])),
    }
}

/// Asks the authorization server for a new access token.
pub(super) async fn fetch_token(services: &Services, config: &ServerConfig) -> Result<Fetched, FhirServerError> {
    let mode = config.auth.ok_or_else(|| FhirServerError::Incomplete(vec![super::AUTH_SETTING.into()]))?;
    let client_id =
        config.client_id.as_ref().ok_or_else(|| FhirServerError::Incomplete(vec![CLIENT_ID_SECRET.into()]))?;
    let (token_url, client_auth) = token_url(services, config).await?;
    let mut client = BasicClient::new(ClientId::new(client_id.expose_secret().to_string()))
        .set_token_uri(TokenUrl::from_url(token_url.clone()));
    let assertion;
    match mode {
        AuthMode::ClientCredentials => {
            let secret = config
                .client_secret
                .as_ref()
                .ok_or_else(|| FhirServerError::Incomplete(vec![CLIENT_SECRET_SECRET.into()]))?;
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_string())).set_auth_type(
                match client_auth {
                    ClientAuth::Basic => AuthType::BasicAuth,
                    ClientAuth::Form => AuthType::RequestBody,
                },
            );
            assertion = None;
        }
        AuthMode::PrivateKeyJwt => {
            let key = config.keys.as_ref().and_then(keys::KeySet::current).ok_or_else(|| {
                FhirServerError::Keys(
                    "the project has no signing key: set FHIR_SERVER_AUTH to private_key_jwt again".into(),
                )
            })?;
            // No client secret: the oauth2 crate then sends client_id in the form, beside the assertion.
            client = client.set_auth_type(AuthType::RequestBody);
            assertion = Some(keys::assertion(key, client_id.expose_secret(), token_url.as_str(), now_ms())?);
        }
        AuthMode::Bearer => unreachable!("a bearer token is not fetched"),
    }
    let mut request = client.exchange_client_credentials();
    if let Some(scope) = &config.scope {
        request = request.add_scopes(scope.split_whitespace().map(|s| Scope::new(s.to_string())));
    }
    if let Some(assertion) = &assertion {
        request =
            request.add_extra_param("client_assertion_type", JWT_BEARER).add_extra_param("client_assertion", assertion);
    }
    let started = now_ms();
    let answer = request.request_async(&services.outbound_http).await.map_err(|e| match e {
        RequestTokenError::ServerResponse(r) => {
            let mut reason = format!("the token request was refused: {}", r.error().as_ref());
            if let Some(description) = r.error_description() {
                reason.push_str(&format!(" ({})", description.chars().take(200).collect::<String>()));
            }
            FhirServerError::AuthFailed(reason)
        }
        RequestTokenError::Request(e) => FhirServerError::Unreachable(format!("its token URL: {e}")),
        // The raw body of a parse error may hold a token: dropped here, never logged.
        RequestTokenError::Parse(_, _) => {
            FhirServerError::Unreachable("its token URL did not answer an OAuth 2.0 token response".into())
        }
        RequestTokenError::Other(reason) => FhirServerError::AuthFailed(format!("the token request failed: {reason}")),
    })?;
    let lifetime = answer.expires_in().map(|d| d.as_secs() as i64).unwrap_or(DEFAULT_LIFETIME_SECS).max(1);
    let renew_at = started + (lifetime - RENEW_BEFORE_SECS.min(lifetime / 2)) * 1000;
    Ok(Fetched { token: SecretString::from(answer.access_token().secret().to_string()), renew_at })
}
