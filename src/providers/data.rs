//! The provider-facing side of data sync: what a provider must say about its data API so the
//! provider-neutral sync stage (`crate::sync`) can backfill, follow webhooks and reconcile it.
//!
//! Shaped to fit more than Strava and Polar without special cases: list pages with any cursor
//! (page numbers, Oura/WHOOP `next_token`, Withings `offset`), objects fetched by id or by a URL the
//! webhook gave (Polar), events that carry their data (Garmin push) or a range to fetch (Withings).
//! Every method that talks to the provider makes exactly one request, so the sync stage can count
//! it against the rate-limit budget before it is made.

use std::sync::Mutex;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::fhir::{MapContext, MapError, ResourceDraft};
use crate::store::sync::RateWindow;

/// `[from, to)`, epoch milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    pub from: i64,
    pub to: i64,
}

/// One object at the provider: its kind (`activity`, `exercise`, `sleep`, `daily_activity`, …),
/// its id there, and where to fetch it when the provider gave a URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One entry of a listing: the object, and its data when the listing carries all of it.
#[derive(Clone, Debug)]
pub struct Item {
    pub object: ObjectRef,
    /// `None`: fetch the object to map it (Strava lists summaries; only the detail has calories).
    pub data: Option<Value>,
}

#[derive(Clone, Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// Where the next page of the same stream starts; `None` when this was the last.
    pub next: Option<Value>,
    /// The provider accepted a request for this range and pushes its data later, to the webhook
    /// (Garmin's backfill: 202, then pushes). The backfill stays `backfilling` until a push has
    /// arrived (or a deadline passed) instead of ending at its last page.
    pub pushed_later: bool,
}

/// What a stored webhook event asks the sync stage to do.
#[derive(Clone, Debug, PartialEq)]
pub enum EventAction {
    /// Fetch the object and write it (created or changed).
    Fetch(ObjectRef),
    /// The object was deleted at the provider: what it wrote becomes `entered-in-error`.
    Delete(ObjectRef),
    /// The event carries its data (push providers).
    Items(Vec<(ObjectRef, Value)>),
    /// Fetch this range of a stream (providers that notify "something changed between").
    Range { stream: String, range: TimeRange },
    /// The user revoked our access at the provider.
    Deauthorize,
    /// Nothing to sync; the reason is kept with the event.
    Ignore(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// 401: the access token is not (or no longer) accepted.
    #[error("the provider refused the access token (401)")]
    Unauthorized,
    /// 403: the user has not granted what this needs (Polar: consents not accepted yet).
    #[error("the provider refused access (403)")]
    Forbidden,
    #[error("rate limited by the provider (429)")]
    RateLimited { retry_after: Option<std::time::Duration> },
    #[error("provider unreachable")]
    Unreachable,
    #[error("provider answered status {0}")]
    Failed(u16),
    /// Never carries the body.
    #[error("provider answer not understood: {0}")]
    BadAnswer(&'static str),
    /// A URL or parameter we refuse to use (a webhook URL outside the API base, say).
    #[error("{0}")]
    Refused(String),
}

#[async_trait]
pub trait DataSource: Send + Sync {
    /// The streams a backfill walks, in order (Strava: `activities`; Polar: `exercises`, `sleep`,
    /// `daily_activity`).
    fn streams(&self) -> &'static [&'static str];
    /// How many days back a stream reaches, when the provider serves less than asked.
    fn reach_days(&self, _stream: &str) -> Option<i64> {
        None
    }
    /// One page of `stream` within `range` (one request).
    async fn list(
        &self,
        api: &DataApi<'_>,
        stream: &str,
        range: TimeRange,
        cursor: Option<&Value>,
    ) -> Result<Page, DataError>;
    /// Whether a listing of `stream` over a range is everything the provider holds there, so that
    /// what Wearlink wrote from that stream inside a re-read range (`EventAction::Range`) and the
    /// listing no longer has was deleted at the provider. Answers the identifier system of those
    /// resources (Withings' measure groups: its notifications name a changed range, never the
    /// group that was deleted).
    fn complete_listing(&self, _stream: &str) -> Option<&'static str> {
        None
    }
    /// One object (one request); `None` when the provider no longer has it.
    async fn fetch(&self, api: &DataApi<'_>, object: &ObjectRef) -> Result<Option<Value>, DataError>;
    /// What a stored webhook event (as received) asks for.
    fn event_action(&self, payload: &Value, api_base: &Url) -> EventAction;
    /// The FHIR resources of one object (pure).
    fn map(&self, ctx: &MapContext, object: &ObjectRef, data: &Value) -> Result<Vec<ResourceDraft>, MapError>;
    /// `(type, id)` of every resource `map` can write for the object: what a delete marks.
    fn resource_ids(&self, ctx: &MapContext, object: &ObjectRef) -> Vec<(&'static str, String)>;
    /// The rate-limit windows an answer's headers describe (empty when it sends none).
    fn rate_windows(&self, headers: &HeaderMap, now: i64) -> Vec<RateWindow>;
    /// For a provider without webhooks: how often each connection is polled, ± a jitter (the
    /// recurring reconciliation pass becomes the poll). `None`: webhooks keep it current.
    fn poll_every(&self) -> Option<(std::time::Duration, std::time::Duration)> {
        None
    }
    /// How far before the previous poll's end a poll starts reading again: data that arrives
    /// late at the provider (idempotent writes keep what did not change).
    fn poll_overlap(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// A provider's API as one connection's sync sees it: its base, the user's access token, and the
/// headers of the last answer (the sync stage reads their rate-limit windows).
pub struct DataApi<'a> {
    http: &'a super::ProviderHttp,
    /// Provider and operation (`list`, `fetch`), as the metrics name its calls.
    call: (&'static str, &'static str),
    base: &'a Url,
    token: SecretString,
    last_headers: Mutex<Option<HeaderMap>>,
}

impl<'a> DataApi<'a> {
    pub fn new(
        http: &'a super::ProviderHttp,
        call: (&'static str, &'static str),
        base: &'a Url,
        token: SecretString,
    ) -> Self {
        Self { http, call, base, token, last_headers: Mutex::new(None) }
    }

    /// `<base>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base.as_str().trim_end_matches('/'), path.trim_start_matches('/'))
    }

    pub fn base(&self) -> &Url {
        self.base
    }

    /// The headers of the last answer, once.
    pub fn take_headers(&self) -> Option<HeaderMap> {
        self.last_headers.lock().expect("not poisoned").take()
    }

    /// GETs JSON with the bearer token (always in the `Authorization` header); `None` on 404.
    /// Only URLs under the API base are ever called.
    pub async fn get_json(&self, url: &str, query: &[(&str, String)]) -> Result<Option<Value>, DataError> {
        if !is_under(url, self.base) {
            return Err(DataError::Refused("URL outside the provider's API base".into()));
        }
        let request = self.http.get(url).query(query);
        self.send_json(request).await
    }

    /// POSTs a JSON body with the bearer token and reads the answer as `get_json` does (read-only
    /// query methods that take a body, as Google Health's `dataPoints:dailyRollUp`).
    pub async fn post_json(&self, url: &str, body: &Value) -> Result<Option<Value>, DataError> {
        if !is_under(url, self.base) {
            return Err(DataError::Refused("URL outside the provider's API base".into()));
        }
        self.send_json(self.http.post(url).json(body)).await
    }

    /// POSTs a form with the bearer token and reads the answer as `get_json` does (Withings' API
    /// takes every call, reads included, as a form POST).
    pub async fn post_form(&self, url: &str, form: &[(&str, String)]) -> Result<Option<Value>, DataError> {
        if !is_under(url, self.base) {
            return Err(DataError::Refused("URL outside the provider's API base".into()));
        }
        self.send_json(self.http.post(url).form(form)).await
    }

    async fn send_json(&self, request: reqwest::RequestBuilder) -> Result<Option<Value>, DataError> {
        let request =
            request.bearer_auth(self.token.expose_secret()).header(reqwest::header::ACCEPT, "application/json");
        let (provider, operation) = self.call;
        let response = self.http.send(provider, operation, request).await.map_err(|_| DataError::Unreachable)?;
        let status = response.status();
        *self.last_headers.lock().expect("not poisoned") = Some(response.headers().clone());
        match status {
            s if s.is_success() => {
                let bytes = response.bytes().await.map_err(|_| DataError::Unreachable)?;
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None); // Polar answers 204 / empty when there is nothing
                }
                serde_json::from_slice(&bytes).map(Some).map_err(|_| DataError::BadAnswer("not JSON"))
            }
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED => Err(DataError::Unauthorized),
            StatusCode::FORBIDDEN => Err(DataError::Forbidden),
            StatusCode::TOO_MANY_REQUESTS => {
                Err(DataError::RateLimited { retry_after: super::retry_after(response.headers()) })
            }
            s => Err(DataError::Failed(s.as_u16())),
        }
    }
}

/// Whether `url` is the API base or below it (same scheme, host, port; path under the base's).
pub fn is_under(url: &str, base: &Url) -> bool {
    let Ok(url) = Url::parse(url) else {
        return false;
    };
    let base_path = base.path().trim_end_matches('/');
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && (url.path() == base_path || url.path().starts_with(&format!("{base_path}/")))
        && !url.path().split('/').any(|s| s == ".." || s == "%2e%2e" || s == "%2E%2E")
}

/// A header's value as text.
pub fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

/// `"a,b"` → two numbers.
pub fn pair(value: &str) -> Option<(i64, i64)> {
    let (a, b) = value.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_under_the_api_base_are_followed() {
        let base = Url::parse("https://www.polaraccesslink.com/v3").unwrap();
        assert!(is_under("https://www.polaraccesslink.com/v3/exercises/abc", &base));
        assert!(!is_under("https://www.polaraccesslink.com/v30/x", &base));
        assert!(!is_under("https://evil.example/v3/exercises", &base));
        assert!(!is_under("http://www.polaraccesslink.com/v3/exercises", &base));
        assert!(!is_under("https://www.polaraccesslink.com:8443/v3/x", &base));
        assert!(!is_under("https://user@www.polaraccesslink.com/v3/x", &base));
        assert!(!is_under("https://www.polaraccesslink.com/v3/../admin", &base));
        assert!(!is_under("not a url", &base));
    }

    #[test]
    fn header_pairs_are_read() {
        assert_eq!(pair("100,1000"), Some((100, 1000)));
        assert_eq!(pair(" 7 , 8"), Some((7, 8)));
        assert_eq!(pair("7"), None);
    }
}
