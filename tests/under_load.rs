//! Security properties when many connects are written together (states are group-committed):
//! each connect gets its own single-use state, and a project cannot start a connect for another
//! project's patient even when both share one batch.

mod support;

on_both_backends!(concurrent_connects_keep_their_own_states_and_tenants);

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
