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
use serde_json::json;
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
