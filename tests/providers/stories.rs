//! The stories every provider tells, written once against `Case`: what a provider's stand-in
//! must let a story do (approve, expire tokens, seed data, sign a webhook as the provider does).
//! A provider's module implements `Case` and lists its stories with `provider_stories!`.
#![allow(dead_code)]

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wearlink::connections::refresh_due;
use wearlink::time::now_ms;

use crate::support::{problem_code, Backend, FhirPartner, Options, TestApp};

/// A delivery as the provider would send it to our webhook URL.
pub struct Delivery {
    pub method: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The webhook URL's query, for providers that are given a URL of ours carrying a secret
    /// (Withings' callback URL with `?token=`).
    pub query: Vec<(String, String)>,
}

impl Delivery {
    pub fn post_json(headers: Vec<(String, String)>, body: &Value) -> Self {
        let mut headers = headers;
        headers.push(("content-type".into(), "application/json".into()));
        Self { method: "POST", headers, body: serde_json::to_vec(body).unwrap(), query: Vec::new() }
    }
}

/// One provider's stand-in, as the shared stories drive it.
#[async_trait]
pub trait Case: Send + Sync {
    fn slug(&self) -> &'static str;
    /// `WEARLINK_PROVIDER_<SLUG>_…` pointing every host of the provider at the stand-in.
    fn env(&self) -> Vec<(String, String)>;
    /// The OAuth app registered at the stand-in: (client id, client secret).
    fn client(&self) -> (String, String);
    /// What the project stores as `WEARABLE_<SLUG>_WEBHOOK_SECRET` before webhooks arrive
    /// (`None`: the provider signs with the client secret or sends none).
    fn webhook_secret(&self) -> Option<String> {
        None
    }
    /// Whether the authorize URL must carry a PKCE S256 challenge.
    fn pkce(&self) -> bool {
        false
    }
    /// Scopes the connection records after an ordinary approval (sorted).
    fn granted_scopes(&self) -> Vec<String>;

    /// The user approves at the authorize URL; answers the URL the provider sends them back to.
    /// The stand-in checks what the provider checks (client id, redirect URI, scopes, PKCE).
    async fn approve(&self, authorization_url: &str) -> String {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let response = http.get(authorization_url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "authorize refused: {}", response.text().await.unwrap());
        response.headers()["location"].to_str().unwrap().to_string()
    }
    /// The user declines: the URL the provider sends them back to.
    fn decline(&self, authorization_url: &str) -> String {
        let url = url::Url::parse(authorization_url).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        let mut back = url::Url::parse(&q["redirect_uri"]).unwrap();
        back.query_pairs_mut().append_pair("error", "access_denied").append_pair("state", &q["state"]);
        back.to_string()
    }
    /// The provider's user id of the most recent approval.
    fn last_user(&self) -> String;
    /// Access tokens the stand-in issued so far (none may be stored in clear).
    fn issued_tokens(&self) -> Vec<String>;
    /// Tokens issued from now on expire within a minute (so the refresher takes them at once).
    fn expire_soon(&self);
    /// Successful refreshes of the user's grant so far.
    fn refreshes(&self, user: &str) -> usize;
    /// Every refresh token of the user stops working (the provider's `invalid_grant` next).
    fn kill_grant(&self, user: &str);
    /// Users whose access was revoked (or registration deleted) at the stand-in.
    fn revoked(&self) -> Vec<String>;
    /// Whether the provider has a revocation API (Dexcom has none: disconnect ends our side).
    fn revokes_upstream(&self) -> bool {
        true
    }

    /// Seeds one workout of the user, started at `start_ms`; answers its provider id.
    fn seed_workout(&self, user: &str, start_ms: i64) -> String;
    /// How a workout with this provider id is identified in FHIR: the Procedure's identifier system.
    fn workout_identifier_system(&self) -> String;
    /// The delivery announcing (or, for push providers, carrying) the workout, signed with
    /// `secret` (the client secret or the webhook secret, as the provider signs) at `at_ms`.
    fn workout_delivery(&self, user: &str, workout_id: &str, at_ms: i64, secret: &str) -> Delivery;
    /// Whether deliveries carry a signed timestamp, so that an old one is a replay.
    fn signs_timestamps(&self) -> bool {
        true
    }
    /// Where the project's webhook is, for a stand-in that pushes by itself (Garmin pushes the
    /// data of a backfill request to it); called once the app is up.
    fn attach(&self, _webhook_url: String) {}
}

/// Lists the shared stories for a provider's `Case` (made by `$start`), each on both backends.
#[macro_export]
macro_rules! provider_stories {
    ($start:expr; $($story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let case = $start.await;
                $crate::stories::$story(&case, $crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::support::postgres_available() {
                    let case = $start.await;
                    $crate::stories::$story(&case, $crate::support::Backend::Postgres).await
                }
            }
        }
    )*};
}

/// Lists a provider module's own stories (`async fn name(backend)` in the calling module), each
/// on both backends.
#[macro_export]
macro_rules! own_stories {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::support::postgres_available() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            }
        }
    )*};
}

/// The app with the provider enabled and its app's credentials (and webhook secret) stored.
pub async fn app_for(case: &dyn Case, backend: Backend) -> TestApp {
    let app = TestApp::spawn_with(backend, Options { env: case.env(), ..Options::default() }).await;
    let (id, secret) = case.client();
    app.configure_with(case.slug(), &id, &secret).await;
    case.attach(app.url(&format!("/v1/wearables/{}/webhook/{}", case.slug(), app.project_id)));
    if let Some(webhook) = case.webhook_secret() {
        let key = format!("WEARABLE_{}_WEBHOOK_SECRET", case.slug().to_uppercase());
        let (status, body) = app
            .send(
                "PUT",
                &format!("/v1/project/secrets/{key}"),
                Some(&app.admin.clone()),
                Some(json!({"value": webhook})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    app
}

/// A patient connected through the stand-in: (patient id, Endpoint id, provider user id).
pub async fn connected(case: &dyn Case, app: &TestApp) -> (String, String, String) {
    let patient = app.create_patient().await;
    let (status, started) = app.connect(case.slug(), json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let back = case.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["status"], "connected", "{page}");
    (patient, page["endpointId"].as_str().unwrap().to_string(), case.last_user())
}

pub async fn connection(app: &TestApp, endpoint_id: &str) -> Value {
    let (status, body) = app.get("/v1/wearables/connections").await;
    assert_eq!(status, StatusCode::OK);
    body["connections"].as_array().unwrap().iter().find(|c| c["id"] == endpoint_id).cloned().expect("listed")
}

pub async fn search(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, bundle) = app.get(&format!("/fhir/R4/{query}")).await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    bundle["entry"].as_array().cloned().unwrap_or_default().into_iter().map(|e| e["resource"].clone()).collect()
}

/// Sends a delivery to the project's webhook URL for the provider; answers status and body.
pub async fn deliver(app: &TestApp, slug: &str, delivery: &Delivery) -> (StatusCode, Value) {
    let url = app.url(&format!("/v1/wearables/{slug}/webhook/{}", app.project_id));
    let mut request =
        app.http.request(delivery.method.parse().unwrap(), url).query(&delivery.query).body(delivery.body.clone());
    for (name, value) in &delivery.headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Runs due jobs until none is left (a backfill is several jobs, one page each).
pub async fn sync_all(app: &TestApp) {
    for _ in 0..50 {
        if app.sync().await == 0 {
            return;
        }
    }
    panic!("sync jobs kept coming");
}

/// The secret deliveries are signed with: the webhook secret where the provider has one,
/// else the client secret.
pub fn signing_secret(case: &dyn Case) -> String {
    case.webhook_secret().unwrap_or_else(|| case.client().1)
}

// ---- the stories ----

/// Connect → approve → the Endpoint, with the provider's user id and the granted scopes; the
/// authorize URL carries what the provider needs and never the PKCE verifier; no token in clear.
pub async fn connect_approve_and_see_the_endpoint(case: &dyn Case, backend: Backend) {
    let app = app_for(case, backend).await;
    let patient = app.create_patient().await;
    let (status, started) = app.connect(case.slug(), json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["provider"], case.slug());
    let authorize = url::Url::parse(started["authorizationUrl"].as_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], case.client().0);
    assert_eq!(q["state"], started["state"].as_str().unwrap());
    assert_eq!(q["redirect_uri"], app.url(&format!("/v1/wearables/{}/callback", case.slug())));
    if case.pkce() {
        assert_eq!(q.get("code_challenge_method").map(String::as_str), Some("S256"));
        assert_eq!(q["code_challenge"].len(), 43, "a base64url SHA-256");
        assert!(!q.contains_key("code_verifier"));
    } else {
        assert!(!q.contains_key("code_challenge"));
    }

    let back = case.approve(authorize.as_str()).await;
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["status"], "connected", "{page}");
    let endpoint_id = page["endpointId"].as_str().unwrap();
    let user = case.last_user();

    let bundle = app.endpoints_of(&patient).await;
    assert_eq!(bundle["total"], 1, "{bundle}");
    let endpoint = &bundle["entry"][0]["resource"];
    assert_eq!(endpoint["id"], endpoint_id);
    assert_eq!(endpoint["status"], "active");
    assert_eq!(endpoint["connectionType"]["code"], case.slug());
    assert!(endpoint["identifier"].as_array().unwrap().iter().any(|i| i["value"] == user.as_str()), "{endpoint}");

    let c = connection(&app, endpoint_id).await;
    assert_eq!(c["remoteUserId"], user.as_str());
    let mut scopes: Vec<String> = serde_json::from_value(c["scopes"].clone()).unwrap();
    scopes.sort();
    assert_eq!(scopes, case.granted_scopes());
    app.assert_not_stored(&case.issued_tokens()).await;

    // The state was spent: the same callback again connects nothing.
    let (status, _, body) = app.callback(&back).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// The user declines at the provider: an error page, no Endpoint.
pub async fn a_declined_connect_stores_nothing(case: &dyn Case, backend: Backend) {
    let app = app_for(case, backend).await;
    let patient = app.create_patient().await;
    let (status, started) = app.connect(case.slug(), json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let back = case.decline(started["authorizationUrl"].as_str().unwrap());
    // Without a redirectUri the callback answers the failure as a problem (400, code access_denied).
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert_eq!(problem_code(&page, status), "access_denied");
    assert_eq!(app.endpoints_of(&patient).await["total"], 0);
}

/// Tokens about to expire are refreshed once (the new refresh token kept: the provider rotates
/// them), and a dead grant turns the connection to `error` with the reason.
pub async fn refresh_rotates_and_a_dead_grant_marks_the_connection_error(case: &dyn Case, backend: Backend) {
    let app = app_for(case, backend).await;
    case.expire_soon();
    let (_, endpoint_id, user) = connected(case, &app).await;

    let report = refresh_due(&app.services, now_ms()).await.unwrap();
    assert_eq!(report.refreshed, 1, "{report:?}");
    assert_eq!(case.refreshes(&user), 1);
    // The rotated token is the one used next: a second refresh works too (once the refresher's
    // minimum interval between two refreshes of a connection has passed).
    let min_interval = app.services.config.refresh.min_interval.as_millis() as i64 + 1;
    let report = refresh_due(&app.services, now_ms() + min_interval).await.unwrap();
    assert_eq!(report.refreshed, 1, "{report:?}");
    assert_eq!(case.refreshes(&user), 2);
    assert_eq!(connection(&app, &endpoint_id).await["status"], "active");

    case.kill_grant(&user);
    let report = refresh_due(&app.services, now_ms() + 2 * min_interval).await.unwrap();
    assert_eq!(report.invalid, 1, "{report:?}");
    let c = connection(&app, &endpoint_id).await;
    assert_eq!(c["status"], "error", "{c}");
    let (status, body) = app
        .send("POST", &format!("/v1/wearables/connections/{endpoint_id}/token"), Some(&app.admin.clone()), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem_code(&body, status), "conflict");
    app.assert_not_stored(&case.issued_tokens()).await;
}

/// Disconnect revokes upstream (seen by the stand-in), wipes the tokens, turns the Endpoint off.
pub async fn disconnect_revokes_upstream(case: &dyn Case, backend: Backend) {
    let app = app_for(case, backend).await;
    let (patient, endpoint_id, user) = connected(case, &app).await;
    let path = format!("/v1/wearables/{}/connections/{patient}", case.slug());
    let (status, body) = app.send("DELETE", &path, Some(&app.admin.clone()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"ok": true, "revokePending": false}));
    let expected = if case.revokes_upstream() { vec![user] } else { Vec::new() };
    assert_eq!(case.revoked(), expected);
    let stored = app.services.store.find_connection_by_endpoint(&endpoint_id).await.unwrap().unwrap();
    assert!(stored.tokens.is_none());
    let (_, endpoint) = app.get(&format!("/fhir/R4/Endpoint/{endpoint_id}")).await;
    assert_eq!(endpoint["status"], "off");
}

/// A signed delivery is stored once (a redelivery is a duplicate); a wrong signature is 401 and
/// stores nothing; an old signed delivery replayed is refused.
pub async fn webhook_signatures_are_checked_and_events_stored_once(case: &dyn Case, backend: Backend) {
    let app = app_for(case, backend).await;
    let (_, _, user) = connected(case, &app).await;
    let secret = signing_secret(case);
    let workout = case.seed_workout(&user, now_ms() - 3_600_000);

    let good = case.workout_delivery(&user, &workout, now_ms(), &secret);
    let (status, body) = deliver(&app, case.slug(), &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"ok": true, "duplicate": false}));
    let (status, body) = deliver(&app, case.slug(), &good).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": true, "duplicate": true})));

    let forged = case.workout_delivery(&user, &workout, now_ms(), "not-the-secret");
    let (status, body) = deliver(&app, case.slug(), &forged).await;
    assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN, "{status} {body}");

    if case.signs_timestamps() {
        let old = case.workout_delivery(&user, &workout, now_ms() - 3_600_000, &secret);
        let (status, body) = deliver(&app, case.slug(), &old).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "a replay of an hour-old delivery: {body}");
    }
    let (_, events) = app.get("/v1/wearables/events").await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
}

/// Data from before the connect is backfilled; a workout announced by webhook afterwards is
/// synced too; both are valid R4 (Medplum's validator); a second sync writes no new version.
pub async fn backfill_and_webhook_data_arrive_as_valid_r4(case: &dyn Case, backend: Backend) {
    let app = app_for(case, backend).await;
    // Seed for the user the next approval creates.
    let (patient, endpoint_id, user) = {
        let patient = app.create_patient().await;
        let (status, started) = app.connect(case.slug(), json!({"patientId": patient})).await;
        assert_eq!(status, StatusCode::OK, "{started}");
        let back = case.approve(started["authorizationUrl"].as_str().unwrap()).await;
        let user = case.last_user();
        case.seed_workout(&user, now_ms() - 3 * 86_400_000);
        let (status, _, page) = app.callback(&back).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        (patient, page["endpointId"].as_str().unwrap().to_string(), user)
    };
    sync_all(&app).await;
    let sessions = search(&app, &format!("Procedure?patient=Patient/{patient}")).await;
    assert_eq!(sessions.len(), 1, "backfilled: {sessions:?}");
    let system = case.workout_identifier_system();
    assert!(sessions[0]["identifier"].to_string().contains(&system), "{}", sessions[0]);

    let workout = case.seed_workout(&user, now_ms() - 3_600_000);
    let (status, body) =
        deliver(&app, case.slug(), &case.workout_delivery(&user, &workout, now_ms(), &signing_secret(case))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sync_all(&app).await;
    let sessions = search(&app, &format!("Procedure?patient=Patient/{patient}")).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(sessions.iter().all(|s| s["extension"].to_string().contains(&endpoint_id)));

    // Resync of the same range: nothing new.
    let versions: Vec<Value> = sessions.iter().map(|s| s["meta"]["versionId"].clone()).collect();
    let (status, body) = app
        .send(
            "POST",
            &format!("/v1/wearables/connections/{endpoint_id}/sync"),
            Some(&app.admin.clone()),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    sync_all(&app).await;
    let again = search(&app, &format!("Procedure?patient=Patient/{patient}")).await;
    assert_eq!(again.len(), 2);
    let mut after: Vec<Value> = again.iter().map(|s| s["meta"]["versionId"].clone()).collect();
    let mut before = versions;
    before.sort_by_key(|v| v.to_string());
    after.sort_by_key(|v| v.to_string());
    assert_eq!(before, after, "unchanged data keeps its versions");

    if let Some(validator) = FhirPartner::start().await {
        let mut all = again;
        all.extend(search(&app, &format!("Observation?patient=Patient/{patient}&_count=200")).await);
        validator.validate_all(&all).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
}

/// Two instances refresh the same expiring connection at once: the provider sees one refresh
/// (a rotating refresh token used twice would kill the grant), and the connection stays active.
pub async fn two_instances_racing_refresh_it_once(case: &dyn Case, backend: Backend) {
    let app = app_for(case, backend).await;
    case.expire_soon();
    let (_, endpoint_id, user) = connected(case, &app).await;
    let (_, second) = app.second_instance().await;
    let now = now_ms();
    let (a, b) = tokio::join!(refresh_due(&app.services, now), refresh_due(&second, now));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.refreshed + b.refreshed, 1, "{a:?} {b:?}");
    assert_eq!(case.refreshes(&user), 1);
    assert_eq!(connection(&app, &endpoint_id).await["status"], "active");
    // The token the winner stored is the one that works: the platform reads it without a refresh.
    let (status, body) = app
        .send("POST", &format!("/v1/wearables/connections/{endpoint_id}/token"), Some(&app.admin.clone()), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(case.issued_tokens().iter().any(|t| body["accessToken"] == t.as_str()), "{body}");
}
