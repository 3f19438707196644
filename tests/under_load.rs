//! Stories under concurrency, where connect states, callbacks' states and connections are written
//! in batches (`wearlink::batch`): each connect gets its own single-use state, a project cannot
//! start a connect for another project's patient even when both share one batch, and callbacks
//! finishing together each leave exactly one Endpoint per patient, versioned once per callback.

mod support;

on_both_backends!(
    concurrent_connects_keep_their_own_states_and_tenants,
    callbacks_finishing_together_keep_one_endpoint_per_patient,
);

use reqwest::StatusCode;
use serde_json::json;
use support::{problem_code, query_map, Backend, TestApp};

async fn concurrent_connects_keep_their_own_states_and_tenants(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let (_, other_admin) = app.other_project().await;
    for (path, body) in [
        ("/v1/project/settings/WEARABLE_STRAVA_ENABLED", json!({"enabled": true})),
        ("/v1/wearables/strava/credentials", json!({"clientId": "other-client", "clientSecret": "other-secret"})),
    ] {
        let (status, _) = app.send("PUT", path, Some(&other_admin), Some(body)).await;
        assert_eq!(status, StatusCode::OK);
    }

    // 48 connects of ours and 16 of the other project naming our patient, all at once.
    let body = json!({"patientId": patient, "redirectUri": "https://my.dashboard/done"});
    let attempts = (0..64).map(|i| {
        let token = if i % 4 == 3 { other_admin.clone() } else { app.admin.clone() };
        let request = app.http.post(app.url("/v1/wearables/strava/connect")).bearer_auth(&token).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (token, response.status(), response.json::<serde_json::Value>().await.unwrap())
        }
    });
    let mut states = std::collections::HashSet::new();
    let mut ours = Vec::new();
    for (token, status, answer) in futures::future::join_all(attempts).await {
        if token == other_admin {
            assert_eq!(problem_code(&answer, status), "not_found", "another project's patient: {answer}");
        } else {
            assert_eq!(status, StatusCode::OK, "{answer}");
            assert!(states.insert(answer["state"].as_str().unwrap().to_string()), "a state was handed out twice");
            ours.push(answer);
        }
    }
    assert_eq!(ours.len(), 48);

    // Every state is stored and works exactly once.
    for started in ours.iter().step_by(8) {
        let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;
        let (status, location, body) = app.callback(&callback).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        assert_eq!(query_map(&location.unwrap())["status"], "connected");
        let (status, _, body) = app.callback(&callback).await;
        assert_eq!(problem_code(&body, status), "invalid_state");
    }
}

/// Approves `n` connects of `patient`, answering the callback URLs (not yet followed).
async fn approved_connects(app: &TestApp, patient: &str, n: usize) -> Vec<String> {
    let mut callbacks = Vec::new();
    for _ in 0..n {
        let (status, started) = app.connect("strava", json!({"patientId": patient})).await;
        assert_eq!(status, StatusCode::OK, "{started}");
        callbacks.push(app.approve(started["authorizationUrl"].as_str().unwrap()).await);
    }
    callbacks
}

/// Follows all callbacks at once; answers the Endpoint id each one connected.
async fn follow_together(app: &TestApp, callbacks: &[(String, String)]) -> Vec<(String, String)> {
    let answers = futures::future::join_all(callbacks.iter().map(|(patient, url)| async move {
        let (status, _, body) = app.callback(url).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "connected", "{body}");
        (patient.clone(), body["endpointId"].as_str().unwrap().to_string())
    }));
    answers.await
}

async fn callbacks_finishing_together_keep_one_endpoint_per_patient(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let mut patients = Vec::new();
    for _ in 0..12 {
        patients.push(app.create_patient().await);
    }

    // First connects, all finishing at once; four patients approved twice in two tabs, so two
    // first connects of one patient race to create its Endpoint.
    let mut round = Vec::new();
    for (i, patient) in patients.iter().enumerate() {
        for url in approved_connects(&app, patient, if i < 4 { 2 } else { 1 }).await {
            round.push((patient.clone(), url));
        }
    }
    let mut endpoint_of = std::collections::HashMap::new();
    for (patient, endpoint) in follow_together(&app, &round).await {
        let known = endpoint_of.entry(patient.clone()).or_insert_with(|| endpoint.clone());
        assert_eq!(known, &endpoint, "both tabs of {patient} connected the same Endpoint");
    }
    let distinct: std::collections::HashSet<_> = endpoint_of.values().collect();
    assert_eq!(distinct.len(), patients.len(), "one Endpoint per patient");

    // Everyone reconnects at once, each patient twice.
    let mut round = Vec::new();
    for patient in &patients {
        for url in approved_connects(&app, patient, 2).await {
            round.push((patient.clone(), url));
        }
    }
    for (patient, endpoint) in follow_together(&app, &round).await {
        assert_eq!(endpoint, endpoint_of[&patient], "a reconnect keeps the Endpoint");
    }

    // One Endpoint per patient, one version per callback, each linked to its own patient.
    for (i, patient) in patients.iter().enumerate() {
        let bundle = app.endpoints_of(patient).await;
        let entries = bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{bundle}");
        let endpoint = &entries[0]["resource"];
        assert_eq!(endpoint["id"], endpoint_of[patient].as_str());
        assert_eq!(endpoint["status"], "active");
        let callbacks = if i < 4 { 4 } else { 3 };
        assert_eq!(endpoint["meta"]["versionId"], callbacks.to_string(), "{endpoint}");
        let (status, read) = app.get(&format!("/fhir/R4/Endpoint/{}", endpoint_of[patient])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read, *endpoint);
    }
}
