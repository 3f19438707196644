//! Several instances on one database, expired states swept, and the database going away.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use support::{outcome_code, problem_code, query_map, Backend, FlakyProxy, Options, TestApp};
use wearlink::store::OAuthStateRecord;

on_both_backends!(
    a_connect_started_on_one_instance_finishes_on_another,
    one_callback_hitting_two_instances_at_once_connects_once,
    expired_states_are_swept_safely_by_several_instances,
);

async fn a_connect_started_on_one_instance_finishes_on_another(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("polar").await;
    let patient = app.create_patient().await;
    let (other, _) = app.second_instance().await;

    let (_, started) = app.connect("polar", json!({"patientId": patient})).await;
    let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;
    // The load balancer sends the user's return to instance B.
    let on_b = callback.replace(&app.base, &other);
    assert_ne!(on_b, callback);
    let (status, _, page) = app.callback(&on_b).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["status"], "connected");

    // Both instances see the same Endpoint.
    let path = format!("/fhir/R4/Endpoint/{}", page["endpointId"].as_str().unwrap());
    let (status, on_a) = app.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    let read_b: serde_json::Value =
        app.http.get(format!("{other}{path}")).bearer_auth(&app.admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(on_a, read_b);
}

async fn one_callback_hitting_two_instances_at_once_connects_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let (other, _) = app.second_instance().await;

    for round in 0..15 {
        let (_, started) =
            app.connect("strava", json!({"patientId": patient, "redirectUri": "https://my.dashboard/done"})).await;
        let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;
        let targets: Vec<String> =
            (0..8).map(|i| if i % 2 == 0 { callback.clone() } else { callback.replace(&app.base, &other) }).collect();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(targets.len()));
        let tasks: Vec<_> = targets
            .into_iter()
            .map(|url| {
                let (http, barrier) = (app.http.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let response = http.get(url).send().await.unwrap();
                    let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_string());
                    (response.status(), location)
                })
            })
            .collect();
        let mut connected = 0;
        let mut refused = 0;
        for task in tasks {
            match task.await.unwrap() {
                (StatusCode::SEE_OTHER, Some(location)) => {
                    assert!(location.contains("status=connected"), "{location}");
                    connected += 1;
                }
                (StatusCode::BAD_REQUEST, None) => refused += 1,
                other => panic!("round {round}: unexpected answer {other:?}"),
            }
        }
        assert_eq!((connected, refused), (1, 7), "round {round}");
    }
    assert_eq!(app.stand_in.token_requests().len(), 15, "one exchange per state");
    assert_eq!(app.endpoints_of(&patient).await["total"], 1);
}

async fn expired_states_are_swept_safely_by_several_instances(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let (_, second) = app.second_instance().await;

    let now = wearlink::time::now_ms();
    for i in 0..200 {
        app.services
            .store
            .insert_state(&OAuthStateRecord {
                state_hash: format!("expired-{i}"),
                project_id: app.project_id.clone(),
                patient_id: patient.clone(),
                provider: "strava".into(),
                redirect_uri: None,
                created_at: now - 700_000,
                expires_at: now - 100_000,
            })
            .await
            .unwrap();
    }
    let (_, started) = app.connect("strava", json!({"patientId": patient})).await;

    let (a, b) = tokio::join!(
        app.services.store.delete_expired_states(wearlink::time::now_ms()),
        second.store.delete_expired_states(wearlink::time::now_ms())
    );
    assert_eq!(a.unwrap() + b.unwrap(), 200, "each expired state deleted once, by one of them");
    assert_eq!(app.services.store.delete_expired_states(wearlink::time::now_ms()).await.unwrap(), 0);

    // The live state survived the sweep.
    let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let (status, _, page) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::OK, "{page}");
}

/// PostgreSQL goes away (a proxy in front of it is cut): requests fail fast with 503 problem+json,
/// `/readyz` says so, a pending connect is not lost, and everything recovers by itself.
#[tokio::test]
async fn the_service_survives_the_database_going_away() {
    let target: std::net::SocketAddr = {
        let url = url::Url::parse(&support::postgres_admin_url()).unwrap();
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432)).parse().unwrap()
    };
    let proxy = FlakyProxy::start(target).await;
    let app = TestApp::spawn_with(
        Backend::Postgres,
        Options { database_via: Some(proxy.addr), acquire_timeout: Duration::from_millis(500), ..Options::default() },
    )
    .await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let (status, _) = app.send("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, started) =
        app.connect("strava", json!({"patientId": patient, "redirectUri": "https://my.dashboard/d"})).await;
    let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;

    proxy.cut();
    let (status, body) = app.send("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(problem_code(&body, status), "unavailable");
    let (status, body) = app.send("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "the process is still alive: {body}");
    let began = Instant::now();
    let admin = app.admin.clone();
    let (status, body) =
        app.send("POST", "/fhir/R4/Patient", Some(&admin), Some(json!({"resourceType": "Patient"}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(outcome_code(&body, "transient"), "unavailable");
    assert!(began.elapsed() < Duration::from_secs(3), "fails fast, took {:?}", began.elapsed());
    let (status, _, body) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(app.stand_in.token_requests().is_empty(), "nothing reached the provider");

    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if app.send("GET", "/readyz", None, None).await.0 == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "ready again once the database is back");
    // The connect begun before the outage still completes: its state was not half-consumed.
    let (status, location, body) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(query_map(&location.unwrap())["status"], "connected");
}
