//! The contract's errors and the project API: every error is problem+json with the right status.

mod support;

on_both_backends!(
    connect_answers_each_error_of_the_contract,
    a_request_past_the_time_limit_gets_a_timeout_problem,
    redirect_uris_must_be_safe_and_allowed,
    settings_toggle_providers_and_refuse_what_they_do_not_know,
    secrets_are_write_only_admin_only_and_encrypted,
    the_credentials_view_tells_what_is_configured_and_never_a_value,
    projects_never_see_each_other,
    the_fhir_store_keeps_patients,
    unknown_routes_and_methods_answer_problem_json,
    the_openapi_document_describes_every_route,
);

use reqwest::StatusCode;
use serde_json::json;
use support::stand_in::TokenMode;
use support::{outcome_code, problem_code, Backend, Options, TestApp};

async fn connect_answers_each_error_of_the_contract(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let patient = app.create_patient().await;
    let ok_body = json!({"patientId": patient});

    // 401: no token, a wrong token, another scheme.
    let (s, body) = app.send("POST", "/v1/wearables/strava/connect", None, Some(ok_body.clone())).await;
    assert_eq!(problem_code(&body, s), "unauthorized");
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app.send("POST", "/v1/wearables/strava/connect", Some("wl_wrong"), Some(ok_body.clone())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let response = app
        .http
        .post(app.url("/v1/wearables/strava/connect"))
        .header("Authorization", format!("Basic {}", app.admin))
        .json(&ok_body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert_eq!(response.headers()["www-authenticate"], "Bearer");

    // 404: unknown provider.
    let (s, body) = app.connect("fitbit", ok_body.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(problem_code(&body, s), "not_found");

    // 400: not JSON.
    let response = app
        .http
        .post(app.url("/v1/wearables/strava/connect"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body("{patientId: nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem_code(&body, StatusCode::BAD_REQUEST), "malformed_json");

    // 422: missing or invalid fields.
    for bad in [json!({}), json!({"patientId": 7}), json!({"patientId": ""}), json!({"patientId": "a/b"}), json!([])] {
        let (s, body) = app.connect("strava", bad.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(problem_code(&body, s), "validation_failed");
    }
    let (s, body) = app.connect("strava", json!({"patientId": patient, "redirectUri": 5})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // 404: a patient that does not exist.
    let (s, body) = app.connect("strava", json!({"patientId": "no-such-patient"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().unwrap().contains("Patient/no-such-patient"));

    // 422: provider not enabled, naming the setting.
    let (s, body) = app.connect("strava", ok_body.clone()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_code(&body, s), "provider_disabled");
    assert!(body["detail"].as_str().unwrap().contains("WEARABLE_STRAVA_ENABLED"));

    // 422: credentials missing, naming the missing keys.
    let admin = app.admin.clone();
    app.send("PUT", "/v1/project/settings/WEARABLE_POLAR_ENABLED", Some(&admin), Some(json!({"enabled": true}))).await;
    let (s, body) = app.connect("polar", ok_body.clone()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_code(&body, s), "credentials_missing");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("WEARABLE_POLAR_CLIENT_ID") && detail.contains("WEARABLE_POLAR_CLIENT_SECRET"), "{detail}");
    app.send("PUT", "/v1/project/secrets/WEARABLE_POLAR_CLIENT_ID", Some(&admin), Some(json!({"value": "id"}))).await;
    let (_, body) = app.connect("polar", ok_body.clone()).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        !detail.contains("WEARABLE_POLAR_CLIENT_ID,") && detail.contains("WEARABLE_POLAR_CLIENT_SECRET"),
        "{detail}"
    );
}

async fn redirect_uris_must_be_safe_and_allowed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    for bad in
        ["not a url", "/relative/path", "javascript:alert(1)", "ftp://files.example/x", "https://user:pw@evil.example/"]
    {
        let (s, body) = app.connect("strava", json!({"patientId": patient, "redirectUri": bad})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }

    let admin = app.admin.clone();
    let (s, settings) = app
        .send(
            "PUT",
            "/v1/project/settings/WEARABLE_REDIRECT_ALLOWLIST",
            Some(&admin),
            Some(json!({"value": "https://my.dashboard, http://localhost:3000"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(settings["settings"]["WEARABLE_REDIRECT_ALLOWLIST"], "https://my.dashboard, http://localhost:3000");

    for allowed in ["https://my.dashboard/done?x=1", "http://localhost:3000/cb"] {
        let (s, body) = app.connect("strava", json!({"patientId": patient, "redirectUri": allowed})).await;
        assert_eq!(s, StatusCode::OK, "{allowed}: {body}");
    }
    for refused in [
        "https://evil.example/done",
        "http://my.dashboard/done",
        "https://my.dashboard:8443/done",
        "http://localhost:3001/",
    ] {
        let (s, body) = app.connect("strava", json!({"patientId": patient, "redirectUri": refused})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert!(body["detail"].as_str().unwrap().contains("WEARABLE_REDIRECT_ALLOWLIST"));
    }

    // A malformed allowlist is refused and the old one kept.
    let (s, _) = app
        .send(
            "PUT",
            "/v1/project/settings/WEARABLE_REDIRECT_ALLOWLIST",
            Some(&admin),
            Some(json!({"value": "https://x.example/path"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, settings) = app.get("/v1/project/settings").await;
    assert_eq!(settings["settings"]["WEARABLE_REDIRECT_ALLOWLIST"], "https://my.dashboard, http://localhost:3000");
}

async fn settings_toggle_providers_and_refuse_what_they_do_not_know(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin.clone();
    let (s, body) = app.get("/v1/project/settings").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["projectId"], app.project_id);
    assert_eq!(
        body["settings"],
        json!({"WEARABLE_STRAVA_ENABLED": false, "WEARABLE_POLAR_ENABLED": false, "WEARABLE_BACKFILL_DAYS": 30})
    );

    // How far a backfill reaches: 1 to 365 days.
    let path = "/v1/project/settings/WEARABLE_BACKFILL_DAYS";
    let (s, body) = app.send("PUT", path, Some(&admin), Some(json!({"value": 90}))).await;
    assert_eq!((s, &body["settings"]["WEARABLE_BACKFILL_DAYS"]), (StatusCode::OK, &json!(90)));
    for wrong in [json!({"value": 0}), json!({"value": 366}), json!({"value": "soon"}), json!({"enabled": true})] {
        let (s, body) = app.send("PUT", path, Some(&admin), Some(wrong.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{wrong}");
        assert_eq!(problem_code(&body, s), "validation_failed");
    }

    let (s, body) = app
        .send("PUT", "/v1/project/settings/WEARABLE_STRAVA_ENABLED", Some(&admin), Some(json!({"enabled": true})))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["settings"]["WEARABLE_STRAVA_ENABLED"], true);
    assert_eq!(body["settings"]["WEARABLE_POLAR_ENABLED"], false);

    let (s, body) = app
        .send("PUT", "/v1/project/settings/WEARABLE_FITBIT_ENABLED", Some(&admin), Some(json!({"enabled": true})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(problem_code(&body, s), "not_found");
    for wrong in [json!({"enabled": "yes"}), json!({"value": "true"}), json!({})] {
        let (s, _) =
            app.send("PUT", "/v1/project/settings/WEARABLE_STRAVA_ENABLED", Some(&admin), Some(wrong.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{wrong}");
    }
    let (_, body) = app.get("/v1/project/settings").await;
    assert_eq!(body["settings"]["WEARABLE_STRAVA_ENABLED"], true, "a refused change loses nothing");

    let member = app.member_token().await;
    let (s, _) = app.send("GET", "/v1/project/settings", Some(&member), None).await;
    assert_eq!(s, StatusCode::OK, "members may read settings");
    let (s, body) = app
        .send("PUT", "/v1/project/settings/WEARABLE_STRAVA_ENABLED", Some(&member), Some(json!({"enabled": false})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(problem_code(&body, s), "forbidden");
}

async fn secrets_are_write_only_admin_only_and_encrypted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin.clone();
    let secret = "very-secret-client-secret-4242";

    let (s, body) = app
        .send("PUT", "/v1/project/secrets/WEARABLE_STRAVA_CLIENT_SECRET", Some(&admin), Some(json!({"value": secret})))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["key"], "WEARABLE_STRAVA_CLIENT_SECRET");
    assert!(!body.to_string().contains(secret));

    let (s, body) = app.get("/v1/project/secrets").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["secrets"][0]["key"], "WEARABLE_STRAVA_CLIENT_SECRET");
    assert!(body["secrets"][0]["updatedAt"].is_string());
    assert!(!body.to_string().contains(secret), "listing never shows values");
    app.assert_not_stored(&[secret.to_string()]).await;

    let (s, _) = app.send("PUT", "/v1/project/secrets/SOMETHING_ELSE", Some(&admin), Some(json!({"value": "x"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .send("PUT", "/v1/project/secrets/WEARABLE_STRAVA_CLIENT_ID", Some(&admin), Some(json!({"value": ""})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = app
        .send("PUT", "/v1/project/secrets/WEARABLE_STRAVA_CLIENT_ID", Some(&admin), Some(json!({"valu": "x"})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let member = app.member_token().await;
    for (method, path) in [
        ("GET", "/v1/project/secrets"),
        ("PUT", "/v1/project/secrets/WEARABLE_STRAVA_CLIENT_ID"),
        ("DELETE", "/v1/project/secrets/WEARABLE_STRAVA_CLIENT_SECRET"),
        ("GET", "/v1/wearables/strava/credentials"),
        ("PUT", "/v1/wearables/strava/credentials"),
    ] {
        let body = Some(json!({"value": "x", "clientId": "a", "clientSecret": "b"}));
        let (s, _) = app.send(method, path, Some(&member), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}");
    }

    let (s, _) = app.send("DELETE", "/v1/project/secrets/WEARABLE_STRAVA_CLIENT_SECRET", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, body) = app.get("/v1/project/secrets").await;
    assert_eq!(body["secrets"], json!([]));
}

async fn the_credentials_view_tells_what_is_configured_and_never_a_value(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin.clone();
    let (s, body) = app.get("/v1/wearables/strava/credentials").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body,
        json!({"configured": false, "clientIdLast4": null, "hasSecret": false, "hasWebhookSecret": false})
    );

    let (s, body) = app
        .send(
            "PUT",
            "/v1/wearables/strava/credentials",
            Some(&admin),
            Some(json!({"clientId": "1234567", "clientSecret": "cs-abc", "webhookSecret": "wh-xyz"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, json!({"configured": true, "clientIdLast4": "4567", "hasSecret": true, "hasWebhookSecret": true}));
    let (_, secrets) = app.get("/v1/project/secrets").await;
    assert_eq!(secrets["secrets"].as_array().unwrap().len(), 3, "the view writes the same secrets");

    let (s, _) =
        app.send("PUT", "/v1/wearables/strava/credentials", Some(&admin), Some(json!({"clientId": "x"}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = app
        .send(
            "PUT",
            "/v1/wearables/garmin/credentials",
            Some(&admin),
            Some(json!({"clientId": "x", "clientSecret": "y"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, body) = app.send("DELETE", "/v1/wearables/strava/credentials", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["configured"], false);
    assert_eq!(body["hasWebhookSecret"], false);
}

async fn projects_never_see_each_other(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let (_, _, page) = app.connect_and_approve("strava", json!({"patientId": patient})).await;
    let endpoint = page["endpointId"].as_str().unwrap().to_string();
    let (_, other) = app.other_project().await;

    for path in [format!("/fhir/R4/Patient/{patient}"), format!("/fhir/R4/Endpoint/{endpoint}")] {
        let (s, body) = app.send("GET", &path, Some(&other), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(outcome_code(&body, "not-found"), "not_found");
    }
    let (s, bundle) =
        app.send("GET", &format!("/fhir/R4/Endpoint?patient=Patient/{patient}"), Some(&other), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(bundle["total"], 0);
    let (s, _) =
        app.send("POST", "/v1/wearables/strava/connect", Some(&other), Some(json!({"patientId": patient}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, settings) = app.send("GET", "/v1/project/settings", Some(&other), None).await;
    assert_eq!(settings["settings"]["WEARABLE_STRAVA_ENABLED"], false);
    let (_, creds) = app.send("GET", "/v1/wearables/strava/credentials", Some(&other), None).await;
    assert_eq!(creds["configured"], false);
}

async fn the_fhir_store_keeps_patients(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin.clone();
    let (s, created) = app
        .send(
            "POST",
            "/fhir/R4/Patient",
            Some(&admin),
            Some(json!({"resourceType": "Patient", "id": "chosen", "gender": "female"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    assert_ne!(id, "chosen", "the server assigns ids");
    assert_eq!(created["meta"]["versionId"], "1");
    let (s, read) = app.get(&format!("/fhir/R4/Patient/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(read, created);
    assert_eq!(read["gender"], "female");

    let (s, body) =
        app.send("POST", "/fhir/R4/Patient", Some(&admin), Some(json!({"resourceType": "Observation"}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(outcome_code(&body, "invalid"), "validation_failed");
    let (s, body) = app.get("/fhir/R4/Patient/does-not-exist").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(outcome_code(&body, "not-found"), "not_found");
    let (s, body) = app.get("/fhir/R4/Endpoint").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "an Endpoint search needs a patient");
    assert_eq!(outcome_code(&body, "invalid"), "validation_failed");
    let (s, body) = app.send("GET", &format!("/fhir/R4/Patient/{id}"), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(outcome_code(&body, "login"), "unauthorized");
}

async fn unknown_routes_and_methods_answer_problem_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (s, body) = app.get("/v2/nothing").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(problem_code(&body, s), "not_found");
    let (s, body) = app.send("DELETE", "/v1/project/settings", Some(&app.admin.clone()), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(problem_code(&body, s), "method_not_allowed");
    let big = "x".repeat(wearlink::http::MAX_BODY_BYTES + 10);
    let (s, body) = app
        .send("POST", "/v1/wearables/strava/connect", Some(&app.admin.clone()), Some(json!({"patientId": big})))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_code(&body, s), "payload_too_large");
}

async fn the_openapi_document_describes_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (s, doc) = app.send("GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/wearables/{provider}/connect", &["post"][..]),
        ("/v1/wearables/{provider}/callback", &["get"]),
        ("/v1/wearables/{provider}/credentials", &["get", "put", "delete"]),
        ("/v1/project/settings", &["get"]),
        ("/v1/project/settings/{key}", &["put"]),
        ("/v1/project/secrets", &["get"]),
        ("/v1/project/secrets/{key}", &["put", "delete"]),
        ("/fhir/R4/Patient", &["post"]),
        ("/fhir/R4/Patient/{id}", &["get"]),
        ("/fhir/R4/Endpoint/{id}", &["get"]),
        ("/fhir/R4/Endpoint", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/v1/wearables/connections", &["get"]),
        ("/v1/wearables/{provider}/connections/{patientId}", &["delete"]),
        ("/v1/wearables/connections/{endpointId}/token", &["post"]),
        ("/v1/wearables/{provider}/webhook/{projectId}", &["get", "post"]),
        ("/v1/wearables/{provider}/webhook-subscription", &["post"]),
        ("/v1/wearables/events", &["get"]),
        ("/v1/wearables/events/{eventId}/replay", &["post"]),
    ] {
        for method in methods {
            assert!(paths.get(path).and_then(|p| p.get(*method)).is_some(), "{method} {path} missing");
        }
    }
    let connect = &paths["/v1/wearables/{provider}/connect"]["post"];
    for status in ["200", "400", "401", "404", "422"] {
        assert!(connect["responses"].get(status).is_some(), "connect lacks {status}");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let response = &schemas["ConnectResponse"];
    let required: Vec<_> = response["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for field in ["provider", "authorizationUrl", "state"] {
        assert!(required.contains(&field));
    }
    assert!(schemas.contains_key("Problem"));
}

async fn a_request_past_the_time_limit_gets_a_timeout_problem(backend: Backend) {
    let limit = std::time::Duration::from_millis(300);
    let options = Options { request_timeout: limit, provider_timeout: limit * 10, ..Options::default() };
    let app = TestApp::spawn_with(backend, options).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    // Strava takes longer to answer the code exchange than we give a request.
    app.stand_in.set_token_mode(TokenMode::Slow(limit * 5));
    let started = std::time::Instant::now();
    let (status, _, body) = app.connect_and_approve("strava", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(problem_code(&body, status), "timeout");
    assert!(started.elapsed() < limit * 5, "answered at the limit, not when Strava answered");
    assert_eq!(app.endpoints_of(&patient).await["total"], 0);
}
