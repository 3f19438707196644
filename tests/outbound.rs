//! Stories of outbound events (issue 13): the platform registers an endpoint and learns, as
//! Standard Webhooks it verifies with the standard's own library (`support::receiver`), that a
//! patient connected, disconnected or broke their connection — once per change, signed, retried
//! until it answers, from whichever instance is alive.
//!
//! Deliveries are jobs of the sync queue; the test app runs no worker, so each story runs the due
//! deliveries itself (`deliver_due` with a clock it moves on, or `app.sync()`).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::receiver::{assert_secret_format, summary, Behaviour, Receiver};
use support::stand_in::{self, strava_activity_json};
use support::{problem_code, Backend, Options, TestApp};
use wearlink::store::Lease;
use wearlink::time::now_ms;
use wearlink::{Config, Services};

on_both_backends!(
    registering_an_endpoint_checks_its_url_and_shows_the_secret_once,
    loopback_and_internal_networks_are_only_reachable_when_the_operator_allows_them,
    connect_and_disconnect_are_announced_once_to_the_subscribed_endpoints,
    a_refused_refresh_is_announced_once_as_connection_error,
    synced_data_is_announced_with_references_to_real_resources,
    a_rotated_secret_signs_alongside_the_old_one_for_the_overlap,
    a_receiver_failing_twice_gets_the_same_event_three_times,
    a_receiver_that_never_answers_gets_the_schedule_then_the_delivery_fails,
    the_test_event_the_delivery_listing_and_a_retry_of_a_failed_delivery,
    an_instance_killed_before_delivering_leaves_the_delivery_to_another,
    two_instances_dispatching_at_once_make_each_attempt_once,
    two_thousand_events_reach_three_endpoints_while_one_fails_half_the_time,
    an_endpoint_failing_for_too_long_is_disabled_and_a_patch_enables_it,
    deliveries_give_way_while_requests_are_served_and_catch_up_after,
    deliveries_run_in_a_lane_of_their_own_beside_syncs,
    a_stopping_worker_releases_the_deliveries_it_holds_to_another_instance_at_once,
    finished_work_is_pruned_after_the_retention_and_pending_work_is_kept,
);

const WAIT: Duration = Duration::from_secs(10);
const DELIVERIES: &[&str] = &[wearlink::sync::DELIVERY];
const CONNECTION_DATA: &[&str] = &["projectId", "patientId", "provider", "endpointId", "status", "reason"];

fn loopback(c: &mut Config) {
    c.outbound.allow_loopback = true;
}

async fn spawn(backend: Backend, tweak: fn(&mut Config)) -> TestApp {
    TestApp::spawn_with(backend, Options { tweak, ..Default::default() }).await
}

async fn admin_send(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let admin = app.admin.clone();
    app.send(method, path, Some(&admin), body).await
}

/// Registers `url` (with these event types, or all when `None`); answers the 201's body.
async fn create_endpoint(app: &TestApp, url: &str, events: Option<Value>) -> (StatusCode, Value) {
    let mut body = json!({ "url": url });
    if let Some(events) = events {
        body["events"] = events;
    }
    admin_send(app, "POST", "/v1/webhook-endpoints", Some(body)).await
}

/// Registers the receiver's URL and gives it the secret; answers (endpoint id, secret).
async fn register(app: &TestApp, receiver: &Receiver, events: Option<Value>) -> (String, String) {
    let (status, body) = create_endpoint(app, &receiver.url(), events).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let secret = body["secret"].as_str().expect("the secret, once").to_string();
    receiver.add_secret("current", &secret);
    (body["id"].as_str().unwrap().to_string(), secret)
}

fn assert_validation_failed(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
    assert_eq!(problem_code(body, status), "validation_failed", "{what}");
}

/// `GET /v1/webhook-endpoints/{id}/deliveries[?state=]`.
async fn deliveries(app: &TestApp, endpoint: &str, state: Option<&str>) -> Vec<Value> {
    let query = state.map(|s| format!("?state={s}")).unwrap_or_default();
    let (status, body) = app.get(&format!("/v1/webhook-endpoints/{endpoint}/deliveries{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["deliveries"].as_array().unwrap_or_else(|| panic!("no deliveries array: {body}")).clone()
}

/// The one delivery of `event_id` to `endpoint`.
async fn delivery_of(app: &TestApp, endpoint: &str, event_id: &str) -> Value {
    let all = deliveries(app, endpoint, None).await;
    let mine: Vec<&Value> = all.iter().filter(|d| d["eventId"] == event_id).collect();
    assert_eq!(mine.len(), 1, "one delivery of {event_id} per endpoint: {all:?}");
    mine[0].clone()
}

/// `POST /v1/webhook-endpoints/{id}/test`; answers the event id.
async fn send_test(app: &TestApp, endpoint: &str) -> String {
    let (status, body) = admin_send(app, "POST", &format!("/v1/webhook-endpoints/{endpoint}/test"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["eventId"].as_str().unwrap().to_string()
}

/// Runs the delivery jobs due at `at` on `services`; answers how many ran.
async fn deliver_due(services: &Arc<Services>, at: i64) -> usize {
    wearlink::sync::run_due_of(services, at, DELIVERIES).await.unwrap()
}

/// Runs every due job (sync and deliveries) until none is left: what a change queued, and the
/// deliveries of what those jobs emitted.
async fn run_all_due(app: &TestApp) {
    for _ in 0..10 {
        if app.sync().await == 0 {
            return;
        }
    }
    panic!("jobs kept coming after ten passes");
}

/// Connects a new Strava patient; answers (patient, Endpoint id, athlete).
async fn connected(app: &TestApp) -> (String, String, u64) {
    let patient = app.create_patient().await;
    let (status, _, page) = app.connect_and_approve("strava", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    (patient, page["endpointId"].as_str().unwrap().to_string(), app.stand_in.last_user_id().unwrap())
}

/// `(state, attempts, next attempt at)` of a delivery, for the retry stories.
fn state_of(delivery: &Value) -> (String, i64, Option<i64>) {
    (
        delivery["state"].as_str().unwrap().to_string(),
        delivery["attempts"].as_i64().unwrap(),
        delivery["nextAttemptAt"].as_i64(),
    )
}

/// The Standard Webhooks envelope: `{type, timestamp (RFC 3339, about now), data}`, JSON, with a
/// `webhook-timestamp` of about now.
fn assert_envelope(d: &support::receiver::Delivery) {
    assert_eq!(d.method, "POST");
    assert!(d.content_type.as_deref().unwrap_or("").starts_with("application/json"), "{:?}", d.content_type);
    let keys: HashSet<&str> = d.json.as_object().expect("a JSON object").keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["type", "timestamp", "data"]), "{}", d.body);
    let at = chrono::DateTime::parse_from_rfc3339(d.json["timestamp"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("timestamp not RFC 3339: {}: {e}", d.body));
    let now = now_ms() / 1000;
    assert!((at.timestamp() - now).abs() < 600, "event timestamp about now: {}", d.body);
    assert!((d.timestamp.expect("webhook-timestamp in seconds") - now).abs() < 600, "{:?}", d.timestamp);
    assert!(d.webhook_id.as_deref().is_some_and(|id| !id.is_empty()));
}

/// A `connection.*` event's data: exactly the documented fields, about this connection.
fn assert_connection_data(data: &Value, app: &TestApp, patient: &str, endpoint: &str, status: &str) {
    for key in data.as_object().expect("data is an object").keys() {
        assert!(CONNECTION_DATA.contains(&key.as_str()), "undocumented field {key} in {data}");
    }
    assert_eq!(data["projectId"], app.project_id.as_str(), "{data}");
    assert_eq!(data["patientId"], patient, "{data}");
    assert_eq!(data["provider"], "strava", "{data}");
    assert_eq!(data["endpointId"], endpoint, "{data}");
    assert_eq!(data["status"], status, "{data}");
}

/// No token, client secret, API token or endpoint secret in anything the receivers got.
fn assert_no_secrets(app: &TestApp, receivers: &[&Receiver], endpoint_secrets: &[&str]) {
    let mut forbidden: Vec<String> = app.stand_in.issued_tokens();
    assert!(!forbidden.is_empty(), "the stories issue tokens");
    forbidden.push(stand_in::STRAVA_CLIENT_SECRET.into());
    forbidden.push(stand_in::POLAR_CLIENT_SECRET.into());
    forbidden.push(app.admin.clone());
    for secret in endpoint_secrets {
        forbidden.push(secret.to_string());
        forbidden.push(secret.trim_start_matches("whsec_").to_string());
    }
    for receiver in receivers {
        for d in receiver.deliveries() {
            for value in &forbidden {
                assert!(!d.body.contains(value.as_str()), "secret material in a delivery: {}", d.body);
            }
            let lower = d.body.to_lowercase();
            for word in
                ["access_token", "accesstoken", "refresh_token", "refreshtoken", "client_secret", "clientsecret"]
            {
                assert!(!lower.contains(word), "{word} in a delivery: {}", d.body);
            }
        }
    }
}

async fn registering_an_endpoint_checks_its_url_and_shows_the_secret_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let receiver = Receiver::start().await;

    // Only https, and never to this machine or the operator's networks (no override configured).
    for url in [
        receiver.url(),
        "http://93.184.215.14/hooks".to_string(),
        "https://127.0.0.1/hooks".into(),
        "https://localhost/hooks".into(),
        "https://[::1]/hooks".into(),
        "https://0.0.0.0/hooks".into(),
        "https://10.0.0.1/".into(),
        "https://172.16.5.4/".into(),
        "https://192.168.1.10/".into(),
        "https://169.254.169.254/latest/meta-data/".into(),
        "https://[fe80::1]/".into(),
        "https://[fd00::1]/".into(),
        "https://[::ffff:10.0.0.1]/".into(),
        "https://[::ffff:169.254.169.254]/".into(),
        "ftp://93.184.215.14/".into(),
        "not a url".into(),
        "".into(),
    ] {
        let (status, body) = create_endpoint(&app, &url, None).await;
        assert_validation_failed(status, &body, &url);
    }
    let (status, body) =
        create_endpoint(&app, "https://93.184.215.14/hooks", Some(json!(["connection.exploded"]))).await;
    assert_validation_failed(status, &body, "an unknown event type");
    let member = app.member_token().await;
    let (status, _) = app
        .send("POST", "/v1/webhook-endpoints", Some(&member), Some(json!({"url": "https://93.184.215.14/hooks"})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "members may not register endpoints");
    let (_, listed) = app.get("/v1/webhook-endpoints").await;
    assert_eq!(listed["endpoints"], json!([]), "nothing was registered: {listed}");

    // A public https URL: all event types, the secret shown once.
    let (status, all) = create_endpoint(&app, "https://93.184.215.14/hooks", None).await;
    assert_eq!(status, StatusCode::CREATED, "{all}");
    assert!(all["id"].as_str().is_some_and(|id| !id.is_empty()), "{all}");
    assert_eq!(all["url"], "https://93.184.215.14/hooks");
    assert!(all["events"].is_null(), "null = every type: {all}");
    assert!(all["description"].is_null(), "{all}");
    assert_eq!(all["enabled"], true);
    assert!(!all["createdAt"].is_null(), "{all}");
    let secret = all["secret"].as_str().unwrap().to_string();
    assert_secret_format(&secret);
    let id = all["id"].as_str().unwrap().to_string();

    let admin = app.admin.clone();
    let (status, some) = admin_send(
        &app,
        "POST",
        "/v1/webhook-endpoints",
        Some(json!({"url": "https://93.184.215.14/ehr", "events": ["connection.created", "connection.revoked"],
                    "description": "EHR sync"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{some}");
    assert_eq!(some["events"], json!(["connection.created", "connection.revoked"]));
    assert_eq!(some["description"], "EHR sync");
    let other_secret = some["secret"].as_str().unwrap().to_string();
    assert_secret_format(&other_secret);
    assert_ne!(secret, other_secret, "a secret per endpoint");
    let some_id = some["id"].as_str().unwrap().to_string();

    // Never shown again: not in the list, not in the endpoint, not in clear in the database.
    let (status, listed) = app.get("/v1/webhook-endpoints").await;
    assert_eq!(status, StatusCode::OK);
    let endpoints = listed["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{listed}");
    let (status, one) = app.get(&format!("/v1/webhook-endpoints/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["url"], "https://93.184.215.14/hooks");
    for shown in endpoints.iter().chain([&one]) {
        assert!(shown.get("secret").is_none_or(Value::is_null), "secret shown again: {shown}");
    }
    for s in [&secret, &other_secret] {
        let key = s.trim_start_matches("whsec_");
        assert!(!listed.to_string().contains(key) && !one.to_string().contains(key));
    }
    app.assert_not_stored(&[secret.clone(), secret.trim_start_matches("whsec_").to_string(), other_secret.clone()])
        .await;

    // Another project sees none of it.
    let (_, other_admin) = app.other_project().await;
    let (_, theirs) = app.send("GET", "/v1/webhook-endpoints", Some(&other_admin), None).await;
    assert_eq!(theirs["endpoints"], json!([]));
    let (status, _) = app.send("GET", &format!("/v1/webhook-endpoints/{id}"), Some(&other_admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.send("DELETE", &format!("/v1/webhook-endpoints/{id}"), Some(&other_admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // PATCH: the same rules for URLs and types; admins only.
    let path = format!("/v1/webhook-endpoints/{some_id}");
    let (status, patched) = admin_send(
        &app,
        "PATCH",
        &path,
        Some(json!({"enabled": false, "events": ["connection.error"], "description": "paused"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["events"], json!(["connection.error"]));
    assert_eq!(patched["description"], "paused");
    assert_eq!(patched["url"], "https://93.184.215.14/ehr", "what the PATCH left out stays");
    assert!(patched.get("secret").is_none_or(Value::is_null), "{patched}");
    let (_, read) = app.get(&path).await;
    assert_eq!((&read["enabled"], &read["description"]), (&json!(false), &json!("paused")));
    let (status, body) = admin_send(&app, "PATCH", &path, Some(json!({"url": "https://10.0.0.1/"}))).await;
    assert_validation_failed(status, &body, "PATCH to a private address");
    let (status, body) = admin_send(&app, "PATCH", &path, Some(json!({"url": "http://93.184.215.14/"}))).await;
    assert_validation_failed(status, &body, "PATCH to plain http");
    let (status, body) = admin_send(&app, "PATCH", &path, Some(json!({"events": ["data.deleted"]}))).await;
    assert_validation_failed(status, &body, "PATCH with an unknown type");
    let (status, _) = app.send("PATCH", &path, Some(&member), Some(json!({"enabled": true}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, read) = app.get(&path).await;
    assert_eq!(read["url"], "https://93.184.215.14/ehr", "refused PATCHes changed nothing");
    assert_eq!(read["enabled"], false);

    // DELETE.
    let (status, _) = app.send("DELETE", &path, Some(&member), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.send("DELETE", &path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.send("DELETE", &path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = app.get("/v1/webhook-endpoints").await;
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(listed["endpoints"][0]["id"], id.as_str());
}

async fn loopback_and_internal_networks_are_only_reachable_when_the_operator_allows_them(backend: Backend) {
    // Development: plain http to this machine, and nothing else internal.
    let app = spawn(backend, loopback).await;
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    for url in [receiver.url(), format!("http://localhost:{port}/hooks"), format!("http://[::1]:{port}/hooks")] {
        let (status, body) = create_endpoint(&app, &url, None).await;
        assert_eq!(status, StatusCode::CREATED, "{url}: {body}");
    }
    for url in ["http://10.0.0.1/", "https://10.0.0.1/", "https://169.254.169.254/", "http://93.184.215.14/"] {
        let (status, body) = create_endpoint(&app, url, None).await;
        assert_validation_failed(status, &body, url);
    }
    drop(app);

    // The operator allows the platform's internal range, and only that.
    fn internal_range(c: &mut Config) {
        c.outbound.allow_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    }
    let app = spawn(backend, internal_range).await;
    for url in ["https://10.0.0.1/", "https://10.200.3.4:8443/hooks"] {
        let (status, body) = create_endpoint(&app, url, None).await;
        assert_eq!(status, StatusCode::CREATED, "{url}: {body}");
    }
    for url in [
        "http://10.0.0.1/".to_string(),
        "https://192.168.1.10/".into(),
        "https://169.254.169.254/".into(),
        "https://11.0.0.1:99999/".into(),
        receiver.url(),
    ] {
        let (status, body) = create_endpoint(&app, &url, None).await;
        assert_validation_failed(status, &body, &url);
    }
}

async fn connect_and_disconnect_are_announced_once_to_the_subscribed_endpoints(backend: Backend) {
    let app = spawn(backend, loopback).await;
    app.configure("strava").await;
    let (status, body) = admin_send(&app, "POST", "/v1/wearables/strava/webhook-subscription", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let everything = Receiver::start().await;
    let (everything_id, s1) = register(&app, &everything, None).await;
    let revocations = Receiver::start().await;
    let (_, s2) = register(&app, &revocations, Some(json!(["connection.revoked"]))).await;
    let paused = Receiver::start().await;
    let (paused_id, s3) = register(&app, &paused, None).await;
    let (status, body) =
        admin_send(&app, "PATCH", &format!("/v1/webhook-endpoints/{paused_id}"), Some(json!({"enabled": false}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Connect → exactly one connection.created, to the endpoint subscribed to it.
    let (patient, endpoint, _) = connected(&app).await;
    run_all_due(&app).await;
    let created = everything.wait_for_type("connection.created", 1, WAIT).await;
    run_all_due(&app).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let created_again = everything.of_type("connection.created");
    assert_eq!(created_again.len(), 1, "exactly one: {}", summary(&everything.deliveries()));
    let d = &created[0];
    assert!(d.verified(), "{:?}", d.verify_errors);
    assert_envelope(d);
    assert_connection_data(&d.data, &app, &patient, &endpoint, "active");
    assert!(d.path.ends_with("/hooks/wearlink"), "the registered URL: {}", d.path);
    let record = delivery_of(&app, &everything_id, d.webhook_id.as_deref().unwrap()).await;
    assert_eq!(record["state"], "delivered", "{record}");
    assert_eq!(record["eventType"], "connection.created");
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["lastStatus"], 200);
    assert_eq!(revocations.count(), 0, "subscribed to connection.revoked only: {}", summary(&revocations.deliveries()));

    // Disconnect → exactly one connection.revoked, the same event to both subscribers.
    let path = format!("/v1/wearables/strava/connections/{patient}");
    let (status, body) = admin_send(&app, "DELETE", &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    run_all_due(&app).await;
    let revoked = everything.wait_for_type("connection.revoked", 1, WAIT).await;
    let revoked_too = revocations.wait_for_type("connection.revoked", 1, WAIT).await;
    assert_eq!(revoked[0].webhook_id, revoked_too[0].webhook_id, "one event, one webhook-id, two endpoints");
    assert_ne!(revoked[0].webhook_id, created[0].webhook_id);
    assert_eq!(revoked[0].body, revoked_too[0].body);
    assert_envelope(&revoked[0]);
    assert_connection_data(&revoked[0].data, &app, &patient, &endpoint, "off");
    // Disconnecting again changes nothing, so announces nothing.
    let (status, _) = admin_send(&app, "DELETE", &path, None).await;
    assert_eq!(status, StatusCode::OK);
    run_all_due(&app).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(everything.of_type("connection.revoked").len(), 1, "{}", summary(&everything.deliveries()));
    assert_eq!(revocations.count(), 1, "{}", summary(&revocations.deliveries()));

    // Reconnecting is an update of the same connection.
    let (status, _, page) = app.connect_and_approve("strava", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["endpointId"], endpoint.as_str());
    run_all_due(&app).await;
    let updated = everything.wait_for_type("connection.updated", 1, WAIT).await;
    assert_connection_data(&updated[0].data, &app, &patient, &endpoint, "active");
    assert_eq!(everything.of_type("connection.created").len(), 1, "not created again");
    let (_, list) = app.get(&format!("/v1/wearables/connections?patientId={patient}")).await;
    let athlete: u64 = list["connections"][0]["remoteUserId"].as_str().unwrap().parse().unwrap();

    // The athlete revokes us at Strava: connection.revoked too.
    let deauth = json!({"aspect_type": "update", "event_time": 1_764_064_000, "object_id": athlete,
        "object_type": "athlete", "owner_id": athlete, "subscription_id": stand_in::STRAVA_SUBSCRIPTION_ID,
        "updates": {"authorized": "false"}});
    let (status, body) =
        app.send("POST", &format!("/v1/wearables/strava/webhook/{}", app.project_id), None, Some(deauth)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    run_all_due(&app).await;
    let revoked = everything.wait_for_type("connection.revoked", 2, WAIT).await;
    assert_connection_data(&revoked[1].data, &app, &patient, &endpoint, "off");
    revocations.wait_for_type("connection.revoked", 2, WAIT).await;

    assert_eq!(paused.count(), 0, "a disabled endpoint gets nothing: {}", summary(&paused.deliveries()));
    for r in [&everything, &revocations] {
        r.assert_all_verified();
        for d in r.deliveries() {
            assert_eq!(d.status, Some(200));
        }
    }
    assert_no_secrets(&app, &[&everything, &revocations], &[&s1, &s2, &s3]);
}

async fn a_refused_refresh_is_announced_once_as_connection_error(backend: Backend) {
    let app = spawn(backend, loopback).await;
    app.configure("strava").await;
    let receiver = Receiver::start().await;
    let (_, secret) = register(&app, &receiver, Some(json!(["connection.error", "connection.revoked"]))).await;
    app.stand_in.set_initial_expires_in(600);
    let (patient, endpoint, _) = connected(&app).await;
    app.stand_in.forget_refresh_tokens();

    let report = wearlink::connections::refresh_due(&app.services, now_ms()).await.unwrap();
    assert_eq!(report.invalid, 1, "{report:?}");
    run_all_due(&app).await;
    let errors = receiver.wait_for_type("connection.error", 1, WAIT).await;
    let d = &errors[0];
    assert!(d.verified(), "{:?}", d.verify_errors);
    assert_envelope(d);
    assert_connection_data(&d.data, &app, &patient, &endpoint, "error");
    let reason = d.data["reason"].as_str().unwrap_or_else(|| panic!("a reason: {}", d.body));
    assert!(reason.contains("invalid_grant"), "says why: {reason}");

    // The errored connection is not tried again, so nothing more is announced.
    let later = now_ms() + 3_600_000;
    wearlink::connections::refresh_due(&app.services, later).await.unwrap();
    run_all_due(&app).await;
    receiver.assert_stays_at(1, Duration::from_millis(200)).await;
    assert_no_secrets(&app, &[&receiver], &[&secret]);
}

async fn synced_data_is_announced_with_references_to_real_resources(backend: Backend) {
    let app = spawn(backend, loopback).await;
    app.configure("strava").await;
    let (status, body) = admin_send(&app, "POST", "/v1/wearables/strava/webhook-subscription", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let receiver = Receiver::start().await;
    let (_, secret) = register(&app, &receiver, Some(json!(["data.synced", "backfill.completed"]))).await;
    let (patient, endpoint, athlete) = connected(&app).await;
    let now = now_ms() / 1000;
    for i in 0..3 {
        app.stand_in
            .add_strava_activity(athlete, strava_activity_json(61_000 + i, now - (i as i64 + 1) * 86_400, "Run"));
    }

    run_all_due(&app).await;
    let done = receiver.wait_for_type("backfill.completed", 1, WAIT).await;
    run_all_due(&app).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.of_type("backfill.completed").len(), 1, "{}", summary(&receiver.deliveries()));
    let data = &done[0].data;
    assert_eq!(data["projectId"], app.project_id.as_str(), "{data}");
    assert_eq!(data["patientId"], patient.as_str(), "{data}");
    assert_eq!(data["provider"], "strava", "{data}");
    assert_eq!(data["endpointId"], endpoint.as_str(), "{data}");

    // Every resource written is announced, with its type; every reference resolves.
    let synced = receiver.of_type("data.synced");
    assert!(!synced.is_empty(), "{}", summary(&receiver.deliveries()));
    let mut announced = HashSet::new();
    for d in &synced {
        assert_envelope(d);
        assert_eq!(d.data["patientId"], patient.as_str(), "{}", d.body);
        assert_eq!(d.data["endpointId"], endpoint.as_str(), "{}", d.body);
        for r in d.data["resources"].as_array().unwrap_or_else(|| panic!("resources: {}", d.body)) {
            let reference = r["reference"].as_str().unwrap().to_string();
            let resource_type = r["resourceType"].as_str().unwrap();
            assert_eq!(reference.split('/').next(), Some(resource_type), "{r}");
            announced.insert(reference);
        }
    }
    let mut written = HashSet::new();
    for resource_type in ["Procedure", "Observation"] {
        let (status, bundle) = app.get(&format!("/fhir/R4/{resource_type}?patient=Patient/{patient}&_count=100")).await;
        assert_eq!(status, StatusCode::OK);
        for entry in bundle["entry"].as_array().cloned().unwrap_or_default() {
            written.insert(format!("{resource_type}/{}", entry["resource"]["id"].as_str().unwrap()));
        }
    }
    assert_eq!(written.len(), 3 + 15, "three activities, five measures each");
    assert_eq!(announced, written, "exactly what was written");
    receiver.assert_all_verified();
    assert_no_secrets(&app, &[&receiver], &[&secret]);
}

async fn a_rotated_secret_signs_alongside_the_old_one_for_the_overlap(backend: Backend) {
    fn overlap(c: &mut Config) {
        c.outbound.allow_loopback = true;
        c.outbound.secret_overlap = Duration::from_secs(3);
    }
    let app = spawn(backend, overlap).await;
    let receiver = Receiver::start().await;
    let (id, old) = register(&app, &receiver, None).await;
    // The receiver names secrets by role: "current" is `old` here.
    send_test(&app, &id).await;
    deliver_due(&app.services, now_ms()).await;
    let before = &receiver.wait_for(1, WAIT).await[0];
    assert_eq!(before.signed_by(), vec![Some("current".to_string())], "one signature before any rotation");

    let member = app.member_token().await;
    let rotate = format!("/v1/webhook-endpoints/{id}/rotate-secret");
    let (status, _) = app.send("POST", &rotate, Some(&member), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = admin_send(&app, "POST", &rotate, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rotated_at = Instant::now();
    let new = body["secret"].as_str().unwrap().to_string();
    assert_secret_format(&new);
    assert_ne!(new, old);
    receiver.add_secret("new", &new);
    let (_, shown) = app.get(&format!("/v1/webhook-endpoints/{id}")).await;
    assert!(!shown.to_string().contains(new.trim_start_matches("whsec_")), "{shown}");

    // During the overlap: both signatures, each verifying on its own.
    let during = send_test(&app, &id).await;
    deliver_due(&app.services, now_ms()).await;
    assert!(rotated_at.elapsed() < Duration::from_secs(3), "the delivery ran inside the overlap");
    let d = &receiver.wait_for(2, WAIT).await[1];
    assert_eq!(d.webhook_id.as_deref(), Some(during.as_str()));
    let mut by = d.signed_by();
    by.sort();
    assert_eq!(by, vec![Some("current".to_string()), Some("new".to_string())], "two v1 entries: {:?}", d.signature);
    assert_eq!(d.verified_under, vec!["current".to_string(), "new".to_string()], "{:?}", d.verify_errors);
    // A receiver that knows only one of them accepts it too.
    for secret in [&old, &new] {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", d.webhook_id.clone().unwrap().parse().unwrap());
        headers.insert("webhook-timestamp", d.timestamp.unwrap().to_string().parse().unwrap());
        headers.insert("webhook-signature", d.signature.clone().unwrap().parse().unwrap());
        standardwebhooks::Webhook::new(secret).unwrap().verify(d.body.as_bytes(), &headers).unwrap();
    }

    // After it: the new secret alone.
    tokio::time::sleep(Duration::from_millis(3300).saturating_sub(rotated_at.elapsed())).await;
    send_test(&app, &id).await;
    deliver_due(&app.services, now_ms()).await;
    let after = &receiver.wait_for(3, WAIT).await[2];
    assert_eq!(after.signed_by(), vec![Some("new".to_string())], "{:?}", after.signature);
    assert_eq!(after.verified_under, vec!["new".to_string()]);
    for d in receiver.deliveries() {
        assert_eq!(d.status, Some(200), "{}", summary(&receiver.deliveries()));
    }
}

fn compressed(c: &mut Config) {
    c.outbound.allow_loopback = true;
    c.outbound.timeout = Duration::from_millis(300);
    c.outbound.schedule = vec![Duration::from_secs(10), Duration::from_secs(20), Duration::from_secs(40)];
}
const SCHEDULE_MS: [i64; 3] = [10_000, 20_000, 40_000];

/// After an attempt that ran at `at` (real time `real`), the next one comes `delay` later (give or
/// take the jitter), is not due a moment before, and is due then; answers its time.
async fn next_attempt(app: &TestApp, endpoint: &str, event: &str, at: i64, real: i64, delay: i64) -> i64 {
    let (state, _, next) = state_of(&delivery_of(app, endpoint, event).await);
    assert_eq!(state, "pending");
    let next = next.expect("nextAttemptAt while pending");
    assert!(next >= real + delay / 2 && next <= at + delay * 3 / 2 + 1_000, "after {delay} ms: {} ms", next - at);
    assert_eq!(deliver_due(&app.services, next - 1).await, 0, "not due before its time");
    next
}

async fn a_receiver_failing_twice_gets_the_same_event_three_times(backend: Backend) {
    let app = spawn(backend, compressed).await;
    let receiver = Receiver::start().await;
    let (id, _) = register(&app, &receiver, None).await;
    receiver.script(&[500, 500]);
    let event = send_test(&app, &id).await;

    let mut at = now_ms();
    for attempt in 0..3 {
        let real = now_ms();
        assert_eq!(deliver_due(&app.services, at).await, 1, "attempt {}", attempt + 1);
        receiver.wait_for(attempt + 1, WAIT).await;
        // The first two are refused: each is followed by the next of the schedule.
        if let Some(&delay) = SCHEDULE_MS[..2].get(attempt) {
            let d = delivery_of(&app, &id, &event).await;
            assert_eq!(d["attempts"], attempt as i64 + 1, "{d}");
            assert_eq!(d["lastStatus"], 500, "{d}");
            assert!(d["deliveredAt"].is_null());
            at = next_attempt(&app, &id, &event, at, real, delay).await;
        }
    }
    let d = delivery_of(&app, &id, &event).await;
    assert_eq!(d["state"], "delivered", "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(d["lastStatus"], 200, "{d}");
    assert!(d["nextAttemptAt"].is_null(), "{d}");
    assert!(d["deliveredAt"].is_i64() || d["deliveredAt"].is_string(), "{d}");
    assert_eq!(deliver_due(&app.services, at + 3_600_000).await, 0, "delivered: never sent again");

    let got = receiver.deliveries();
    assert_eq!(got.len(), 3, "{}", summary(&got));
    assert_eq!(got.iter().map(|d| d.status).collect::<Vec<_>>(), vec![Some(500), Some(500), Some(200)]);
    for d in &got {
        assert_eq!(d.webhook_id.as_deref(), Some(event.as_str()), "the same webhook-id on every attempt");
        assert_eq!(d.body, got[0].body, "the same body on every attempt");
        assert_eq!(d.event_type, "webhook-endpoint.test");
        assert_envelope(d);
    }
    receiver.assert_all_verified();
}

async fn a_receiver_that_never_answers_gets_the_schedule_then_the_delivery_fails(backend: Backend) {
    let app = spawn(backend, compressed).await;
    let receiver = Receiver::start_with(Behaviour::Hang(Duration::from_secs(5))).await;
    let (id, _) = register(&app, &receiver, None).await;
    let event = send_test(&app, &id).await;

    let mut at = now_ms();
    for attempt in 0..4 {
        let real = now_ms();
        let started = Instant::now();
        assert_eq!(deliver_due(&app.services, at).await, 1, "attempt {}", attempt + 1);
        assert!(started.elapsed() < Duration::from_secs(3), "the client timeout (300 ms) ended the attempt");
        receiver.wait_for(attempt + 1, WAIT).await;
        let d = delivery_of(&app, &id, &event).await;
        assert_eq!(d["attempts"], attempt as i64 + 1, "{d}");
        assert!(d["lastStatus"].is_null(), "no answer, no status: {d}");
        assert!(d["lastError"].as_str().is_some_and(|e| !e.is_empty()), "{d}");
        if let Some(&delay) = SCHEDULE_MS.get(attempt) {
            at = next_attempt(&app, &id, &event, at, real, delay).await;
        }
    }
    let d = delivery_of(&app, &id, &event).await;
    assert_eq!(d["state"], "failed", "after the last attempt of the schedule: {d}");
    assert!(d["nextAttemptAt"].is_null(), "{d}");
    assert!(d["deliveredAt"].is_null(), "{d}");
    assert_eq!(deliver_due(&app.services, at + 86_400_000).await, 0, "failed: not tried again");
    receiver.assert_stays_at(4, Duration::from_millis(100)).await;
    for d in receiver.deliveries() {
        assert_eq!(d.webhook_id.as_deref(), Some(event.as_str()));
        assert_eq!(d.status, None);
    }
    receiver.assert_all_verified();
}

async fn the_test_event_the_delivery_listing_and_a_retry_of_a_failed_delivery(backend: Backend) {
    fn one_retry(c: &mut Config) {
        c.outbound.allow_loopback = true;
        c.outbound.schedule = vec![Duration::from_secs(10)];
    }
    let app = spawn(backend, one_retry).await;
    let target = Receiver::start().await;
    let (id, _) = register(&app, &target, None).await;
    let bystander = Receiver::start().await;
    let (bystander_id, _) = register(&app, &bystander, None).await;
    target.script(&[500, 503]);

    // The test event goes to this endpoint only.
    let (status, _) = admin_send(&app, "POST", "/v1/webhook-endpoints/nope/test", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let event = send_test(&app, &id).await;
    let pending = deliveries(&app, &id, Some("pending")).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let d = &pending[0];
    let keys: HashSet<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "id",
        "eventId",
        "eventType",
        "state",
        "attempts",
        "lastStatus",
        "lastError",
        "nextAttemptAt",
        "createdAt",
        "deliveredAt",
    ] {
        assert!(keys.contains(key), "{key} in {d}");
    }
    assert_eq!(d["eventId"], event.as_str());
    assert_eq!(d["eventType"], "webhook-endpoint.test");
    assert_eq!(d["state"], "pending");
    assert_eq!(d["attempts"], 0);
    assert!(d["lastStatus"].is_null() && d["lastError"].is_null() && d["deliveredAt"].is_null(), "{d}");
    let delivery_id = d["id"].as_str().unwrap().to_string();
    assert!(deliveries(&app, &bystander_id, None).await.is_empty());
    assert!(deliveries(&app, &id, Some("delivered")).await.is_empty());
    let (status, _) = app.get(&format!("/v1/webhook-endpoints/{id}/deliveries?state=lost")).await;
    assert!(status.is_client_error(), "{status}");
    let (status, _) = app.get("/v1/webhook-endpoints/nope/deliveries").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // 500, then 503 on the last attempt of the schedule: failed.
    let at = now_ms();
    assert_eq!(deliver_due(&app.services, at).await, 1);
    let (_, attempts, next) = state_of(&delivery_of(&app, &id, &event).await);
    assert_eq!(attempts, 1);
    assert_eq!(deliver_due(&app.services, next.unwrap()).await, 1);
    let failed = deliveries(&app, &id, Some("failed")).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], delivery_id.as_str());
    assert_eq!(failed[0]["attempts"], 2);
    assert_eq!(failed[0]["lastStatus"], 503);
    assert!(deliveries(&app, &id, Some("pending")).await.is_empty());
    let got = target.wait_for(2, WAIT).await;
    assert!(got.iter().all(|d| d.event_type == "webhook-endpoint.test" && d.webhook_id.as_deref() == Some(&event)));
    assert_envelope(&got[0]);

    // The admin retries it once the platform is fixed.
    let retry = format!("/v1/webhook-deliveries/{delivery_id}/retry");
    let member = app.member_token().await;
    let (status, _) = app.send("POST", &retry, Some(&member), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, other_admin) = app.other_project().await;
    let (status, _) = app.send("POST", &retry, Some(&other_admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another project's delivery");
    let (status, _) = admin_send(&app, "POST", "/v1/webhook-deliveries/nope/retry", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = admin_send(&app, "POST", &retry, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(deliveries(&app, &id, Some("pending")).await.len(), 1, "queued again");
    assert!(deliveries(&app, &id, Some("failed")).await.is_empty());
    assert_eq!(deliver_due(&app.services, now_ms()).await, 1);
    let got = target.wait_for(3, WAIT).await;
    assert_eq!(got[2].webhook_id.as_deref(), Some(event.as_str()), "the same event, the same webhook-id");
    assert_eq!(got[2].status, Some(200));
    let delivered = deliveries(&app, &id, Some("delivered")).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["id"], delivery_id.as_str());
    assert_eq!(delivered[0]["lastStatus"], 200);
    assert!(!delivered[0]["deliveredAt"].is_null());
    assert!(deliveries(&app, &id, Some("failed")).await.is_empty());
    assert_eq!(deliveries(&app, &id, None).await.len(), 1, "one delivery, retried");

    assert_eq!(bystander.count(), 0, "{}", summary(&bystander.deliveries()));
    target.assert_all_verified();
}

async fn an_instance_killed_before_delivering_leaves_the_delivery_to_another(backend: Backend) {
    let app = spawn(backend, loopback).await;
    app.configure("strava").await;
    let receiver = Receiver::start().await;
    let (id, _) = register(&app, &receiver, Some(json!(["connection.created"]))).await;
    let (patient, endpoint, _) = connected(&app).await;

    // Instance A claims the delivery of the change, then dies before sending it.
    let now = now_ms();
    let a = Lease { owner: "instance-a/killed".into(), now, until: now + 1_000 };
    let claimed = app.services.store.claim_jobs(DELIVERIES, &a, 100).await.unwrap();
    assert_eq!(claimed.len(), 1, "the connection.created delivery is queued with the change: {claimed:?}");

    // B: another instance on PostgreSQL; on SQLite (one instance per database file) the process
    // that restarted in A's place.
    let b = match backend {
        Backend::Postgres => app.second_instance().await.1,
        Backend::Sqlite => Arc::clone(&app.services),
    };
    assert_eq!(deliver_due(&b, now).await, 0, "held by A's lease");
    assert_eq!(receiver.count(), 0);
    assert_eq!(deliver_due(&b, now + 1_001).await, 1, "A's lease ran out: B delivers it");
    let got = receiver.wait_for_type("connection.created", 1, WAIT).await;
    assert_connection_data(&got[0].data, &app, &patient, &endpoint, "active");
    assert!(got[0].verified(), "{:?}", got[0].verify_errors);
    assert_eq!(deliver_due(&b, now + 60_000).await, 0);
    receiver.assert_stays_at(1, Duration::from_millis(100)).await;
    let d = delivery_of(&app, &id, got[0].webhook_id.as_deref().unwrap()).await;
    assert_eq!(d["state"], "delivered", "{d}");
    assert_eq!(d["attempts"], 1, "A never attempted it: {d}");
}

async fn two_instances_dispatching_at_once_make_each_attempt_once(backend: Backend) {
    fn quick_retries(c: &mut Config) {
        c.outbound.allow_loopback = true;
        c.outbound.schedule = vec![Duration::from_secs(1); 12];
    }
    let app = spawn(backend, quick_retries).await;
    let receiver = Receiver::start_with(Behaviour::FailEveryOther).await;
    let (id, _) = register(&app, &receiver, None).await;
    let mut events = HashSet::new();
    for _ in 0..150 {
        events.insert(send_test(&app, &id).await);
    }
    let (_, second) = app.second_instance().await;

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut at = now_ms();
    loop {
        let (a, b) = tokio::join!(deliver_due(&app.services, at), deliver_due(&second, at));
        if a + b == 0 && deliveries(&app, &id, Some("pending")).await.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still pending after 2 minutes");
        // On a second; never behind the real clock (whichever clock the retries are due by).
        at = (at + 1_000).max(now_ms());
    }

    let all = deliveries(&app, &id, None).await;
    assert_eq!(all.len(), 150);
    let got = receiver.deliveries();
    let mut by_id: HashMap<String, Vec<&support::receiver::Delivery>> = HashMap::new();
    for d in &got {
        by_id.entry(d.webhook_id.clone().unwrap()).or_default().push(d);
    }
    assert_eq!(by_id.keys().cloned().collect::<HashSet<_>>(), events);
    for d in &all {
        assert_eq!(d["state"], "delivered", "{d}");
        let received = &by_id[d["eventId"].as_str().unwrap()];
        assert_eq!(
            received.len() as i64,
            d["attempts"].as_i64().unwrap(),
            "each recorded attempt sent once, never twice: {d}"
        );
        let accepted = received.iter().filter(|r| r.answered_2xx()).count();
        assert_eq!(accepted, 1, "delivered once, then never sent again: {d}");
        assert!(received.last().unwrap().answered_2xx(), "the last attempt is the one that succeeded: {d}");
    }
    assert!(got.len() > 150, "the receiver refused some: {}", got.len());
    receiver.assert_all_verified();
}

/// Emits `n` events (`webhook-endpoint.test`, each to every enabled endpoint of the project).
///
/// No public route emits one event to every endpoint cheaply (`/test` targets one endpoint; a
/// connection takes four requests and the provider's stand-in), so this writes to the outbox as the
/// service does, through `wearlink::events::event` and the store's `emit` — the one place these
/// tests reach into the implementation. If that API moves, change this function only; the story's
/// fallback is 1,000 `POST /v1/webhook-endpoints/{id}/test` per endpoint.
async fn emit_to_every_endpoint(app: &TestApp, n: usize) -> HashSet<String> {
    let services = Arc::clone(&app.services);
    let project = app.project_id.clone();
    futures::stream::iter(0..n)
        .map(|i| {
            let (services, project) = (Arc::clone(&services), project.clone());
            async move {
                let event = wearlink::events::event(&project, "webhook-endpoint.test", json!({"n": i}), now_ms());
                services.store.emit(&event, None).await.unwrap();
                event.id
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

async fn two_thousand_events_reach_three_endpoints_while_one_fails_half_the_time(backend: Backend) {
    fn busy(c: &mut Config) {
        c.outbound.allow_loopback = true;
        // Retries a second apart (virtual clock), enough of them that failing half the time
        // cannot exhaust a delivery's schedule (2^-24 per delivery).
        c.outbound.schedule = vec![Duration::from_secs(1); 24];
        c.sync.concurrency = 32;
    }
    // Enough for many claim rounds and retries interleaved across three endpoints; the
    // throughput at scale is bench/deliveries.sh's job, not a story's.
    const EVENTS: usize = 2_000;
    let started = Instant::now();
    let app = spawn(backend, busy).await;
    let receivers =
        [Receiver::start().await, Receiver::start().await, Receiver::start_with(Behaviour::FailEveryOther).await];
    let mut endpoints = Vec::new();
    for r in &receivers {
        endpoints.push(register(&app, r, None).await.0);
    }
    let events = emit_to_every_endpoint(&app, EVENTS).await;
    assert_eq!(events.len(), EVENTS);
    let emitted_in = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(480);
    let mut at = now_ms();
    let mut rounds = 0;
    loop {
        let ran = deliver_due(&app.services, at).await;
        rounds += 1;
        if ran == 0 {
            let mut pending = 0;
            for e in &endpoints {
                pending += deliveries(&app, e, Some("pending")).await.len();
            }
            if pending == 0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "deliveries still pending after 8 minutes ({rounds} rounds)");
        // On a second; never behind the real clock (whichever clock the retries are due by).
        at = (at + 1_000).max(now_ms());
    }

    for (i, (r, e)) in receivers.iter().zip(&endpoints).enumerate() {
        assert_eq!(r.ids_accepted(), events, "endpoint {i}: every event accepted at least once");
        r.assert_all_verified();
        assert!(deliveries(&app, e, Some("failed")).await.is_empty(), "endpoint {i}: none failed");
        // The listing shows the newest 1,000; the whole record is read from the database.
        let delivered = recorded(&app, e, "delivered").await;
        assert_eq!(delivered.len(), EVENTS, "endpoint {i}: every delivery recorded as delivered");
        let ids: HashSet<String> = delivered.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, events, "endpoint {i}");
    }
    let flaky = &receivers[2];
    assert!(flaky.count() >= EVENTS + EVENTS / 3, "the failing endpoint was retried: {}", flaky.count());
    let retried = recorded(&app, &endpoints[2], "delivered").await;
    assert!(retried.iter().any(|(_, attempts)| *attempts > 1));
    eprintln!(
        "{backend:?}: {EVENTS} events emitted in {emitted_in:?}; {} requests to 3 endpoints in {:?} ({rounds} rounds)",
        receivers.iter().map(Receiver::count).sum::<usize>(),
        started.elapsed() - emitted_in
    );
}

/// `(event id, attempts)` of every delivery to `endpoint` in `state`, straight from the database.
async fn recorded(app: &TestApp, endpoint: &str, state: &str) -> Vec<(String, i64)> {
    let sql = "SELECT event_id, attempts FROM webhook_deliveries WHERE endpoint_id = $1 AND state = $2";
    match app.db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&app.db.url).await.unwrap();
            let rows = sqlx::query_as(sql).bind(endpoint).bind(state).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
            let rows = sqlx::query_as(sql).bind(endpoint).bind(state).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        }
    }
}

async fn an_endpoint_failing_for_too_long_is_disabled_and_a_patch_enables_it(backend: Backend) {
    fn quick(c: &mut Config) {
        c.outbound.allow_loopback = true;
        c.outbound.schedule = vec![Duration::from_millis(10); 5];
        // "Five days" compressed: failing for a second of the claim clock disables it.
        c.outbound.disable_after = Duration::from_secs(1);
    }
    let app = spawn(backend, quick).await;
    let receiver = Receiver::start_with(Behaviour::Answer(503)).await;
    let (endpoint, _) = register(&app, &receiver, None).await;
    send_test(&app, &endpoint).await;
    let start = now_ms();
    assert_eq!(deliver_due(&app.services, start).await, 1, "first attempt fails");
    let (_, e) = admin_send(&app, "GET", &format!("/v1/webhook-endpoints/{endpoint}"), None).await;
    assert_eq!(e["enabled"], true, "one failure does not disable it: {e}");
    assert!(deliver_due(&app.services, start + 2_000).await >= 1, "the retry fails too, two seconds on");
    let (_, e) = admin_send(&app, "GET", &format!("/v1/webhook-endpoints/{endpoint}"), None).await;
    assert_eq!(e["enabled"], false, "{e}");
    assert!(e["disabledReason"].as_str().unwrap().contains("failed"), "{e}");
    // Disabled: what is still queued for it fails without being sent.
    let sent = receiver.count();
    deliver_due(&app.services, start + 10_000).await;
    assert_eq!(receiver.count(), sent, "nothing sent to a disabled endpoint");
    let (status, _) = admin_send(&app, "POST", &format!("/v1/webhook-endpoints/{endpoint}/test"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a disabled endpoint takes no test event");

    let (status, e) =
        admin_send(&app, "PATCH", &format!("/v1/webhook-endpoints/{endpoint}"), Some(json!({"enabled": true}))).await;
    assert_eq!((status, &e["enabled"]), (StatusCode::OK, &json!(true)), "{e}");
    assert!(e.get("disabledReason").is_none_or(Value::is_null), "{e}");
}

async fn deliveries_give_way_while_requests_are_served_and_catch_up_after(backend: Backend) {
    fn paced(c: &mut Config) {
        c.outbound.allow_loopback = true;
        c.sync.busy_rate = 20;
    }
    let app = spawn(backend, paced).await;
    let receiver = Receiver::start().await;
    register(&app, &receiver, None).await;
    let events = emit_to_every_endpoint(&app, 500).await;

    // A request is being served the whole second, as under a saturating load (the counter the
    // HTTP layer keeps, held here: a real request would end too soon to see anything).
    let serving: Vec<_> = (0..app.services.config.sync.busy_requests)
        .map(|_| wearlink::sync::Serving::new(Arc::clone(&app.services.requests_in_flight)))
        .collect();
    let worker = wearlink::sync::spawn_worker(&app.services);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let while_served = receiver.count();
    assert!(
        (1..=30).contains(&while_served),
        "at most about 20 a second start while requests are served, and never none: {while_served}"
    );

    drop(serving);
    let got = receiver.wait_for_type("webhook-endpoint.test", 500, Duration::from_secs(60)).await;
    worker.abort();
    let ids: HashSet<String> = got.iter().map(|d| d.webhook_id.clone().unwrap()).collect();
    assert_eq!(ids, events, "once no request is served, every delivery goes out");
    receiver.assert_all_verified();
}

async fn deliveries_run_in_a_lane_of_their_own_beside_syncs(backend: Backend) {
    fn lanes(c: &mut Config) {
        c.outbound.allow_loopback = true;
        c.outbound.timeout = Duration::from_secs(30);
        c.outbound.concurrency = 32;
        // One sync at a time: the deliveries' lane does not borrow the sync lane's limit.
        c.sync.concurrency = 1;
    }
    let app = spawn(backend, lanes).await;
    // A receiver that holds every request: each delivery stays in flight, so what the receiver
    // holds at once is how many the instance sends at once.
    let receiver = Receiver::start_with(Behaviour::Hang(Duration::from_secs(5))).await;
    register(&app, &receiver, None).await;
    emit_to_every_endpoint(&app, 100).await;
    let worker = wearlink::sync::spawn_worker(&app.services);
    receiver.wait_for(32, WAIT).await;
    receiver.assert_stays_at(32, Duration::from_millis(1_500)).await;
    worker.abort();

    fn no_deliveries(c: &mut Config) {
        c.outbound.allow_loopback = true;
        c.outbound.concurrency = 0;
    }
    let quiet = spawn(backend, no_deliveries).await;
    let receiver = Receiver::start().await;
    register(&quiet, &receiver, None).await;
    emit_to_every_endpoint(&quiet, 5).await;
    let worker = wearlink::sync::spawn_worker(&quiet.services);
    receiver.assert_stays_at(0, Duration::from_millis(1_500)).await;
    worker.abort();
    assert_eq!(
        deliver_due(&quiet.services, now_ms()).await,
        5,
        "the deliveries wait in the queue for an instance that sends"
    );
    assert_eq!(receiver.wait_for(5, WAIT).await.len(), 5);
}

/// SIGTERM's part in the worker: it claims nothing more, cuts what did not finish within the
/// grace and gives the leases back, so another instance sends those deliveries now rather than
/// when the leases run out (120 s).
async fn a_stopping_worker_releases_the_deliveries_it_holds_to_another_instance_at_once(backend: Backend) {
    fn four_at_once(c: &mut Config) {
        c.outbound.allow_loopback = true;
        c.outbound.timeout = Duration::from_secs(30);
        c.outbound.concurrency = 4;
    }
    let app = spawn(backend, four_at_once).await;
    let receiver = Receiver::start_with(Behaviour::Hang(Duration::from_secs(30))).await;
    register(&app, &receiver, None).await;
    emit_to_every_endpoint(&app, 6).await;
    let worker = wearlink::sync::spawn_worker(&app.services);
    receiver.wait_for(4, WAIT).await;
    let other = |now: i64| Lease { owner: "other-instance".into(), now, until: now + 120_000 };
    let held = app.services.store.claim_jobs(DELIVERIES, &other(now_ms()), 10).await.unwrap();
    assert_eq!(held.len(), 2, "while the worker holds four, another instance gets the other two");

    let released = worker.stop(tokio::time::Instant::now() + Duration::from_millis(200)).await.unwrap();
    assert_eq!(released, 4, "the four hanging deliveries are cut and given back");
    let taken = app.services.store.claim_jobs(DELIVERIES, &other(now_ms()), 10).await.unwrap();
    assert_eq!(taken.len(), 4, "another instance takes them at once, not after their lease");
    assert!(taken.iter().all(|job| job.attempts == 0), "a cut attempt is not counted as failed");
}

/// Runs one statement on the app's database (from outside the service); answers the first
/// column of the first row as a count, or the rows affected.
async fn sql(app: &TestApp, statement: &str) -> i64 {
    let counting = statement.trim_start().starts_with("SELECT");
    match app.db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&app.db.url).await.unwrap();
            let n = if counting {
                sqlx::query_scalar(statement).fetch_one(&pool).await.unwrap()
            } else {
                sqlx::query(statement).execute(&pool).await.unwrap().rows_affected() as i64
            };
            pool.close().await;
            n
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
            let n = if counting {
                sqlx::query_scalar(statement).fetch_one(&pool).await.unwrap()
            } else {
                sqlx::query(statement).execute(&pool).await.unwrap().rows_affected() as i64
            };
            pool.close().await;
            n
        }
    }
}

async fn finished_work_is_pruned_after_the_retention_and_pending_work_is_kept(backend: Backend) {
    let app = spawn(backend, loopback).await;
    assert_eq!(app.services.config.retention, Some(Duration::from_secs(30 * 86_400)), "the default");
    let answering = Receiver::start().await;
    let failing = Receiver::start_with(Behaviour::Answer(500)).await;
    register(&app, &answering, None).await;
    let (failing_endpoint, _) = register(&app, &failing, None).await;
    emit_to_every_endpoint(&app, 3).await;
    let now = now_ms();
    assert_eq!(deliver_due(&app.services, now).await, 6);
    // Two inbox events of long ago: one synced, one still to process.
    for (id, state) in [("old-synced", "synced"), ("old-received", "received")] {
        sql(
            &app,
            &format!(
                "INSERT INTO webhook_events (id, project_id, provider, dedup_key, event_type, payload, state, next_attempt_at, received_at)
                 VALUES ('{id}', '{}', 'strava', '{id}', 'create', '{{}}', '{state}', 0, {})",
                app.project_id,
                now - 40 * 86_400_000
            ),
        )
        .await;
    }
    let counts = || async {
        (
            sql(&app, "SELECT COUNT(*) FROM webhook_deliveries").await,
            sql(&app, "SELECT COUNT(*) FROM outbound_events").await,
            sql(&app, "SELECT COUNT(*) FROM webhook_events").await,
        )
    };
    assert_eq!(counts().await, (6, 3, 2));

    // Within the retention only the old synced inbox event goes.
    assert_eq!(app.services.prune_finished(now).await.unwrap(), 1);
    assert_eq!(counts().await, (6, 3, 1));
    // 31 days on: the delivered deliveries go; each event stays while its other delivery is
    // pending, and so does the inbox event still to process.
    let later = now + 31 * 86_400_000;
    assert_eq!(app.services.prune_finished(later).await.unwrap(), 3);
    assert_eq!(counts().await, (3, 3, 1));
    assert_eq!(deliveries(&app, &failing_endpoint, Some("pending")).await.len(), 3, "kept and listed");

    // Once those are delivered too, they and their events go.
    failing.set_behaviour(Behaviour::Answer(200));
    assert_eq!(deliver_due(&app.services, now + 60_000).await, 3);
    assert_eq!(failing.ids_accepted().len(), 3);
    assert_eq!(app.services.prune_finished(later).await.unwrap(), 6);
    assert_eq!(counts().await, (0, 0, 1));
}
