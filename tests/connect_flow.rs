//! Stories of a patient connecting a wearable: connect, approve at the provider, see the Endpoint.

mod support;

on_both_backends!(
    a_patient_connects_strava_and_the_endpoint_holds_the_connection,
    a_patient_connects_polar_and_sees_the_json_success_page,
    reconnecting_updates_the_same_endpoint,
    a_state_works_once,
    the_same_callback_racing_itself_connects_exactly_once,
    forged_expired_and_other_provider_states_are_refused,
    a_user_who_declines_is_sent_back_with_access_denied,
    a_failing_provider_ends_in_the_error_redirect_and_persists_nothing,
    wrong_credentials_at_the_provider_end_in_token_exchange_failed,
    an_unreachable_provider_ends_in_the_error_redirect,
);

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::{problem_code, query_map, Backend, Options, TestApp, TokenMode};

async fn a_patient_connects_strava_and_the_endpoint_holds_the_connection(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;

    let (status, started) = app
        .connect(
            "strava",
            json!({"patientId": patient, "redirectUri": "https://my.dashboard/connect-done?tab=wearables"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["provider"], "strava");
    let state = started["state"].as_str().unwrap();
    assert!(state.len() >= 22, "state must carry at least 128 bits");

    // The authorization URL is Strava's authorize page with everything Strava needs.
    let authorize = url::Url::parse(started["authorizationUrl"].as_str().unwrap()).unwrap();
    assert_eq!(authorize.path(), "/strava/oauth/authorize");
    let q = query_map(&authorize);
    assert_eq!(q["client_id"], support::stand_in::STRAVA_CLIENT_ID);
    assert_eq!(q["redirect_uri"], app.url("/v1/wearables/strava/callback"));
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["approval_prompt"], "auto");
    assert_eq!(q["scope"], "read,activity:read_all");
    assert_eq!(q["state"], state);

    let callback = app.approve(authorize.as_str()).await;
    let (status, location, _) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = location.expect("a redirect to the dashboard");
    assert_eq!(location.host_str(), Some("my.dashboard"));
    assert_eq!(location.path(), "/connect-done");
    let q = query_map(&location);
    assert_eq!(q["tab"], "wearables", "the redirectUri keeps its own query");
    assert_eq!(q["status"], "connected");
    assert_eq!(q["provider"], "strava");
    assert_eq!(q["patientId"], patient);
    let endpoint_id = &q["endpointId"];

    // The token exchange was Strava's: credentials in the form, the code from the callback.
    let requests = app.stand_in.token_requests();
    assert_eq!(requests.len(), 1);
    let form = &requests[0].form;
    assert_eq!(form["client_id"], support::stand_in::STRAVA_CLIENT_ID);
    assert_eq!(form["client_secret"], support::stand_in::STRAVA_CLIENT_SECRET);
    assert_eq!(form["grant_type"], "authorization_code");
    assert!(form["code"].starts_with("code-"));

    // The Endpoint: active, Strava, the athlete id, linked to the patient, scopes and expiry readable.
    let (status, endpoint) = app.get(&format!("/fhir/R4/Endpoint/{endpoint_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(endpoint["resourceType"], "Endpoint");
    assert_eq!(endpoint["id"], endpoint_id.as_str());
    assert_eq!(endpoint["meta"]["versionId"], "1");
    assert!(endpoint["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(endpoint["status"], "active");
    assert_eq!(endpoint["connectionType"]["code"], "strava");
    assert_eq!(endpoint["connectionType"]["system"], "https://wearlink.dev/fhir/CodeSystem/wearable-provider");
    assert_eq!(endpoint["address"], app.stand_in.url("/strava/api/v3"));
    assert_eq!(endpoint["identifier"][0]["system"], "https://wearlink.dev/fhir/sid/strava-athlete-id");
    assert!(endpoint["identifier"][0]["value"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(endpoint["payloadType"].as_array().is_some_and(|p| !p.is_empty()));
    let extensions = endpoint["extension"].as_array().unwrap();
    let ext = |suffix: &'static str| extensions.iter().filter(move |e| e["url"].as_str().unwrap().ends_with(suffix));
    assert_eq!(ext("endpoint-patient").next().unwrap()["valueReference"]["reference"], format!("Patient/{patient}"));
    let scopes: Vec<_> = ext("endpoint-granted-scope").map(|e| e["valueString"].as_str().unwrap()).collect();
    assert_eq!(scopes, ["read", "activity:read_all"]);
    let expires = ext("endpoint-token-expires-at").next().unwrap()["valueInstant"].as_str().unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(expires).unwrap();
    assert!(expires > chrono::Utc::now() + chrono::Duration::hours(5));

    // Found by patient search too.
    let bundle = app.endpoints_of(&patient).await;
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], 1);
    assert_eq!(bundle["entry"][0]["resource"]["id"], endpoint_id.as_str());

    // The tokens are nowhere in clear: not in the resource, not in the database files.
    let tokens = app.stand_in.issued_tokens();
    assert_eq!(tokens.len(), 2, "an access and a refresh token");
    for token in &tokens {
        assert!(!endpoint.to_string().contains(token.as_str()));
    }
    let mut secrets = tokens.clone();
    secrets.push(support::stand_in::STRAVA_CLIENT_SECRET.into());
    secrets.push(state.to_string());
    app.assert_not_stored(&secrets).await;
}

async fn a_patient_connects_polar_and_sees_the_json_success_page(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("polar").await;
    let patient = app.create_patient().await;

    let (status, started) = app.connect("polar", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK);
    let authorize = url::Url::parse(started["authorizationUrl"].as_str().unwrap()).unwrap();
    let q = query_map(&authorize);
    assert_eq!(authorize.path(), "/polar/oauth2/authorization");
    assert_eq!(q["scope"], "accesslink.read_all");
    assert_eq!(q["redirect_uri"], app.url("/v1/wearables/polar/callback"));

    let callback = app.approve(authorize.as_str()).await;
    let (status, location, page) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(location.is_none());
    assert_eq!(page["status"], "connected");
    assert_eq!(page["provider"], "polar");
    assert_eq!(page["patientId"], patient);

    // Polar's exchange: Basic client credentials, the exact redirect_uri; then the user is registered.
    let request = &app.stand_in.token_requests()[0];
    assert_eq!(
        request.basic_auth,
        Some((support::stand_in::POLAR_CLIENT_ID.into(), support::stand_in::POLAR_CLIENT_SECRET.into()))
    );
    assert!(!request.form.contains_key("client_secret"));
    assert_eq!(request.form["redirect_uri"], app.url("/v1/wearables/polar/callback"));
    assert_eq!(app.stand_in.polar_registrations(), 1);
    let member_ids = app.stand_in.polar_member_ids();
    assert!(!member_ids[0].contains(&patient), "the member-id is opaque");

    let (status, endpoint) = app.get(&format!("/fhir/R4/Endpoint/{}", page["endpointId"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(endpoint["connectionType"]["code"], "polar");
    assert_eq!(endpoint["address"], app.stand_in.url("/polar/v3"));
    assert_eq!(endpoint["identifier"][0]["system"], "https://wearlink.dev/fhir/sid/polar-user-id");
    app.assert_not_stored(&app.stand_in.issued_tokens()).await;
}

async fn reconnecting_updates_the_same_endpoint(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("polar").await;
    let patient = app.create_patient().await;

    let (_, _, first) = app.connect_and_approve("polar", json!({"patientId": patient})).await;
    let (status, _, second) = app.connect_and_approve("polar", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(first["endpointId"], second["endpointId"]);
    assert_eq!(app.stand_in.polar_registrations(), 2, "registration is attempted again and 409 is accepted");

    let bundle = app.endpoints_of(&patient).await;
    assert_eq!(bundle["total"], 1);
    assert_eq!(bundle["entry"][0]["resource"]["meta"]["versionId"], "2");
}

async fn a_state_works_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let (_, started) = app.connect("strava", json!({"patientId": patient})).await;
    let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;

    let (status, _, page) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, location, body) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(location.is_none(), "a reused state never redirects");
    assert_eq!(problem_code(&body, status), "invalid_state");
    assert_eq!(app.stand_in.token_requests().len(), 1, "a replay never reaches the provider");
}

async fn the_same_callback_racing_itself_connects_exactly_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    for _round in 0..5 {
        let (_, started) = app.connect("strava", json!({"patientId": patient})).await;
        let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let (http, url) = (app.http.clone(), callback.clone());
                async move { http.get(url).send().await.unwrap().status() }
            })
            .collect();
        let statuses: Vec<StatusCode> = futures_join_all(attempts).await;
        assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 1, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == StatusCode::BAD_REQUEST).count(), 7, "{statuses:?}");
    }
}

/// Runs the futures concurrently on the test's runtime.
async fn futures_join_all<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

async fn forged_expired_and_other_provider_states_are_refused(backend: Backend) {
    let app =
        TestApp::spawn_with(backend, Options { state_ttl: Duration::from_millis(300), ..Options::default() }).await;
    app.configure("strava").await;
    app.configure("polar").await;
    let patient = app.create_patient().await;

    for query in ["?code=abc&state=forged-state-value", "?code=abc", "?code=abc&state="] {
        let (status, location, body) = app.callback(&app.url(&format!("/v1/wearables/strava/callback{query}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(location.is_none());
        assert_eq!(problem_code(&body, status), "invalid_state");
    }

    // A Strava state presented at Polar's callback.
    let (_, started) =
        app.connect("strava", json!({"patientId": patient, "redirectUri": "https://my.dashboard/x"})).await;
    let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let at_polar = callback.replace("/v1/wearables/strava/callback", "/v1/wearables/polar/callback");
    let (status, location, _) = app.callback(&at_polar).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(location.is_none());

    // An expired state.
    let (_, started) =
        app.connect("strava", json!({"patientId": patient, "redirectUri": "https://my.dashboard/x"})).await;
    let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, location, body) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(location.is_none());
    assert_eq!(problem_code(&body, status), "invalid_state");

    assert!(app.stand_in.token_requests().is_empty(), "no bad state reaches the provider");
    assert_eq!(app.endpoints_of(&patient).await["total"], 0, "nothing persisted");
}

async fn a_user_who_declines_is_sent_back_with_access_denied(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    app.stand_in.set_user_declines(true);

    let (status, location, _) = app
        .connect_and_approve("strava", json!({"patientId": patient, "redirectUri": "https://my.dashboard/done"}))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let q = query_map(&location.unwrap());
    assert_eq!(q["status"], "error");
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["provider"], "strava");
    assert!(!q.contains_key("endpointId"));

    // Without a redirectUri, the JSON page says the same.
    let (status, _, body) = app.connect_and_approve("strava", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_code(&body, status), "access_denied");

    assert!(app.stand_in.token_requests().is_empty());
    assert_eq!(app.endpoints_of(&patient).await["total"], 0);
}

async fn a_failing_provider_ends_in_the_error_redirect_and_persists_nothing(backend: Backend) {
    let app =
        TestApp::spawn_with(backend, Options { provider_timeout: Duration::from_millis(500), ..Options::default() })
            .await;
    app.configure("strava").await;
    app.configure("polar").await;
    let patient = app.create_patient().await;
    let redirect = json!({"patientId": patient, "redirectUri": "https://my.dashboard/done"});

    for mode in
        [TokenMode::Status(500), TokenMode::Status(503), TokenMode::Garbage, TokenMode::Slow(Duration::from_secs(2))]
    {
        app.stand_in.set_token_mode(mode);
        for provider in ["strava", "polar"] {
            let (status, location, body) = app.connect_and_approve(provider, redirect.clone()).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "{mode:?} {provider}: {body}");
            let q = query_map(&location.unwrap());
            assert_eq!(q["status"], "error", "{mode:?}");
            assert_eq!(q["error"], "token_exchange_failed", "{mode:?}");
        }
    }

    // Without a redirectUri: a JSON error page, never a 500.
    app.stand_in.set_token_mode(TokenMode::Status(500));
    let (status, _, body) = app.connect_and_approve("strava", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem_code(&body, status), "token_exchange_failed");

    assert_eq!(app.endpoints_of(&patient).await["total"], 0);
}

async fn wrong_credentials_at_the_provider_end_in_token_exchange_failed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let admin = app.admin.clone();
    let (_, started) =
        app.connect("strava", json!({"patientId": patient, "redirectUri": "https://my.dashboard/d"})).await;
    // The admin rotates the secret to a wrong one between connect and callback.
    app.send(
        "PUT",
        "/v1/project/secrets/WEARABLE_STRAVA_CLIENT_SECRET",
        Some(&admin),
        Some(json!({"value": "not-the-secret"})),
    )
    .await;
    let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let (status, location, _) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(query_map(&location.unwrap())["error"], "token_exchange_failed");
}

async fn an_unreachable_provider_ends_in_the_error_redirect(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let (_, started) =
        app.connect("strava", json!({"patientId": patient, "redirectUri": "https://my.dashboard/d"})).await;
    let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;

    // Same service, token URL pointing at a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = app.services.config.clone();
    config.provider_urls.get_mut("strava").unwrap().token =
        Some(url::Url::parse(&format!("http://{closed}/oauth/token")).unwrap());
    let services = wearlink::Services::start(config).await.unwrap();
    let state = query_map(&url::Url::parse(&callback).unwrap())["state"].clone();
    let outcome = wearlink::connect::finish(
        &services,
        "strava",
        wearlink::connect::CallbackParams { state: Some(state), code: Some("c".into()), ..Default::default() },
    )
    .await
    .unwrap();
    assert_eq!(outcome.result, Err(wearlink::connect::Failure::TokenExchangeFailed));
    let q = query_map(&outcome.redirect_target().unwrap());
    assert_eq!(q["error"], "token_exchange_failed");
    assert_eq!(app.endpoints_of(&patient).await["total"], 0);
}
