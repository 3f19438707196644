//! Providers push events: verified, stored once before the 200, processed in the background,
//! nothing acknowledged ever lost.

mod support;

use std::time::Duration;

use hmac::Mac;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{problem_code, stand_in, Backend, TestApp};
use wearlink::store::{Lease, WebhookEvent};
use wearlink::time::now_ms;

on_both_backends!(
    strava_validates_the_subscription_handshake_both_ways,
    strava_events_come_only_from_the_subscription_and_are_stored_once,
    a_strava_deauthorization_turns_the_connection_off,
    polar_events_must_be_signed,
    oversized_and_malformed_deliveries_are_refused_without_harm,
    a_burst_of_events_survives_a_restart_in_the_middle_of_processing,
    a_malformed_event_is_kept_as_ignored_and_can_be_replayed,
    concurrent_deliveries_and_retries_are_each_stored_once_and_answered_truly,
    an_event_that_cannot_be_stored_fails_alone,
);

async fn post_raw(app: &TestApp, path: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (StatusCode, Value) {
    let mut request = app.http.post(app.url(path)).header("content-type", "application/json").body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Sends a POST announcing `content_length` bytes but only `sent` of them; answers what the server says.
async fn partial_post(app: &TestApp, path: &str, content_length: usize, sent: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; sent]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.expect("answered").unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

fn strava_event(owner: u64, object_id: u64, object_type: &str, aspect: &str, updates: Value) -> Vec<u8> {
    json!({
        "aspect_type": aspect, "event_time": 1764064000, "object_id": object_id, "object_type": object_type,
        "owner_id": owner, "subscription_id": stand_in::STRAVA_SUBSCRIPTION_ID, "updates": updates
    })
    .to_string()
    .into_bytes()
}

fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Connects a Strava patient and creates the push subscription; answers (patient, endpoint, athlete).
async fn strava_ready(app: &TestApp) -> (String, String, u64) {
    app.configure("strava").await;
    let (status, body) =
        app.send("POST", "/v1/wearables/strava/webhook-subscription", Some(&app.admin.clone()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    connected(app, "strava").await
}

async fn connected(app: &TestApp, provider: &str) -> (String, String, u64) {
    let patient = app.create_patient().await;
    let (status, _, page) = app.connect_and_approve(provider, json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let endpoint = page["endpointId"].as_str().unwrap().to_string();
    let (_, list) = app.get("/v1/wearables/connections").await;
    let user = list["connections"].as_array().unwrap().iter().find(|c| c["id"] == endpoint.as_str()).unwrap()
        ["remoteUserId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (patient, endpoint, user)
}

async fn events_of(app: &TestApp, patient: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/wearables/events?patientId={patient}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"].as_array().unwrap().clone()
}

async fn counts(app: &TestApp) -> std::collections::HashMap<String, i64> {
    app.services.store.count_events(&app.project_id).await.unwrap().into_iter().collect()
}

async fn strava_validates_the_subscription_handshake_both_ways(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin.clone();
    let secret = "verify-me-7c1e";
    app.send("PUT", "/v1/project/secrets/WEARABLE_STRAVA_WEBHOOK_SECRET", Some(&admin), Some(json!({"value": secret})))
        .await;
    let path = |token: &str| {
        format!(
            "/v1/wearables/strava/webhook/{}?hub.mode=subscribe&hub.challenge=15f7d1a91c1f40f8a748fd134752feb3&hub.verify_token={token}",
            app.project_id
        )
    };
    let (status, body) = app.send("GET", &path(secret), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"hub.challenge": "15f7d1a91c1f40f8a748fd134752feb3"}));

    for wrong in ["verify-me-7c1f", "", "verify-me-7c1e-and-more"] {
        let (status, body) = app.send("GET", &path(wrong), None, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{wrong:?}");
        assert_eq!(problem_code(&body, status), "rejected");
    }
    let (status, _) = app.send("GET", &format!("/v1/wearables/strava/webhook/{}", app.project_id), None, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .send("GET", &path(secret).replace(&app.project_id, "00000000-0000-0000-0000-000000000000"), None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Creating the subscription: Strava calls the GET above with our verify token, then answers an id.
    app.configure("strava").await;
    let member = app.member_token().await;
    let (status, _) = app.send("POST", "/v1/wearables/strava/webhook-subscription", Some(&member), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app.send("POST", "/v1/wearables/strava/webhook-subscription", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], stand_in::STRAVA_SUBSCRIPTION_ID.to_string());
    assert_eq!(body["url"], app.url(&format!("/v1/wearables/strava/webhook/{}", app.project_id)));
}

async fn strava_events_come_only_from_the_subscription_and_are_stored_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, endpoint, athlete) = strava_ready(&app).await;
    let path = format!("/v1/wearables/strava/webhook/{}", app.project_id);

    let event = strava_event(athlete, 9001, "activity", "create", json!({}));
    let (status, body) = post_raw(&app, &path, event.clone(), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"ok": true, "duplicate": false}));
    let (status, body) = post_raw(&app, &path, event.clone(), &[]).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": true, "duplicate": true})), "a retry is stored once");

    // Another subscription's event: refused, not stored.
    let mut forged: Value = serde_json::from_slice(&event).unwrap();
    forged["subscription_id"] = json!(999);
    forged["object_id"] = json!(9002);
    let (status, body) = post_raw(&app, &path, forged.to_string().into_bytes(), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem_code(&body, status), "rejected");

    // An athlete we do not know: acknowledged, recorded as ignored.
    let (status, _) = post_raw(&app, &path, strava_event(424242, 9003, "activity", "create", json!({})), &[]).await;
    assert_eq!(status, StatusCode::OK);

    let events = events_of(&app, &patient).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["state"], "received");
    assert_eq!(events[0]["type"], "activity.create");
    assert_eq!(events[0]["endpointId"], endpoint.as_str());
    assert_eq!(counts(&app).await, [("received".to_string(), 1), ("ignored".to_string(), 1)].into_iter().collect());

    assert_eq!(process_due(&app.services, now_ms()).await.unwrap(), 1);
    let events = events_of(&app, &patient).await;
    // The stand-in has no such activity: the event is done with, and says why.
    assert_eq!(events[0]["state"], "ignored", "{events:?}");
    assert!(events[0]["lastError"].as_str().unwrap().contains("no longer has"), "{events:?}");
    assert!(events[0]["processedAt"].is_i64());

    let member = app.member_token().await;
    let (status, _) = app.send("GET", "/v1/wearables/events", Some(&member), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn a_strava_deauthorization_turns_the_connection_off(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, endpoint, athlete) = strava_ready(&app).await;
    let path = format!("/v1/wearables/strava/webhook/{}", app.project_id);
    let deauth = strava_event(athlete, athlete, "athlete", "update", json!({"authorized": "false"}));
    let (status, _) = post_raw(&app, &path, deauth, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(process_due(&app.services, now_ms()).await.unwrap(), 1);

    let (_, list) = app.get(&format!("/v1/wearables/connections?patientId={patient}")).await;
    assert_eq!(list["connections"][0]["status"], "off");
    let (_, ep) = app.get(&format!("/fhir/R4/Endpoint/{endpoint}")).await;
    assert_eq!(ep["status"], "off");
    let stored = app.services.store.find_connection_by_endpoint(&endpoint).await.unwrap().unwrap();
    assert!(stored.tokens.is_none(), "tokens wiped");
    assert_eq!(events_of(&app, &patient).await[0]["state"], "done");
}

async fn polar_events_must_be_signed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("polar").await;
    let admin = app.admin.clone();
    // Creating the webhook: Polar PINGs us first (unsigned, no secret on file yet), then hands out the key.
    let (status, body) = app.send("POST", "/v1/wearables/polar/webhook-subscription", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let key = app.stand_in.polar_signature_key().unwrap();
    let (_, creds) = app.get("/v1/wearables/polar/credentials").await;
    assert_eq!(creds["hasWebhookSecret"], true);
    assert_eq!(counts(&app).await.len(), 0, "the PING stored nothing");

    let (patient, _, user) = connected(&app, "polar").await;
    let path = format!("/v1/wearables/polar/webhook/{}", app.project_id);
    let body = json!({"event": "EXERCISE", "user_id": user, "entity_id": "aQlC83",
        "timestamp": "2026-11-25T10:15:00.000Z", "url": "https://www.polaraccesslink.com/v3/exercises/aQlC83"})
    .to_string()
    .into_bytes();
    let event_header = ("Polar-Webhook-Event", "EXERCISE".to_string());

    let (status, body_json) = post_raw(&app, &path, body.clone(), std::slice::from_ref(&event_header)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "unsigned");
    assert_eq!(problem_code(&body_json, status), "invalid_signature");
    let (status, _) = post_raw(
        &app,
        &path,
        body.clone(),
        &[event_header.clone(), ("Polar-Webhook-Signature", sign("wrong-key", &body))],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "signed with another key");
    let mut tampered = body.clone();
    tampered[20] ^= 0x01;
    let (status, _) =
        post_raw(&app, &path, tampered, &[event_header.clone(), ("Polar-Webhook-Signature", sign(&key, &body))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "one byte changed");
    let (status, _) =
        post_raw(&app, &path, body.clone(), &[event_header.clone(), ("Polar-Webhook-Signature", "zz".into())]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "not hex");
    assert_eq!(counts(&app).await.len(), 0, "nothing stored from a bad signature");

    let signature = ("Polar-Webhook-Signature", sign(&key, &body));
    let (status, answer) = post_raw(&app, &path, body.clone(), &[event_header.clone(), signature.clone()]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, again) = post_raw(&app, &path, body.clone(), &[event_header.clone(), signature]).await;
    assert_eq!(again["duplicate"], true);

    // Another documented event type, for a user we do not know: acknowledged and ignored.
    let sleep = json!({"event": "SLEEP", "user_id": 1, "entity_id": "2026-11-24", "timestamp": "2026-11-25T06:00:00Z"})
        .to_string()
        .into_bytes();
    let (status, _) = post_raw(
        &app,
        &path,
        sleep.clone(),
        &[("Polar-Webhook-Event", "SLEEP".into()), ("Polar-Webhook-Signature", sign(&key, &sleep))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(process_due(&app.services, now_ms()).await.unwrap(), 1);
    let events = events_of(&app, &patient).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "EXERCISE");
    // Its url names the real Polar host, not the configured API base: never followed.
    assert_eq!(events[0]["state"], "ignored");
    assert!(events[0]["lastError"].as_str().unwrap().contains("outside the configured Polar API base"));
    assert_eq!(counts(&app).await["ignored"], 2, "the unknown user's and the refused url's");
}

async fn oversized_and_malformed_deliveries_are_refused_without_harm(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, _, athlete) = strava_ready(&app).await;
    let path = format!("/v1/wearables/strava/webhook/{}", app.project_id);
    let (status, _) = post_raw(&app, &path, strava_event(athlete, 1, "activity", "create", json!({})), &[]).await;
    assert_eq!(status, StatusCode::OK);

    // A body announced as 2 MiB is refused once the limit is passed, while 900 KiB of it were
    // never sent (a client that kept writing could race the early answer and see the socket close).
    let answer = partial_post(&app, &path, 2 * 1024 * 1024, 1024 * 1024 + 100 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    for bad in [&b"{not json"[..], b"[]", b"{\"object_type\": 5}", b""] {
        let (status, body) = post_raw(&app, &path, bad.to_vec(), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(bad));
        assert_eq!(problem_code(&body, status), "malformed_json");
    }
    let (status, _) = post_raw(
        &app,
        "/v1/wearables/strava/webhook/no-such-project",
        strava_event(athlete, 2, "activity", "create", json!({})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        post_raw(&app, &format!("/v1/wearables/fitbit/webhook/{}", app.project_id), b"{}".to_vec(), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_eq!(process_due(&app.services, now_ms()).await.unwrap(), 1, "the earlier event is intact");
    assert_eq!(events_of(&app, &patient).await[0]["state"], "ignored");
}

/// One pass of the sync worker over webhook events at `now`.
async fn process_due(services: &std::sync::Arc<wearlink::Services>, now: i64) -> wearlink::Result<usize> {
    wearlink::sync::run_due_of(services, now, &[wearlink::sync::WEBHOOK_EVENT]).await
}

async fn a_burst_of_events_survives_a_restart_in_the_middle_of_processing(backend: Backend) {
    // Enough concurrent deliveries (32 in flight) to fill many group commits and claim batches;
    // the ack rate at scale is examples/bench_webhooks.rs's job, not a story's.
    const BURST: u64 = 2_000;
    let app = TestApp::spawn(backend).await;
    let (_, _, athlete) = strava_ready(&app).await;
    let url = app.url(&format!("/v1/wearables/strava/webhook/{}", app.project_id));

    let deliveries = futures::stream::iter(0..BURST)
        .map(|i| {
            let (http, url) = (app.http.clone(), url.clone());
            let body = strava_event(athlete, 100_000 + i, "activity", "create", json!({}));
            async move {
                // As providers do: a delivery that was not acknowledged (503) is sent again.
                let mut status = None;
                for _ in 0..5 {
                    status = http.post(&url).body(body.clone()).send().await.map(|r| r.status()).ok();
                    if status != Some(StatusCode::SERVICE_UNAVAILABLE) {
                        break;
                    }
                }
                status
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let refused: Vec<_> = deliveries.iter().filter(|s| **s != Some(StatusCode::OK)).collect();
    assert!(refused.is_empty(), "every event acknowledged: {refused:?}");
    assert_eq!(counts(&app).await["received"], BURST as i64, "each acknowledged event is in the inbox");

    // A worker claims a batch and dies before finishing it.
    let crashed = Lease { owner: "crashed-instance".into(), now: now_ms(), until: now_ms() + 120_000 };
    let claimed = app.services.store.claim_jobs(&[wearlink::sync::WEBHOOK_EVENT], &crashed, 600).await.unwrap();
    assert_eq!(claimed.len(), 600);
    // The survivors go on at once with what is not claimed ...
    let (_, restarted) = app.second_instance().await;
    assert_eq!(process_due(&restarted, now_ms()).await.unwrap(), BURST as usize - 600);
    // ... and take over the dead worker's batch once its lease has run out.
    assert_eq!(process_due(&restarted, now_ms() + 121_000).await.unwrap(), 600);

    let counts = counts(&app).await;
    assert_eq!(counts.get("ignored"), Some(&(BURST as i64)), "{counts:?}");
    assert_eq!(counts.len(), 1, "nothing lost, nothing left behind: {counts:?}");
}

use futures::StreamExt;

async fn a_malformed_event_is_kept_as_ignored_and_can_be_replayed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, endpoint, athlete) = strava_ready(&app).await;
    // An event whose payload cannot be processed (stored by an older version, say).
    let now = now_ms();
    app.services
        .store
        .insert_event(&WebhookEvent {
            id: "evt-broken".into(),
            project_id: app.project_id.clone(),
            provider: "strava".into(),
            dedup_key: "broken".into(),
            event_type: "activity.create".into(),
            remote_user_id: Some(athlete.to_string()),
            endpoint_id: Some(endpoint),
            patient_id: Some(patient.clone()),
            payload: "{truncated".into(),
            state: "received".into(),
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            received_at: now,
            processed_at: None,
            synced_refs: None,
        })
        .await
        .unwrap();

    // Bad data never poisons the queue: kept as ignored, with its reason and payload.
    assert_eq!(process_due(&app.services, now).await.unwrap(), 1);
    assert_eq!(process_due(&app.services, now + 3600 * 1000).await.unwrap(), 0, "an ignored event is not retried");
    let (_, ignored) = app.get("/v1/wearables/events?state=ignored").await;
    assert_eq!(ignored["events"].as_array().unwrap().len(), 1);
    assert!(ignored["events"][0]["lastError"].as_str().unwrap().contains("not JSON"), "{ignored}");

    let admin = app.admin.clone();
    let (status, body) = app.send("POST", "/v1/wearables/events/evt-broken/replay", Some(&admin), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": true})));
    let events = events_of(&app, &patient).await;
    assert_eq!(events[0]["state"], "received");
    assert_eq!(events[0]["attempts"], 0);
    let (status, _) = app.send("POST", "/v1/wearables/events/nope/replay", Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Providers deliver concurrently and retry what they think was lost, so the first delivery and
/// its retries of one event can arrive together (and be written in one group commit).
async fn concurrent_deliveries_and_retries_are_each_stored_once_and_answered_truly(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, athlete) = strava_ready(&app).await;
    let url = app.url(&format!("/v1/wearables/strava/webhook/{}", app.project_id));

    // 300 events, each delivered 1 to 4 times; one in five from an athlete we do not know.
    let events: Vec<(u64, u64, usize)> =
        (0..300u64).map(|i| (if i % 5 == 4 { 424_242 } else { athlete }, 500_000 + i, (i % 4 + 1) as usize)).collect();
    // Every delivery at once, a retry next to its first delivery.
    let deliveries: Vec<(u64, u64)> =
        events.iter().flat_map(|&(owner, object, copies)| std::iter::repeat_n((owner, object), copies)).collect();
    let answers = futures::stream::iter(deliveries.clone())
        .map(|(owner, object)| {
            let (http, url) = (app.http.clone(), url.clone());
            async move {
                let response = http
                    .post(&url)
                    .body(strava_event(owner, object, "activity", "create", json!({})))
                    .send()
                    .await
                    .unwrap();
                (object, response.status(), response.json::<Value>().await.unwrap())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;

    let mut firsts = std::collections::HashMap::<u64, usize>::new();
    for (object, status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["ok"], true, "{body}");
        if body["duplicate"] == false {
            *firsts.entry(*object).or_default() += 1;
        } else {
            assert_eq!(body["duplicate"], true, "{body}");
        }
    }
    assert_eq!(answers.len(), deliveries.len());
    for (_, object, copies) in &events {
        assert_eq!(firsts.get(object), Some(&1), "event {object} ({copies} deliveries) answered new exactly once");
    }
    let known = events.iter().filter(|(owner, ..)| *owner == athlete).count() as i64;
    let counts = counts(&app).await;
    assert_eq!(counts.get("received"), Some(&known), "{counts:?}");
    assert_eq!(counts.get("ignored"), Some(&(events.len() as i64 - known)), "{counts:?}");
    // One job each: the worker processes every event of a known athlete once.
    assert_eq!(process_due(&app.services, now_ms()).await.unwrap(), known as usize);
    assert_eq!(process_due(&app.services, now_ms() + 3600 * 1000).await.unwrap(), 0);
}

/// A write that fails for one event (here: a project that does not exist) fails that event only,
/// not the others written in the same group commit.
async fn an_event_that_cannot_be_stored_fails_alone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let now = now_ms();
    let event = |project: &str, key: String| WebhookEvent {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project.into(),
        provider: "strava".into(),
        dedup_key: key,
        event_type: "activity.create".into(),
        remote_user_id: Some("1".into()),
        endpoint_id: None,
        patient_id: None,
        payload: "{}".into(),
        state: "ignored".into(),
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        received_at: now,
        processed_at: Some(now),
        synced_refs: None,
    };
    let writes = &app.services.writes.insert_event;
    let mut batch: Vec<_> = (0..40).map(|i| event(&app.project_id, format!("k{i}"))).collect();
    batch.insert(17, event("no-such-project", "k17".into()));
    batch.push(event(&app.project_id, "k3".into()));
    let results = futures::future::join_all(batch.into_iter().map(|e| writes.run(e))).await;

    assert!(results[17].is_err(), "the event of an unknown project is not stored: {:?}", results[17]);
    let ok: Vec<bool> =
        results.iter().enumerate().filter(|(i, _)| *i != 17).map(|(_, r)| *r.as_ref().unwrap()).collect();
    assert_eq!(ok.iter().filter(|new| **new).count(), 40, "the other 40 stored: {ok:?}");
    assert_eq!(ok.last(), Some(&false), "the repeat of k3 answered as a duplicate");
    assert_eq!(counts(&app).await.get("ignored"), Some(&40));
}
