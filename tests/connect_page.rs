//! The hosted connect page: a platform makes a session with one call and hands the patient its
//! link; the patient connects (and disconnects) wearables on the page, in their language.
//! The API and the page's HTTP behaviour run on both backends; the browser stories drive headless
//! Chromium on SQLite.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use browser::{Browser, BrowserOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{problem_code, query_map, Backend, Options, TestApp};

/// The platform's own page that "Done" leads to: records each visit's query.
struct Platform {
    base: String,
    visits: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

impl Platform {
    async fn start() -> Self {
        let visits: Arc<Mutex<Vec<HashMap<String, String>>>> = Arc::default();
        let seen = Arc::clone(&visits);
        let app = axum::Router::new().route(
            "/connected",
            axum::routing::get(move |axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push(q);
                    axum::response::Html(
                        "<!doctype html><title>Platform</title><h1 id=platform>Back at the platform</h1>",
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Platform { base, visits }
    }

    fn redirect_uri(&self) -> String {
        format!("{}/connected?from=wearlink", self.base)
    }

    fn visits(&self) -> Vec<HashMap<String, String>> {
        self.visits.lock().unwrap().clone()
    }
}

/// A project with Strava set up, a patient and a member token.
async fn clinic(backend: Backend, options: Options) -> (TestApp, String, String) {
    let app = TestApp::spawn_with(backend, options).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let member = app.member_token().await;
    (app, patient, member)
}

async fn create_session(app: &TestApp, member: &str, body: Value) -> (StatusCode, Value) {
    app.send("POST", "/v1/wearables/connect-sessions", Some(member), Some(body)).await
}

/// A session's link, checked for its shape.
async fn session_url(app: &TestApp, member: &str, body: Value) -> (String, String) {
    let (status, created) = create_session(app, member, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let url = created["url"].as_str().unwrap().to_string();
    (url, created["id"].as_str().unwrap().to_string())
}

/// The link's token (the part after `/connect/`).
fn token_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

/// A plain HTTP client as a browser would be: no redirects followed, a language.
async fn get_page(app: &TestApp, url: &str, language: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = app.http.get(url).header("accept-language", language).send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// A form POST from the page, as the browser sends it.
async fn press(app: &TestApp, url: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    app.http
        .post(url)
        .header("sec-fetch-site", "same-origin")
        .header("origin", "null")
        .form(fields)
        .send()
        .await
        .unwrap()
}

fn location(response: &reqwest::Response) -> url::Url {
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap()
}

// ---- the API and the page over HTTP, on both backends ----

async fn a_platform_gets_a_link_that_shows_the_patient_its_providers(backend: Backend) {
    let (app, patient, member) = clinic(backend, Options::default()).await;
    let before = wearlink::time::now_ms();
    let (status, created) = create_session(&app, &member, json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let url = created["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/connect/", app.base)), "{url}");
    let token = token_of(url);
    assert!(token.len() >= 43, "at least 256 bits: {token}");
    let expires_at = created["expiresAt"].as_i64().unwrap();
    assert!((before + 1_790_000..=before + 1_810_000).contains(&expires_at), "30 minutes: {expires_at}");
    assert!(created["id"].is_string());

    let (status, headers, html) = get_page(&app, url, "en").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("clinic"), "the project's name");
    assert!(html.contains("Strava") && !html.contains("Polar"), "only providers set up: {html}");
    assert!(html.contains("Not connected"));
    assert!(!html.contains("<script"), "no script");
    assert!(html.len() < 30 * 1024, "{} bytes", html.len());

    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("style-src 'sha256-"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("base-uri 'none'"), "{csp}");
    assert!(csp.contains(&format!("form-action 'self' http://{}", app.stand_in.addr)), "Strava's origin: {csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));

    app.assert_not_stored(&[token]).await;
}

async fn sessions_are_checked_like_connect(backend: Backend) {
    let (app, patient, member) = clinic(backend, Options::default()).await;
    let (status, body) = create_session(&app, &member, json!({"patientId": "nobody"})).await;
    assert_eq!(problem_code(&body, StatusCode::NOT_FOUND), "not_found", "{status}");
    for bad in [
        json!({"patientId": patient, "providers": ["fitbit"]}),
        json!({"patientId": patient, "providers": []}),
        json!({"patientId": patient, "locale": "fr"}),
        json!({"patientId": patient, "redirectUri": "javascript:alert(1)"}),
        json!({"patientId": "a/b"}),
    ] {
        let (status, body) = create_session(&app, &member, bad.clone()).await;
        assert_eq!(problem_code(&body, StatusCode::UNPROCESSABLE_ENTITY), "validation_failed", "{bad} → {status}");
    }
    let admin = app.admin.clone();
    let (status, _) = app
        .send(
            "PUT",
            "/v1/project/settings/WEARABLE_REDIRECT_ALLOWLIST",
            Some(&admin),
            Some(json!({"value": "https://app.example"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) =
        create_session(&app, &member, json!({"patientId": patient, "redirectUri": "https://evil.example/x"})).await;
    assert_eq!(problem_code(&body, StatusCode::UNPROCESSABLE_ENTITY), "validation_failed", "{status}");
    let (status, _) =
        create_session(&app, &member, json!({"patientId": patient, "redirectUri": "https://app.example/done"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) =
        app.send("POST", "/v1/wearables/connect-sessions", None, Some(json!({"patientId": patient}))).await;
    assert_eq!(problem_code(&body, StatusCode::UNAUTHORIZED), "unauthorized", "{status}");
}

async fn a_deleted_or_unknown_link_shows_a_page_without_detail(backend: Backend) {
    let (app, patient, member) = clinic(backend, Options::default()).await;
    let (url, id) = session_url(&app, &member, json!({"patientId": patient})).await;
    let (other_project, other_admin) = app.other_project().await;
    let _ = other_project;
    let (status, body) =
        app.send("DELETE", &format!("/v1/wearables/connect-sessions/{id}"), Some(&other_admin), None).await;
    assert_eq!(problem_code(&body, StatusCode::NOT_FOUND), "not_found", "another project's session: {status}");
    assert_eq!(get_page(&app, &url, "en").await.0, StatusCode::OK, "still open");

    for _ in 0..2 {
        let (status, _) =
            app.send("DELETE", &format!("/v1/wearables/connect-sessions/{id}"), Some(&member), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "idempotent");
    }
    let (status, headers, html) = get_page(&app, &url, "en").await;
    assert_eq!(status, StatusCode::GONE);
    assert!(html.contains("Link expired") && !html.contains("clinic") && !html.contains(&patient), "{html}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("form-action 'self';"));

    let (status, _, html) = get_page(&app, &format!("{}/connect/{}", app.base, "x".repeat(43)), "de").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("Link nicht gefunden"), "{html}");
    let refused =
        press(&app, &url, &[("session", &token_of(&url)), ("action", "connect"), ("provider", "strava")]).await;
    assert_eq!(refused.status(), StatusCode::GONE, "no action on an ended session");
}

async fn an_expired_link_answers_410(backend: Backend) {
    let options = Options { tweak: |c| c.connect_session_ttl = Duration::from_secs(1), ..Default::default() };
    let (app, patient, member) = clinic(backend, options).await;
    let (url, _) = session_url(&app, &member, json!({"patientId": patient})).await;
    assert_eq!(get_page(&app, &url, "en").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, html) = get_page(&app, &url, "en").await;
    assert_eq!(status, StatusCode::GONE);
    assert!(html.contains("This link has expired"));
}

async fn the_page_connects_disconnects_and_hands_back(backend: Backend) {
    let (app, patient, member) = clinic(backend, Options::default()).await;
    let platform = Platform::start().await;
    let (url, _) =
        session_url(&app, &member, json!({"patientId": patient, "redirectUri": platform.redirect_uri()})).await;
    let token = token_of(&url);
    let csp = get_page(&app, &url, "en").await.1["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains(&platform.base), "Done may go to the platform: {csp}");

    // Connect: off to the provider, with a state of its own; the callback brings the patient back.
    let to_provider =
        location(&press(&app, &url, &[("session", &token), ("action", "connect"), ("provider", "strava")]).await);
    assert!(to_provider.as_str().starts_with(&app.stand_in.url("/strava/oauth/authorize")), "{to_provider}");
    let callback = app.approve(to_provider.as_str()).await;
    let (status, back, _) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let back = back.unwrap();
    assert_eq!(back.as_str().split('?').next().unwrap(), url, "back on the page");
    assert_eq!(query_map(&back)["result"], "connected");
    let (_, headers, html) = get_page(&app, back.as_str(), "en").await;
    assert!(html.contains("Strava is connected.") && html.contains("data-state=\"connected\""), "{html}");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let endpoints = app.endpoints_of(&patient).await;
    assert_eq!(endpoints["entry"][0]["resource"]["status"], "active");

    // Disconnect takes the consent back.
    let back =
        location(&press(&app, &url, &[("session", &token), ("action", "disconnect"), ("provider", "strava")]).await);
    assert_eq!(query_map(&back)["result"], "disconnected");
    let html = get_page(&app, back.as_str(), "en").await.2;
    assert!(html.contains("Strava is disconnected") && html.contains("Not connected"), "{html}");
    assert_eq!(app.endpoints_of(&patient).await["entry"][0]["resource"]["status"], "off");

    // Done: to the platform with what is connected now (nothing), and the link is spent.
    let done = location(&press(&app, &url, &[("session", &token), ("action", "done")]).await);
    assert!(done.as_str().starts_with(&platform.base));
    let q = query_map(&done);
    assert_eq!((q["from"].as_str(), q["status"].as_str(), q["providers"].as_str()), ("wearlink", "cancelled", ""));
    assert_eq!(get_page(&app, &url, "en").await.0, StatusCode::GONE);
}

async fn posts_from_elsewhere_are_refused(backend: Backend) {
    let (app, patient, member) = clinic(backend, Options::default()).await;
    let (url, _) = session_url(&app, &member, json!({"patientId": patient})).await;
    let token = token_of(&url);
    let fields = [("session", token.as_str()), ("action", "connect"), ("provider", "strava")];
    let cross_site = app.http.post(&url).header("sec-fetch-site", "cross-site").form(&fields).send().await.unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    let other_origin = app.http.post(&url).header("origin", "https://evil.example").form(&fields).send().await.unwrap();
    assert_eq!(other_origin.status(), StatusCode::FORBIDDEN);
    let wrong_token = press(&app, &url, &[("session", "guess"), ("action", "connect"), ("provider", "strava")]).await;
    assert_eq!(wrong_token.status(), StatusCode::FORBIDDEN);
    let not_offered = press(&app, &url, &[("session", &token), ("action", "connect"), ("provider", "polar")]).await;
    assert_eq!(not_offered.status(), StatusCode::FORBIDDEN);
    assert!(app.endpoints_of(&patient).await["entry"].as_array().is_none_or(|e| e.is_empty()));
}

async fn the_project_chooses_who_may_frame_the_page(backend: Backend) {
    let (app, patient, member) = clinic(backend, Options::default()).await;
    let admin = app.admin.clone();
    let key = "/v1/project/settings/WEARABLE_CONNECT_FRAME_ANCESTORS";
    let (status, body) = app.send("PUT", key, Some(&admin), Some(json!({"value": "not an origin"}))).await;
    assert_eq!(problem_code(&body, StatusCode::UNPROCESSABLE_ENTITY), "validation_failed", "{status}");
    let (status, _) = app
        .send("PUT", key, Some(&admin), Some(json!({"value": "https://portal.example, https://app.example:8443"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (url, _) = session_url(&app, &member, json!({"patientId": patient})).await;
    let (_, headers, _) = get_page(&app, &url, "en").await;
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors https://portal.example https://app.example:8443"), "{csp}");
    assert!(headers.get("x-frame-options").is_none());
}

async fn a_session_can_offer_some_providers_in_german(backend: Backend) {
    let (app, patient, member) = clinic(backend, Options::default()).await;
    app.configure("polar").await;
    let (url, _) =
        session_url(&app, &member, json!({"patientId": patient, "providers": ["polar"], "locale": "de"})).await;
    let (_, _, html) = get_page(&app, &url, "en-US,en").await;
    assert!(html.contains("Polar") && !html.contains("Strava"), "{html}");
    assert!(html.contains("lang=\"de\"") && html.contains("Konten verbinden"), "the session's locale wins");
}

async fn a_link_ended_while_at_the_provider_connects_nothing(backend: Backend) {
    let (app, patient, member) = clinic(backend, Options::default()).await;
    let (url, id) = session_url(&app, &member, json!({"patientId": patient})).await;
    let to_provider = location(
        &press(&app, &url, &[("session", &token_of(&url)), ("action", "connect"), ("provider", "strava")]).await,
    );
    let callback = app.approve(to_provider.as_str()).await;
    let (status, _) = app.send("DELETE", &format!("/v1/wearables/connect-sessions/{id}"), Some(&member), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, back, _) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(get_page(&app, back.unwrap().as_str(), "en").await.0, StatusCode::GONE);
    assert!(app.stand_in.token_requests().is_empty(), "the code was never exchanged");
    assert!(app.endpoints_of(&patient).await["entry"].as_array().is_none_or(|e| e.is_empty()));
}

async fn ended_sessions_are_swept_and_live_ones_kept(backend: Backend) {
    let (app, patient, member) = clinic(backend, Options::default()).await;
    let (ended, id) = session_url(&app, &member, json!({"patientId": patient})).await;
    let (live, _) = session_url(&app, &member, json!({"patientId": patient})).await;
    let (status, _) = app.send("DELETE", &format!("/v1/wearables/connect-sessions/{id}"), Some(&member), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // What the sweeper does a day after the end, a day early.
    let swept = app.services.store.delete_connect_sessions_before(wearlink::time::now_ms() + 1).await.unwrap();
    assert_eq!(swept, 1);
    assert_eq!(get_page(&app, &ended, "en").await.0, StatusCode::NOT_FOUND, "gone for good");
    assert_eq!(get_page(&app, &live, "en").await.0, StatusCode::OK);
}

async fn done_without_a_redirect_says_goodbye_in_the_patients_language(backend: Backend) {
    let (app, patient, member) = clinic(backend, Options::default()).await;
    let (url, _) = session_url(&app, &member, json!({"patientId": patient})).await;
    let response = app
        .http
        .post(&url)
        .header("sec-fetch-site", "same-origin")
        .header("accept-language", "de-CH, en;q=0.4")
        .form(&[("session", token_of(&url).as_str()), ("action", "done")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let html = response.text().await.unwrap();
    assert!(html.contains("Sie können dieses Fenster jetzt schließen."), "{html}");
    assert_eq!(get_page(&app, &url, "en").await.0, StatusCode::GONE, "the link is spent");
}

/// A provider whose hosts differ by setting (Dexcom's sandbox): the page's Connect redirects to
/// the host the project's settings choose, so the CSP's `form-action` names that one.
async fn the_page_allows_the_host_the_projects_settings_choose(backend: Backend) {
    let env = vec![
        ("WEARLINK_PROVIDER_DEXCOM_REGION_US_URL".to_string(), "http://127.0.0.1:9".to_string()),
        ("WEARLINK_PROVIDER_DEXCOM_REGION_SANDBOX_URL".to_string(), "http://127.0.0.2:9".to_string()),
    ];
    let (app, patient, member) = clinic(backend, Options { env, ..Options::default() }).await;
    app.configure_with("dexcom", "dexcom-client", "dexcom-secret").await;
    let form_action = |csp: &str| csp.split(';').find(|d| d.trim().starts_with("form-action")).unwrap().to_string();
    let (url, _) = session_url(&app, &member, json!({"patientId": patient, "providers": ["dexcom"]})).await;
    let (status, headers, _) = get_page(&app, &url, "en").await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers["content-security-policy"].to_str().unwrap().to_string();
    assert!(form_action(&csp).contains("http://127.0.0.1:9"), "production: {csp}");

    let admin = app.admin.clone();
    let body = json!({"value": "sandbox"});
    let setting = "/v1/project/settings/WEARABLE_DEXCOM_ENVIRONMENT";
    assert_eq!(app.send("PUT", setting, Some(&admin), Some(body)).await.0, StatusCode::OK);
    let (url, _) = session_url(&app, &member, json!({"patientId": patient, "providers": ["dexcom"]})).await;
    let (_, headers, _) = get_page(&app, &url, "en").await;
    let csp = headers["content-security-policy"].to_str().unwrap().to_string();
    assert!(form_action(&csp).contains("http://127.0.0.2:9"), "the sandbox: {csp}");
    assert!(!form_action(&csp).contains("http://127.0.0.1:9"), "{csp}");
}

on_both_backends!(
    the_page_allows_the_host_the_projects_settings_choose,
    done_without_a_redirect_says_goodbye_in_the_patients_language,
    ended_sessions_are_swept_and_live_ones_kept,
    a_platform_gets_a_link_that_shows_the_patient_its_providers,
    sessions_are_checked_like_connect,
    a_deleted_or_unknown_link_shows_a_page_without_detail,
    an_expired_link_answers_410,
    the_page_connects_disconnects_and_hands_back,
    posts_from_elsewhere_are_refused,
    the_project_chooses_who_may_frame_the_page,
    a_session_can_offer_some_providers_in_german,
    a_link_ended_while_at_the_provider_connects_nothing,
);

// ---- in a real browser (SQLite) ----

/// The lowest contrast ratio (WCAG 2) of any text on the page against the background behind it.
const LOWEST_CONTRAST: &str = r#"
const rgb = c => c.match(/[\d.]+/g).map(Number);
const lum = ([r, g, b]) => { const f = v => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
const behind = el => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor);
  if (c.length < 4 || c[3] > 0) return c; } return [255, 255, 255]; };
let lowest = 21;
for (const el of document.querySelectorAll('h1, h2, p, button')) {
  if (!el.offsetParent && el.tagName !== 'BODY') continue;
  const a = lum(rgb(getComputedStyle(el).color)), b = lum(behind(el));
  lowest = Math.min(lowest, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05));
}
return lowest;
"#;

/// Writes the README's screenshots when `WEARLINK_WRITE_SCREENSHOTS=1`.
fn keep_screenshot(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if std::env::var("WEARLINK_WRITE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name);
        std::fs::write(&path, png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_patient_connects_strava_and_returns_to_the_platform() {
    let Some(browser) = Browser::start(BrowserOptions::default()).await else { return };
    let (app, patient, member) = clinic(Backend::Sqlite, Options::default()).await;
    app.configure("polar").await;
    app.stand_in.set_interactive(true);
    let platform = Platform::start().await;
    let (url, _) =
        session_url(&app, &member, json!({"patientId": patient, "redirectUri": platform.redirect_uri()})).await;

    browser.goto(&url).await;
    assert_eq!(browser.text("h1").await, "Connect your accounts");
    assert_eq!(browser.text("#provider-strava .state").await, "Not connected");
    browser.click("#connect-strava").await;

    // At the provider's (stand-in's) authorize page, the patient approves.
    browser.wait_for_url(&app.stand_in.url("/strava/oauth/authorize")).await;
    browser.click("#approve").await;

    // Back on the page: connected.
    let back = browser.wait_for_url(&url).await;
    assert_eq!(query_map(&back)["result"], "connected");
    assert_eq!(browser.text("#notice").await, "Strava is connected.");
    assert_eq!(browser.text("#provider-strava .state").await, "✓ Connected");
    assert_eq!(browser.text("#provider-polar .state").await, "Not connected");
    assert_eq!(app.endpoints_of(&patient).await["entry"][0]["resource"]["status"], "active");
    let contrast = browser.eval(LOWEST_CONTRAST).await.as_f64().unwrap();
    assert!(contrast >= 4.5, "AA contrast, lowest {contrast:.2}");
    keep_screenshot("connect-page-desktop.png", &browser.screenshot().await);

    browser.click("#done").await;
    browser.wait_for_url(&platform.base).await;
    assert_eq!(browser.text("#platform").await, "Back at the platform");
    let visits = platform.visits();
    assert_eq!(visits.len(), 1);
    assert_eq!((visits[0]["status"].as_str(), visits[0]["providers"].as_str()), ("connected", "strava"));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_patient_who_declines_sees_why_and_can_try_again() {
    let Some(browser) = Browser::start(BrowserOptions::default()).await else { return };
    let (app, patient, member) = clinic(Backend::Sqlite, Options::default()).await;
    app.stand_in.set_interactive(true);
    let (url, _) = session_url(&app, &member, json!({"patientId": patient})).await;

    browser.goto(&url).await;
    browser.click("#connect-strava").await;
    browser.wait_for_url(&app.stand_in.url("/strava/oauth/authorize")).await;
    browser.click("#deny").await;

    let back = browser.wait_for_url(&url).await;
    assert_eq!(query_map(&back)["reason"], "access_denied");
    let notice = browser.find("#notice").await;
    assert_eq!(notice.attr("role").await.unwrap().as_deref(), Some("alert"));
    assert_eq!(
        notice.text().await.unwrap(),
        "Strava could not be connected.\nYou did not allow access at Strava. You can try again."
    );
    assert_eq!(browser.text("#provider-strava .state").await, "Not connected");
    // The button's name is "Try again Strava"; the provider part is for screen readers only.
    assert_eq!(browser.text("#connect-strava").await, "Try again\nStrava");

    browser.click("#connect-strava").await;
    browser.wait_for_url(&app.stand_in.url("/strava/oauth/authorize")).await;
    browser.click("#approve").await;
    browser.wait_for_url(&url).await;
    assert_eq!(browser.text("#provider-strava .state").await, "✓ Connected");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_link_that_expired_during_the_visit_says_so() {
    let Some(browser) = Browser::start(BrowserOptions::default()).await else { return };
    let options = Options { tweak: |c| c.connect_session_ttl = Duration::from_secs(2), ..Default::default() };
    let (app, patient, member) = clinic(Backend::Sqlite, options).await;
    let (url, _) = session_url(&app, &member, json!({"patientId": patient})).await;

    browser.goto(&url).await;
    browser.find("#connect-strava").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    browser.click("#connect-strava").await;
    assert_eq!(browser.text("h1").await, "Link expired");
    assert_eq!(browser.text("#message").await, "This link has expired. Please ask for a new one.");
    assert!(browser.client.find(fantoccini::Locator::Css("form")).await.is_err(), "nothing left to press");
    assert!(app.stand_in.token_requests().is_empty());
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_the_page_speaks_german_to_a_german_browser() {
    let options = BrowserOptions { accept_language: "de-DE,de;q=0.9,en;q=0.5", ..Default::default() };
    let Some(browser) = Browser::start(options).await else { return };
    let (app, patient, member) = clinic(Backend::Sqlite, Options::default()).await;
    app.stand_in.set_interactive(true);
    let (url, _) = session_url(&app, &member, json!({"patientId": patient})).await;

    browser.goto(&url).await;
    assert_eq!(browser.eval("return document.documentElement.lang").await, "de");
    assert_eq!(browser.text("h1").await, "Konten verbinden");
    assert_eq!(browser.text("#provider-strava .state").await, "Nicht verbunden");
    assert_eq!(browser.text("#connect-strava").await, "Verbinden\nStrava");
    browser.click("#connect-strava").await;
    browser.wait_for_url(&app.stand_in.url("/strava/oauth/authorize")).await;
    browser.click("#deny").await;
    browser.wait_for_url(&url).await;
    assert_eq!(
        browser.text("#notice").await,
        "Strava konnte nicht verbunden werden.\nSie haben den Zugriff bei Strava nicht erlaubt. Sie können es erneut versuchen."
    );
    assert_eq!(browser.text("#connect-strava").await, "Erneut versuchen\nStrava");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_the_page_fits_a_360_pixel_phone() {
    let options = BrowserOptions { width: 360, height: 740, phone: true, ..Default::default() };
    let Some(browser) = Browser::start(options).await else { return };
    let (app, patient, member) = clinic(Backend::Sqlite, Options::default()).await;
    app.configure("polar").await;
    let (url, _) = session_url(&app, &member, json!({"patientId": patient})).await;

    browser.goto(&url).await;
    browser.find("#connect-polar").await;
    assert_eq!(browser.eval("return window.innerWidth").await, 360);
    let scroll_width = browser.eval("return document.documentElement.scrollWidth").await;
    assert!(scroll_width.as_i64().unwrap() <= 360, "no horizontal scroll: {scroll_width}");
    // Every button is a comfortable target.
    let smallest = browser
        .eval("return Math.min(...[...document.querySelectorAll('button')].map(b => b.getBoundingClientRect().height))")
        .await;
    assert!(smallest.as_f64().unwrap() >= 44.0, "buttons at least 44 px high: {smallest}");
    keep_screenshot("connect-page-phone.png", &browser.screenshot().await);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_keyboard_alone_reaches_connect_and_starts_it() {
    use fantoccini::key::Key;
    let Some(browser) = Browser::start(BrowserOptions::default()).await else { return };
    let (app, patient, member) = clinic(Backend::Sqlite, Options::default()).await;
    app.stand_in.set_interactive(true);
    let (url, _) = session_url(&app, &member, json!({"patientId": patient})).await;

    browser.goto(&url).await;
    browser.find("#connect-strava").await;
    let mut focused = Value::Null;
    for _ in 0..5 {
        browser.press(Key::Tab).await;
        focused = browser.eval("return document.activeElement.id").await;
        if focused == "connect-strava" {
            break;
        }
    }
    assert_eq!(focused, "connect-strava", "Tab reaches the connect button first");
    let outline = browser.eval("return getComputedStyle(document.activeElement).outlineStyle").await;
    assert_eq!(outline, "solid", "the focus is visible");
    browser.press(Key::Enter).await;
    browser.wait_for_url(&app.stand_in.url("/strava/oauth/authorize")).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_the_page_follows_a_dark_colour_scheme() {
    let options = BrowserOptions { width: 360, height: 740, phone: true, dark: true, ..Default::default() };
    let Some(browser) = Browser::start(options).await else { return };
    let (app, patient, member) = clinic(Backend::Sqlite, Options::default()).await;
    let (url, _) = session_url(&app, &member, json!({"patientId": patient})).await;

    browser.goto(&url).await;
    browser.find("#connect-strava").await;
    assert_eq!(browser.eval("return matchMedia('(prefers-color-scheme: dark)').matches").await, true);
    assert_eq!(browser.eval("return getComputedStyle(document.body).backgroundColor").await, "rgb(18, 18, 21)");
    assert_eq!(browser.eval("return getComputedStyle(document.body).color").await, "rgb(236, 236, 241)");
    let contrast = browser.eval(LOWEST_CONTRAST).await.as_f64().unwrap();
    assert!(contrast >= 4.5, "AA contrast in the dark too, lowest {contrast:.2}");
    keep_screenshot("connect-page-phone-dark.png", &browser.screenshot().await);
    browser.close().await;
}
