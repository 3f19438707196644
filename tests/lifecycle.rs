//! After connect: connections listed, tokens refreshed before expiry (once, even with two
//! instances racing), refused grants and passing failures, disconnect and revoke, token reads.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{problem_code, Backend, TestApp, TokenMode};
use wearlink::connections::spawn_workers;
use wearlink::connections::{refresh_due, revoke_due, RefreshReport};
use wearlink::time::now_ms;

on_both_backends!(
    connections_are_listed_without_token_material,
    two_instances_refresh_two_hundred_expiring_connections_once_each,
    a_refused_grant_marks_the_connection_error,
    a_passing_failure_backs_off_and_the_connection_stays_active,
    a_refresh_without_a_new_refresh_token_keeps_the_old_one,
    disconnect_revokes_wipes_the_tokens_and_turns_the_endpoint_off,
    disconnect_while_the_provider_is_down_revokes_later,
    the_platform_reads_a_valid_token_and_every_read_is_audited,
    a_stop_lets_the_refresh_in_flight_write_its_rotated_token_and_starts_no_other,
);

/// Connects a new patient to `provider`; answers (patient id, Endpoint id, provider user id).
async fn connected(app: &TestApp, provider: &str) -> (String, String, u64) {
    let patient = app.create_patient().await;
    let (status, _, page) = app.connect_and_approve(provider, json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let endpoint = page["endpointId"].as_str().unwrap().to_string();
    let connection = connection(app, &endpoint).await;
    let user = connection["remoteUserId"].as_str().unwrap().parse().unwrap();
    (patient, endpoint, user)
}

async fn connection(app: &TestApp, endpoint_id: &str) -> Value {
    let (status, body) = app.get("/v1/wearables/connections").await;
    assert_eq!(status, StatusCode::OK);
    body["connections"].as_array().unwrap().iter().find(|c| c["id"] == endpoint_id).cloned().expect("listed")
}

async fn endpoint(app: &TestApp, endpoint_id: &str) -> Value {
    let (status, body) = app.get(&format!("/fhir/R4/Endpoint/{endpoint_id}")).await;
    assert_eq!(status, StatusCode::OK);
    body
}

async fn connections_are_listed_without_token_material(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    app.configure("polar").await;
    let (p1, e1, athlete) = connected(&app, "strava").await;
    let (p2, e2, _) = connected(&app, "polar").await;

    let (status, body) = app.get("/v1/wearables/connections").await;
    assert_eq!(status, StatusCode::OK);
    let all = body["connections"].as_array().unwrap();
    assert_eq!(all.len(), 2);
    let strava = connection(&app, &e1).await;
    assert_eq!(strava["provider"], "strava");
    assert_eq!(strava["patientId"], p1.as_str());
    assert_eq!(strava["remoteUserId"], athlete.to_string());
    assert_eq!(strava["scopes"], json!(["read", "activity:read_all"]));
    assert_eq!(strava["status"], "active");
    let expires = strava["expiresAt"].as_i64().unwrap();
    assert!(expires > now_ms() + 5 * 3600 * 1000, "epoch milliseconds, about six hours out");
    assert!(strava["connectedAt"].as_i64().unwrap() <= now_ms());
    assert!(strava["lastRefreshedAt"].is_null());
    assert!(strava["lastError"].is_null());
    for token in app.stand_in.issued_tokens() {
        assert!(!body.to_string().contains(&token), "token material in the listing");
    }

    let (_, by_patient) = app.get(&format!("/v1/wearables/connections?patientId={p2}")).await;
    assert_eq!(by_patient["connections"].as_array().unwrap().len(), 1);
    assert_eq!(by_patient["connections"][0]["id"], e2.as_str());
    let (_, by_provider) = app.get("/v1/wearables/connections?provider=strava").await;
    assert_eq!(by_provider["connections"].as_array().unwrap().len(), 1);
    let (status, _) = app.get("/v1/wearables/connections?provider=fitbit").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let member = app.member_token().await;
    let (status, body) = app.send("GET", "/v1/wearables/connections", Some(&member), None).await;
    assert_eq!(status, StatusCode::OK, "members may read");
    assert_eq!(body["connections"].as_array().unwrap().len(), 2);
    let (_, other) = app.other_project().await;
    let (_, body) = app.send("GET", "/v1/wearables/connections", Some(&other), None).await;
    assert_eq!(body["connections"], json!([]), "other projects see nothing");
}

async fn two_instances_refresh_two_hundred_expiring_connections_once_each(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    // Tokens issued at connect expire in 10 minutes: inside the 30-minute window.
    app.stand_in.set_initial_expires_in(600);
    let mut athletes = Vec::new();
    for _ in 0..200 {
        athletes.push(connected(&app, "strava").await);
    }
    let (_, second) = app.second_instance().await;

    let now = now_ms();
    let (a, b) = tokio::join!(refresh_due(&app.services, now), refresh_due(&second, now));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.refreshed + b.refreshed, 200, "{a:?} {b:?}");
    assert_eq!(a.invalid + b.invalid + a.deferred + b.deferred, 0, "{a:?} {b:?}");

    assert_eq!(app.stand_in.total_refreshes(), 200, "the provider saw exactly one refresh per connection");
    let (_, body) = app.get("/v1/wearables/connections").await;
    for c in body["connections"].as_array().unwrap() {
        assert_eq!(c["status"], "active", "{c}");
        assert!(c["lastRefreshedAt"].is_i64(), "{c}");
        assert!(c["expiresAt"].as_i64().unwrap() > now_ms() + 5 * 3600 * 1000);
    }
    for (_, _, athlete) in &athletes {
        assert_eq!(app.stand_in.refreshes_of(*athlete), 1);
    }

    // Renewed tokens are not due: another pass on either instance refreshes nothing.
    let again = refresh_due(&second, now_ms()).await.unwrap();
    assert_eq!(again, RefreshReport::default());

    // The Endpoint shows the new expiry, as a new version; the token read hands out the new token.
    let (_, endpoint_id, athlete) = &athletes[0];
    let ep = endpoint(&app, endpoint_id).await;
    assert_eq!(ep["meta"]["versionId"], "2");
    let (status, token) = app
        .send("POST", &format!("/v1/wearables/connections/{endpoint_id}/token"), Some(&app.admin.clone()), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(token["accessToken"].as_str(), app.stand_in.latest_access_token(*athlete).as_deref());
}

async fn a_refused_grant_marks_the_connection_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    app.stand_in.set_initial_expires_in(600);
    let (_, endpoint_id, _) = connected(&app, "strava").await;
    app.stand_in.forget_refresh_tokens();

    let report = refresh_due(&app.services, now_ms()).await.unwrap();
    assert_eq!(report.invalid, 1, "{report:?}");
    let c = connection(&app, &endpoint_id).await;
    assert_eq!(c["status"], "error");
    assert!(c["lastError"].as_str().unwrap().contains("invalid_grant"));
    let ep = endpoint(&app, &endpoint_id).await;
    assert_eq!(ep["status"], "error");
    assert!(ep.to_string().contains("invalid_grant"), "the Endpoint says why: {ep}");

    let (status, body) = app
        .send("POST", &format!("/v1/wearables/connections/{endpoint_id}/token"), Some(&app.admin.clone()), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem_code(&body, status), "conflict");
    // An errored connection is not retried.
    assert_eq!(refresh_due(&app.services, now_ms() + 3_600_000).await.unwrap(), RefreshReport::default());
}

async fn a_passing_failure_backs_off_and_the_connection_stays_active(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    app.stand_in.set_initial_expires_in(600);
    let (_, endpoint_id, athlete) = connected(&app, "strava").await;

    app.stand_in.set_token_mode(TokenMode::Status(503));
    let now = now_ms();
    let report = refresh_due(&app.services, now).await.unwrap();
    assert_eq!(report.deferred, 1, "{report:?}");
    let c = connection(&app, &endpoint_id).await;
    assert_eq!(c["status"], "active");
    assert!(c["lastError"].as_str().is_some());
    let attempts = app.stand_in.token_requests().len();

    // Cooldown: nothing is tried again right away.
    assert_eq!(refresh_due(&app.services, now_ms()).await.unwrap(), RefreshReport::default());
    assert_eq!(app.stand_in.token_requests().len(), attempts, "a broken connection does not hammer the provider");

    // 429 with Retry-After: 120 s is respected even though the backoff (60 s) would allow sooner.
    app.stand_in.set_token_mode(TokenMode::Status(429));
    let report = refresh_due(&app.services, now + 31_000).await.unwrap();
    assert_eq!(report.deferred, 1, "{report:?}");
    let deferred_at = now_ms();
    assert_eq!(refresh_due(&app.services, deferred_at + 90_000).await.unwrap(), RefreshReport::default());

    app.stand_in.set_token_mode(TokenMode::Normal);
    let report = refresh_due(&app.services, deferred_at + 121_000).await.unwrap();
    assert_eq!(report.refreshed, 1, "{report:?}");
    let c = connection(&app, &endpoint_id).await;
    assert_eq!(c["status"], "active");
    assert!(c["lastError"].is_null());
    assert_eq!(app.stand_in.refreshes_of(athlete), 1);
}

async fn a_refresh_without_a_new_refresh_token_keeps_the_old_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    app.stand_in.set_initial_expires_in(600);
    let (_, endpoint_id, athlete) = connected(&app, "strava").await;
    app.stand_in.set_omit_refresh_token(true);

    assert_eq!(refresh_due(&app.services, now_ms()).await.unwrap().refreshed, 1);
    // Seven hours later the token is due again; the refresh token on file must still be there.
    let later = now_ms() + 7 * 3600 * 1000;
    assert_eq!(refresh_due(&app.services, later).await.unwrap().refreshed, 1);
    assert_eq!(app.stand_in.refreshes_of(athlete), 2);
    assert_eq!(connection(&app, &endpoint_id).await["status"], "active");
}

async fn disconnect_revokes_wipes_the_tokens_and_turns_the_endpoint_off(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    app.configure("polar").await;
    let (patient, endpoint_id, athlete) = connected(&app, "strava").await;
    let access = app.stand_in.latest_access_token(athlete).unwrap();
    let member = app.member_token().await;

    let path = format!("/v1/wearables/strava/connections/{patient}");
    let (status, body) = app.send("DELETE", &path, Some(&member), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"ok": true, "revokePending": false}));
    assert_eq!(app.stand_in.revocations(), vec![("strava", access)]);

    let c = connection(&app, &endpoint_id).await;
    assert_eq!(c["status"], "off");
    assert!(c["expiresAt"].is_null());
    let ep = endpoint(&app, &endpoint_id).await;
    assert_eq!(ep["status"], "off");
    assert!(!ep.to_string().contains("token-expires-at"));
    let stored = app.services.store.find_connection_by_endpoint(&endpoint_id).await.unwrap().unwrap();
    assert!(stored.tokens.is_none(), "tokens wiped");
    app.assert_not_stored(&app.stand_in.issued_tokens()).await;

    // Idempotent: again, and for a patient never connected.
    let (status, body) = app.send("DELETE", &path, Some(&member), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": true, "revokePending": false})));
    let stranger = app.create_patient().await;
    let (status, _) =
        app.send("DELETE", &format!("/v1/wearables/strava/connections/{stranger}"), Some(&member), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.stand_in.revocations().len(), 1);
    let (status, _) =
        app.send("DELETE", &format!("/v1/wearables/fitbit/connections/{stranger}"), Some(&member), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Polar revokes by deleting the AccessLink user.
    let (polar_patient, _, polar_user) = connected(&app, "polar").await;
    let (status, body) =
        app.send("DELETE", &format!("/v1/wearables/polar/connections/{polar_patient}"), Some(&member), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": true, "revokePending": false})));
    assert!(app.stand_in.revocations().contains(&("polar", polar_user.to_string())));

    // Reconnecting brings the same Endpoint back to active.
    let (status, _, page) = app.connect_and_approve("strava", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["endpointId"], endpoint_id.as_str());
    assert_eq!(connection(&app, &endpoint_id).await["status"], "active");
}

async fn disconnect_while_the_provider_is_down_revokes_later(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let (patient, endpoint_id, athlete) = connected(&app, "strava").await;
    let access = app.stand_in.latest_access_token(athlete).unwrap();

    app.stand_in.set_revoke_mode(TokenMode::Status(503));
    let (status, body) = app
        .send("DELETE", &format!("/v1/wearables/strava/connections/{patient}"), Some(&app.admin.clone()), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"ok": true, "revokePending": true}));
    assert_eq!(connection(&app, &endpoint_id).await["status"], "off", "the local disconnect happened");
    assert_eq!(app.services.store.count_pending_revocations(&app.project_id).await.unwrap(), 1);
    assert!(app.stand_in.revocations().is_empty());

    // Still down at the next pass: it stays pending.
    let now = now_ms();
    assert_eq!(revoke_due(&app.services, now + 60_000).await.unwrap(), 0);
    assert_eq!(app.services.store.count_pending_revocations(&app.project_id).await.unwrap(), 1);

    app.stand_in.set_revoke_mode(TokenMode::Normal);
    assert_eq!(revoke_due(&app.services, now + 3_600_000).await.unwrap(), 1);
    assert_eq!(app.stand_in.revocations(), vec![("strava", access)]);
    assert_eq!(app.services.store.count_pending_revocations(&app.project_id).await.unwrap(), 0);
    assert_eq!(revoke_due(&app.services, now + 7_200_000).await.unwrap(), 0, "done once");
}

async fn the_platform_reads_a_valid_token_and_every_read_is_audited(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let (_, endpoint_id, athlete) = connected(&app, "strava").await;
    let path = format!("/v1/wearables/connections/{endpoint_id}/token");
    let admin = app.admin.clone();

    let member = app.member_token().await;
    let (status, _) = app.send("POST", &path, Some(&member), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, other) = app.other_project().await;
    let (status, _) = app.send("POST", &path, Some(&other), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, token) = app.send("POST", &path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    assert_eq!(token["accessToken"].as_str(), app.stand_in.latest_access_token(athlete).as_deref());
    assert_eq!(token["tokenType"], "Bearer");
    assert_eq!(app.stand_in.refreshes_of(athlete), 0, "a fresh token is handed out as it is");

    // A token about to expire is refreshed first.
    app.stand_in.set_initial_expires_in(60);
    let (_, soon_endpoint, soon_athlete) = connected(&app, "strava").await;
    let first = app.stand_in.latest_access_token(soon_athlete).unwrap();
    let (status, token) =
        app.send("POST", &format!("/v1/wearables/connections/{soon_endpoint}/token"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.stand_in.refreshes_of(soon_athlete), 1);
    assert_ne!(token["accessToken"].as_str(), Some(first.as_str()));
    assert_eq!(token["accessToken"].as_str(), app.stand_in.latest_access_token(soon_athlete).as_deref());
    assert!(token["expiresAt"].as_i64().unwrap() > now_ms() + 3600 * 1000);

    let audit = app.services.store.list_audit(&app.project_id).await.unwrap();
    assert_eq!(audit.len(), 2, "every successful and refused-by-status read of this project is recorded: {audit:?}");
    assert!(audit.iter().all(|e| e.action == "access_token.read" && e.actor.starts_with("token:")));
    assert_eq!(audit[0].endpoint_id.as_deref(), Some(endpoint_id.as_str()));
    assert!(!audit[0].actor.contains(&admin), "the audit names a fingerprint, not the token");
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A stop (SIGTERM) while the refresher waits on the provider: the rotated refresh token the
/// provider hands out is written before the stop completes (cut there, the connection would be
/// lost: the old refresh token is already spent), and no pass starts after it.
async fn a_stop_lets_the_refresh_in_flight_write_its_rotated_token_and_starts_no_other(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    app.stand_in.set_initial_expires_in(600);
    let (_, endpoint_id, athlete) = connected(&app, "strava").await;
    app.stand_in.set_token_mode(TokenMode::Slow(Duration::from_millis(700)));

    let refresher = spawn_workers(&app.services, Duration::from_millis(50));
    let asked = tokio::time::Instant::now();
    while app
        .stand_in
        .token_requests()
        .iter()
        .filter(|r| r.form.get("grant_type").map(String::as_str) == Some("refresh_token"))
        .count()
        == 0
    {
        assert!(asked.elapsed() < Duration::from_secs(10), "the refresher never asked the provider");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let finished = app.services.stop_passes(tokio::time::Instant::now() + Duration::from_secs(5)).await;
    assert!(finished, "the pass in flight finished inside the grace period");
    assert_eq!(app.stand_in.refreshes_of(athlete), 1);
    let renewed = connection(&app, &endpoint_id).await;
    assert!(renewed["lastRefreshedAt"].is_i64(), "written before the stop returned: {renewed}");
    let (status, token) = app
        .send("POST", &format!("/v1/wearables/connections/{endpoint_id}/token"), Some(&app.admin.clone()), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(token["accessToken"].as_str(), app.stand_in.latest_access_token(athlete).as_deref());

    // Stopped: a connection due for refresh now waits for the next instance.
    app.stand_in.set_token_mode(TokenMode::Normal);
    let (_, _, due) = connected(&app, "strava").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.stand_in.refreshes_of(due), 0, "no pass after the stop");
    refresher.abort();
}
