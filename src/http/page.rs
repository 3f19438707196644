//! The hosted connect page (`/connect/{token}`, server-rendered HTML, no script) and the session
//! API that makes its links (`/v1/wearables/connect-sessions`). The domain is `connect_sessions`.

use std::sync::{Arc, LazyLock};

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::error::{ApiResult, Problem};
use super::extract::{ApiJson, ApiPath, RawBody};
use super::page_text::{texts, Texts};
use crate::connect_sessions::{self as sessions, Locale, NewSession, OpenError, OpenSession};
use crate::projects::Principal;
use crate::Services;

// ---- the session API ----

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectSessionBody {
    /// FHIR Patient id the page connects accounts for.
    pub patient_id: String,
    /// Where "Done" sends the patient (with `status` and `providers` added); the project's
    /// `WEARABLE_REDIRECT_ALLOWLIST` applies as for connect. Without it the page says goodbye itself.
    pub redirect_uri: Option<String>,
    /// Offer only these providers (slugs); default: every enabled provider with credentials.
    pub providers: Option<Vec<String>>,
    /// `en` or `de`; default: the browser's `Accept-Language`.
    pub locale: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectSessionResponse {
    pub id: String,
    /// The link to hand the patient: `<WEARLINK_BASE_URL>/connect/<token>`. Shown only here.
    pub url: String,
    /// Epoch milliseconds.
    pub expires_at: i64,
}

/// Creates a hosted connect page session for a patient (member token); answers its link.
#[utoipa::path(post, path = "/v1/wearables/connect-sessions", tag = "wearables", security(("bearer" = [])),
    request_body = ConnectSessionBody,
    responses((status = 201, body = ConnectSessionResponse), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn create_session(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiJson(body): ApiJson<ConnectSessionBody>,
) -> ApiResult<Response> {
    let new = NewSession {
        patient_id: body.patient_id,
        redirect_uri: body.redirect_uri,
        providers: body.providers,
        locale: body.locale,
    };
    let created = sessions::create(&s, &principal, new).await?;
    let body = ConnectSessionResponse { id: created.id, url: created.url.into(), expires_at: created.expires_at };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Ends a connect session (member token): its link stops working at once. Idempotent.
#[utoipa::path(delete, path = "/v1/wearables/connect-sessions/{id}", tag = "wearables", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_session(
    State(s): State<Arc<Services>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    sessions::delete(&s, &principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- the page ----

static CSS: &str = include_str!("../../templates/connect/connect.css");

/// The CSP source that admits exactly the embedded style sheet.
static STYLE_SRC: LazyLock<String> = LazyLock::new(|| {
    let digest = sha2::Sha256::digest(CSS.as_bytes());
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
});

struct ProviderItem {
    slug: &'static str,
    name: &'static str,
    connected: bool,
    /// The last connect of this provider failed: its button says "Try again".
    failed: bool,
}

struct Notice {
    kind: &'static str,
    message: String,
    reason: Option<String>,
}

#[derive(Template)]
#[template(path = "connect/page.html")]
struct PageTemplate<'a> {
    t: &'static Texts,
    css: &'static str,
    project_name: &'a str,
    intro: String,
    notice: Option<Notice>,
    providers: Vec<ProviderItem>,
    token: &'a str,
    action: String,
}

#[derive(Template)]
#[template(path = "connect/message.html")]
struct MessageTemplate {
    t: &'static Texts,
    css: &'static str,
    heading: &'static str,
    message: &'static str,
}

/// `?result=connected|disconnected|failed&provider=<slug>[&reason=<code>]`, as the page sets it.
#[derive(Deserialize, Default)]
struct PageQuery {
    result: Option<String>,
    provider: Option<String>,
    reason: Option<String>,
}

/// The page's form fields.
#[derive(Deserialize)]
struct PageForm {
    session: String,
    action: String,
    provider: Option<String>,
}

/// Headers of every page answer: no caching, no referrer, no script, framing only by the
/// project's `WEARABLE_CONNECT_FRAME_ANCESTORS`; forms may go to `form_targets` besides the page.
fn secure(mut response: Response, frame_ancestors: &[String], form_targets: &[String]) -> Response {
    let frames = if frame_ancestors.is_empty() { "'none'".to_string() } else { frame_ancestors.join(" ") };
    let forms = std::iter::once("'self'").chain(form_targets.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
    let csp = format!(
        "default-src 'none'; style-src {}; form-action {forms}; frame-ancestors {frames}; base-uri 'none'",
        *STYLE_SRC
    );
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    if frame_ancestors.is_empty() {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn html(status: StatusCode, body: Result<String, askama::Error>) -> Response {
    match body {
        Ok(body) => (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering the connect page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "internal error")
                .into_response()
        }
    }
}

fn accept_language(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok())
}

/// A page with a heading and a sentence; nothing about the session.
fn message(status: StatusCode, t: &'static Texts, heading: &'static str, message: &'static str) -> Response {
    let page = MessageTemplate { t, css: CSS, heading, message };
    secure(html(status, page.render()), &[], &[])
}

/// The page for a link that opens no session: 404 or 410, told apart only by the words.
fn closed(error: OpenError, t: &'static Texts) -> Response {
    match error {
        OpenError::Unknown => message(StatusCode::NOT_FOUND, t, t.not_found_title, t.not_found_message),
        OpenError::Ended => message(StatusCode::GONE, t, t.gone_title, t.gone_message),
        OpenError::Other(e) => failed(&e, t),
    }
}

fn failed(error: &crate::Error, t: &'static Texts) -> Response {
    tracing::error!(error = %error, "connect page failed");
    message(StatusCode::INTERNAL_SERVER_ERROR, t, t.error_title, t.error_message)
}

fn session_locale(session: &OpenSession, headers: &HeaderMap) -> &'static Texts {
    texts(Locale::negotiate(session.record.locale.as_deref(), accept_language(headers)))
}

/// The page: the project, its providers for this patient, Connect / Disconnect, Done.
pub async fn show(
    State(s): State<Arc<Services>>,
    ApiPath(token): ApiPath<String>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let session = match sessions::open(&s, &token).await {
        Ok(session) => session,
        Err(e) => return closed(e, texts(Locale::negotiate(None, accept_language(&headers)))),
    };
    let t = session_locale(&session, &headers);
    let (page, frames) =
        match tokio::try_join!(sessions::view(&s, &session), sessions::frame_ancestors(&s, &session.record.project_id))
        {
            Ok(found) => found,
            Err(e) => return failed(&e, t),
        };
    let query: PageQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    // Only a provider of this page is named, and only known reasons are shown: the query is
    // anyone's to write.
    let named = query.provider.as_deref().and_then(|slug| page.providers.iter().find(|p| p.slug == slug));
    let notice = named.and_then(|p| {
        let fill = |text: &str| text.replace("{provider}", p.name);
        match query.result.as_deref()? {
            "connected" if p.connected => Some(Notice { kind: "ok", message: fill(t.result_connected), reason: None }),
            "disconnected" if !p.connected => {
                Some(Notice { kind: "ok", message: fill(t.result_disconnected), reason: None })
            }
            "failed" if !p.connected => Some(Notice {
                kind: "error",
                message: fill(t.result_failed),
                reason: Some(fill(query.reason.as_deref().and_then(|r| t.reason(r)).unwrap_or(t.reason_ours))),
            }),
            _ => None,
        }
    });
    let failed_slug = notice.as_ref().filter(|n| n.kind == "error").and(named).map(|p| p.slug);
    // Chromium applies `form-action` to the redirects that follow a form's POST too: without the
    // providers' origins (Connect) and the platform's (Done) the browser stops on the page
    // (tests/connect_page.rs fails that way).
    let mut form_targets: Vec<String> = page.providers.iter().map(|p| p.authorize_origin.clone()).collect();
    if let Some(origin) = session.record.redirect_uri.as_deref().and_then(|u| url::Url::parse(u).ok()) {
        form_targets.push(origin.origin().ascii_serialization());
    }
    form_targets.sort();
    form_targets.dedup();
    let template = PageTemplate {
        t,
        css: CSS,
        project_name: &page.project_name,
        intro: t.intro.replace("{project}", &page.project_name),
        notice,
        providers: page
            .providers
            .iter()
            .map(|p| ProviderItem {
                slug: p.slug,
                name: p.name,
                connected: p.connected,
                failed: Some(p.slug) == failed_slug,
            })
            .collect(),
        token: session.token(),
        action: format!("/connect/{}", session.token()),
    };
    secure(html(StatusCode::OK, template.render()), &frames, &form_targets)
}

/// A form POST from the page itself: the browser says so (`Sec-Fetch-Site`, else `Origin`).
/// The session token in the form is what a cross-site page cannot know; this is the second lock.
/// (`Origin: null` is what browsers send for a form of a `no-referrer` page, so it is let through.)
fn from_the_page(headers: &HeaderMap, base: &url::Url) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None | Some("null") => true,
        Some(origin) => origin == base.origin().ascii_serialization(),
    }
}

fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location.to_string())]).into_response()
}

/// The page's buttons: `action` = `connect`, `disconnect` (with `provider`) or `done`.
pub async fn act(
    State(s): State<Arc<Services>>,
    ApiPath(token): ApiPath<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let refused = |t: &'static Texts| message(StatusCode::FORBIDDEN, t, t.refused_title, t.refused_message);
    let form: Option<PageForm> = serde_urlencoded::from_bytes(&body).ok();
    let untrusted = texts(Locale::negotiate(None, accept_language(&headers)));
    let Some(form) = form.filter(|f| bool::from(f.session.as_bytes().ct_eq(token.as_bytes()))) else {
        return refused(untrusted);
    };
    if !from_the_page(&headers, &s.config.base_url) {
        return refused(untrusted);
    }
    let session = match sessions::open(&s, &token).await {
        Ok(session) => session,
        Err(e) => return closed(e, untrusted),
    };
    let t = session_locale(&session, &headers);
    let page = sessions::page_url(&s, session.token());
    let back = |result: &str, slug: &str, reason: Option<&str>| {
        let mut url = page.clone();
        url.query_pairs_mut().append_pair("result", result).append_pair("provider", slug);
        if let Some(reason) = reason {
            url.query_pairs_mut().append_pair("reason", reason);
        }
        secure(see_other(url.as_str()), &[], &[])
    };
    let slug = form.provider.as_deref().unwrap_or_default();
    match form.action.as_str() {
        "connect" => match sessions::start_connect(&s, &session, slug).await {
            // Straight on to the provider: the page's CSP lets forms go to its origin.
            Ok(authorize) => secure(see_other(authorize.as_str()), &[], &[]),
            Err(crate::Error::NotFound(_)) => refused(t),
            Err(e @ (crate::Error::ProviderDisabled { .. } | crate::Error::CredentialsMissing { .. })) => {
                tracing::info!(error = %e, "connect from the page refused");
                back("failed", slug, Some("unavailable"))
            }
            Err(e) => failed(&e, t),
        },
        "disconnect" => match sessions::disconnect(&s, &session, slug).await {
            Ok(()) => back("disconnected", slug, None),
            Err(crate::Error::NotFound(_)) => refused(t),
            Err(e) => failed(&e, t),
        },
        "done" => match sessions::done(&s, &session).await {
            Ok(Some(target)) => secure(see_other(target.as_str()), &[], &[]),
            Ok(None) => message(StatusCode::OK, t, t.done_title, t.done_message),
            Err(e) => failed(&e, t),
        },
        _ => refused(t),
    }
}
