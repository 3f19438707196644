//! The in-process cache of API tokens, settings and secrets keeps its bound: a change made through
//! an instance takes effect there at once; one made elsewhere (another instance, the database
//! itself) takes effect within `WEARLINK_CACHE_TTL_MS`.

mod support;

on_both_backends!(
    changes_through_an_instance_take_effect_there_at_once,
    changes_elsewhere_take_effect_within_the_bound
);

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{problem_code, query_map, Backend, Options, TestApp};

/// Changes through this instance take effect at once, even when cached values could live an hour.
async fn changes_through_an_instance_take_effect_there_at_once(backend: Backend) {
    let app =
        TestApp::spawn_with(backend, Options { cache_ttl: Duration::from_secs(3600), ..Options::default() }).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let admin = app.admin.clone();
    let body = json!({"patientId": patient, "redirectUri": "https://my.dashboard/done"});
    let (status, started) = app.connect("strava", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let pending = app.approve(started["authorizationUrl"].as_str().unwrap()).await;

    // Disabled: connect is refused, and the callback of a connect begun before ends in provider_disabled.
    let setting = "/v1/project/settings/WEARABLE_STRAVA_ENABLED";
    let (status, _) = app.send("PUT", setting, Some(&admin), Some(json!({"enabled": false}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, problem) = app.connect("strava", body.clone()).await;
    assert_eq!(problem_code(&problem, status), "provider_disabled");
    let (status, location, _) = app.callback(&pending).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(query_map(&location.unwrap())["error"], "provider_disabled");

    // Enabled again with new credentials: the authorization URL carries the new client id.
    app.send("PUT", setting, Some(&admin), Some(json!({"enabled": true}))).await;
    let credentials = json!({"clientId": "new-client-4821", "clientSecret": "new-secret"});
    let (status, _) = app.send("PUT", "/v1/wearables/strava/credentials", Some(&admin), Some(credentials)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, started) = app.connect("strava", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let url = url::Url::parse(started["authorizationUrl"].as_str().unwrap()).unwrap();
    assert_eq!(query_map(&url)["client_id"], "new-client-4821");

    // A redirect allowlist that leaves the dashboard out refuses its redirectUri.
    let allowlist = json!({"value": "https://other.example"});
    app.send("PUT", "/v1/project/settings/WEARABLE_REDIRECT_ALLOWLIST", Some(&admin), Some(allowlist)).await;
    let (status, problem) = app.connect("strava", body.clone()).await;
    assert_eq!(problem_code(&problem, status), "validation_failed");

    // Credentials deleted (one key, then all): connect names what is missing.
    app.send("DELETE", "/v1/project/secrets/WEARABLE_STRAVA_CLIENT_SECRET", Some(&admin), None).await;
    let (status, problem) = app.connect("strava", json!({"patientId": patient})).await;
    assert_eq!(problem_code(&problem, status), "credentials_missing");
    assert!(problem["detail"].as_str().unwrap().contains("WEARABLE_STRAVA_CLIENT_SECRET"), "{problem}");
    app.send("DELETE", "/v1/wearables/strava/credentials", Some(&admin), None).await;
    let (status, problem) = app.connect("strava", json!({"patientId": patient})).await;
    assert!(problem["detail"].as_str().unwrap().contains("WEARABLE_STRAVA_CLIENT_ID"), "{problem}");
    assert_eq!(problem_code(&problem, status), "credentials_missing");
}

/// Another instance disables the provider and an API token is revoked in the database: this
/// instance, whose cache holds both, follows within the bound.
async fn changes_elsewhere_take_effect_within_the_bound(backend: Backend) {
    const BOUND: Duration = Duration::from_millis(1000);
    let app = TestApp::spawn_with(backend, Options { cache_ttl: BOUND, ..Options::default() }).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let member = app.member_token().await;
    let body = json!({"patientId": patient});
    let connect = |token: String| {
        let request = app.http.post(app.url("/v1/wearables/strava/connect")).bearer_auth(token).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Cached here: the member token, the settings and the secrets.
    let (status, started) = connect(member.clone()).await;
    assert_eq!(status, StatusCode::OK, "{started}");

    // Elsewhere: the other instance turns Strava off; the member token is deleted from the database.
    let (other, _) = app.second_instance().await;
    let response = app
        .http
        .put(format!("{other}/v1/project/settings/WEARABLE_STRAVA_ENABLED"))
        .bearer_auth(&app.admin)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    revoke_in_database(&app, &member).await;

    // Once the bound has passed, this instance refuses both.
    tokio::time::sleep(BOUND + Duration::from_millis(100)).await;
    let (status, problem) = connect(member.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked token still works: {problem}");
    assert_eq!(problem_code(&problem, status), "unauthorized");
    let (status, problem) = connect(app.admin.clone()).await;
    assert_eq!(problem_code(&problem, status), "provider_disabled");
}

/// Deletes an API token's row, as an operator (or another instance) revoking it would.
async fn revoke_in_database(app: &TestApp, token: &str) {
    let hash = wearlink::crypto::sha256_hex(token);
    let sql = "DELETE FROM api_tokens WHERE token_hash = $1";
    let deleted = match app.db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&app.db.url).await.unwrap();
            let deleted = sqlx::query(sql).bind(&hash).execute(&pool).await.unwrap().rows_affected();
            pool.close().await;
            deleted
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
            let deleted = sqlx::query(sql).bind(&hash).execute(&pool).await.unwrap().rows_affected();
            pool.close().await;
            deleted
        }
    };
    assert_eq!(deleted, 1);
}

// ---- PostgreSQL: several instances hear each change at once (LISTEN/NOTIFY) ----
//
// Each story gives the cache a minute, so only the announcement can explain a pass.

const LONG_TTL: Duration = Duration::from_secs(60);

fn long_ttl() -> Options {
    Options { cache_ttl: LONG_TTL, ..Options::default() }
}

/// Connect with this token on the instance at `base`; answers the status and body.
async fn connect_on(app: &TestApp, base: &str, token: &str, provider: &str, patient: &str) -> (StatusCode, Value) {
    let response = app
        .http
        .post(format!("{base}/v1/wearables/{provider}/connect"))
        .bearer_auth(token)
        .json(&json!({"patientId": patient}))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polar_enabled_on_one_instance_takes_effect_on_another_at_once() {
    if !support::postgres_available() {
        return;
    }
    let app = TestApp::spawn_with(Backend::Postgres, long_ttl()).await;
    let (b, _) = app.second_instance().await;
    let patient = app.create_patient().await;
    let admin = app.admin.clone();
    let credentials =
        json!({"clientId": support::stand_in::POLAR_CLIENT_ID, "clientSecret": support::stand_in::POLAR_CLIENT_SECRET});
    let (status, _) = app.send("PUT", "/v1/wearables/polar/credentials", Some(&admin), Some(credentials)).await;
    assert_eq!(status, StatusCode::OK);
    // B has read (and cached) the project's settings: Polar is off.
    let (status, problem) = connect_on(&app, &b, &admin, "polar", &patient).await;
    assert_eq!(problem_code(&problem, status), "provider_disabled");

    // A enables Polar; a connect starts on A and the user comes back through B straight away.
    let setting = "/v1/project/settings/WEARABLE_POLAR_ENABLED";
    let (status, _) = app.send("PUT", setting, Some(&admin), Some(json!({"enabled": true}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, started) = app.connect("polar", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let (status, _, page) = app.callback(&callback.replace(&app.base, &b)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["status"], "connected", "B still served its cached settings: {page}");

    // And off again on A: B refuses the very next connect.
    app.send("PUT", setting, Some(&admin), Some(json!({"enabled": false}))).await;
    let (status, problem) = connect_on(&app, &b, &admin, "polar", &patient).await;
    assert_eq!(problem_code(&problem, status), "provider_disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_instance_is_refused_on_another_at_once() {
    if !support::postgres_available() {
        return;
    }
    let app = TestApp::spawn_with(Backend::Postgres, long_ttl()).await;
    app.configure("strava").await;
    let (b, _) = app.second_instance().await;
    let patient = app.create_patient().await;
    let (member, other_member) = (app.member_token().await, app.member_token().await);
    // B has both tokens cached.
    for token in [&member, &other_member] {
        let (status, body) = connect_on(&app, &b, token, "strava", &patient).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // Revoked through instance A: B refuses it on the very next request.
    assert!(wearlink::projects::revoke_token(&app.services, &member).await.unwrap());
    let (status, problem) = connect_on(&app, &b, &member, "strava", &patient).await;
    assert_eq!(problem_code(&problem, status), "unauthorized", "B still accepts a revoked token");
    // The other token is untouched.
    let (status, body) = connect_on(&app, &b, &other_member, "strava", &patient).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Deleted straight in the database (no instance involved): announced all the same, and B
    // refuses it within a moment — not the minute the cache would keep it.
    revoke_in_database(&app, &other_member).await;
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    loop {
        let (status, _) = connect_on(&app, &b, &other_member, "strava", &patient).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B accepted a token deleted in the database for 500 ms");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// B's listener loses its connection while A changes a setting: B cannot hear it, so once it
/// listens again it forgets everything it cached rather than serve the old value for a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stopped_listening_forgets_everything_when_it_listens_again() {
    if !support::postgres_available() {
        return;
    }
    let app = TestApp::spawn_with(Backend::Postgres, long_ttl()).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let admin = app.admin.clone();
    let proxy = support::FlakyProxy::start(support::postgres_addr()).await;
    let (b, b_services) = app
        .second_instance_with(|config| {
            let mut url = url::Url::parse(&config.database_url).unwrap();
            url.set_port(Some(proxy.addr.port())).unwrap();
            config.database_url = url.to_string();
        })
        .await;
    assert!(b_services.cache.is_listening());
    let (status, body) = connect_on(&app, &b, &admin, "strava", &patient).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // B's connections (its listener's too) are cut; meanwhile A turns Strava off.
    proxy.cut();
    wait_until(|| !b_services.cache.is_listening(), "B noticed its listener is gone").await;
    let setting = "/v1/project/settings/WEARABLE_STRAVA_ENABLED";
    let (status, _) = app.send("PUT", setting, Some(&admin), Some(json!({"enabled": false}))).await;
    assert_eq!(status, StatusCode::OK);

    proxy.restore();
    wait_until(|| b_services.cache.is_listening(), "B listens again").await;
    let (status, problem) = connect_on(&app, &b, &admin, "strava", &patient).await;
    assert_eq!(problem_code(&problem, status), "provider_disabled", "B served what it cached before the outage");
}

async fn wait_until(condition: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
