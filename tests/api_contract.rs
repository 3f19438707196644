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
    every_admin_route_refuses_strangers_and_members_before_reading_the_body,
    every_error_is_documented_as_problem_json,
);

use reqwest::StatusCode;
use serde_json::json;
use support::stand_in::TokenMode;
use support::{contains, outcome_code, problem_code, Backend, Options, TestApp};
use wearlink::Config;

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
        json!({
            "WEARABLE_STRAVA_ENABLED": false, "WEARABLE_POLAR_ENABLED": false, "WEARABLE_OURA_ENABLED": false,
            "WEARABLE_WHOOP_ENABLED": false, "WEARABLE_GARMIN_ENABLED": false, "WEARABLE_GOOGLE_ENABLED": false,
            "WEARABLE_WITHINGS_ENABLED": false, "WEARABLE_DEXCOM_ENABLED": false,
            "WEARABLE_DEXCOM_ENVIRONMENT": "production",
            "WEARABLE_BACKFILL_DAYS": 30
        })
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
            "/v1/wearables/fitbit/credentials",
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
        ("/v1/project/fhir-server/check", &["post"]),
        ("/v1/project/fhir-server/keys", &["post"]),
        ("/v1/projects/{projectId}/jwks.json", &["get"]),
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

/// The operations of the served OpenAPI document: `(METHOD, path template, operation)`.
fn operations(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                found.push((method.to_uppercase(), path.clone(), operation.clone()));
            }
        }
    }
    found
}

/// The roles an operation's bearer requirement names: `None` when it takes no token.
fn bearer_roles(operation: &serde_json::Value) -> Option<Vec<String>> {
    let requirements = operation["security"].as_array()?;
    let roles = requirements.iter().find_map(|r| r.get("bearer"))?;
    Some(roles.as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect())
}

/// What each path parameter of the walk is: real ids of this project where they exist.
struct Ids {
    project: String,
    patient: String,
    connection: String,
    webhook_endpoint: String,
    delivery: String,
}

fn fill(path: &str, ids: &Ids) -> String {
    let mut filled = path.to_string();
    while let Some(start) = filled.find('{') {
        let end = start + filled[start..].find('}').unwrap();
        let value = match (&filled[start + 1..end], path) {
            ("provider", _) => "strava",
            ("key", p) if p.contains("/settings/") => "WEARABLE_POLAR_ENABLED",
            ("key", _) => "WEARABLE_STRAVA_CLIENT_SECRET",
            ("projectId", _) => &ids.project,
            ("patientId", _) => &ids.patient,
            ("endpointId", _) => &ids.connection,
            ("id", p) if p.starts_with("/v1/webhook-deliveries/") => &ids.delivery,
            ("id", p) if p.starts_with("/v1/webhook-endpoints/") => &ids.webhook_endpoint,
            ("id", _) => &ids.patient,
            _ => "unknown",
        }
        .to_string();
        filled.replace_range(start..=end, &value);
    }
    filled
}

/// What an admin reads back through every read operation of the document.
async fn everything_readable(app: &TestApp, doc: &serde_json::Value, ids: &Ids) -> Vec<(String, StatusCode, String)> {
    let mut seen = Vec::new();
    for (method, path, operation) in operations(doc) {
        if method == "GET" && bearer_roles(&operation).is_some() {
            let path = fill(&path, ids);
            let (status, body) = app.send("GET", &path, Some(&app.admin.clone()), None).await;
            seen.push((path, status, body.to_string()));
        }
    }
    seen
}

/// The media type errors of `what` ("METHOD path") are sent with: FHIR's under /fhir/R4.
fn error_media(what: &str) -> &'static str {
    if what.contains(" /fhir/R4/") {
        "application/fhir+json; charset=utf-8"
    } else {
        "application/problem+json"
    }
}

fn assert_problem(response: &reqwest::Response, what: &str) {
    assert_eq!(response.headers()["content-type"], error_media(what), "{what}");
}

/// The stable code of an error of `what`: problem+json's, or an OperationOutcome's under /fhir/R4.
fn error_code(body: &serde_json::Value, status: StatusCode, what: &str) -> String {
    if what.contains(" /fhir/R4/") {
        let issue_type = if status == StatusCode::UNAUTHORIZED { "login" } else { "forbidden" };
        outcome_code(body, issue_type)
    } else {
        problem_code(body, status)
    }
}

/// Junk bodies a member sends to routes it may not call: none of them must be read.
fn junk_bodies() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("application/json", br#"{"value": true"#),
        ("application/json", br#"{"value": true}"#),
        ("text/plain", b"not json at all"),
    ]
}

/// Sends the head of a request announcing a body of twice the limit and only its first 64 KiB,
/// then reads the answer: an answer at all proves the server did not wait for the body.
/// Answers the status and the content type.
async fn answer_to_a_body_never_sent(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        wearlink::http::MAX_BODY_BYTES * 2
    );
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        while !contains(&answer, "\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "connection closed without an answer");
            answer.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer while the body was still coming"));
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    let status = text[9..12].parse().unwrap();
    let content_type =
        text.lines().find_map(|l| l.strip_prefix("content-type: ")).unwrap_or_default().trim().to_string();
    (status, content_type)
}

/// Issue 11 §2: who calls, and whether the role may call, is settled before the body is read.
/// The admin routes are those of the served document whose bearer requirement names the `admin`
/// role, so a new one is walked without touching this test; and every other route with a token
/// must not refuse a member, so the document cannot under-declare one either.
async fn every_admin_route_refuses_strangers_and_members_before_reading_the_body(backend: Backend) {
    fn loopback(c: &mut Config) {
        c.outbound.allow_loopback = true;
    }
    let app = TestApp::spawn_with(backend, Options { tweak: loopback, ..Options::default() }).await;
    let admin = app.admin.clone();
    // A project with something behind every id: a connection, a webhook endpoint, a delivery.
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let (_, _, page) = app.connect_and_approve("strava", json!({"patientId": patient})).await;
    let connection = page["endpointId"].as_str().expect("connected").to_string();
    let (s, created) = app
        .send("POST", "/v1/webhook-endpoints", Some(&admin), Some(json!({"url": "http://127.0.0.1:9/events"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let webhook_endpoint = created["id"].as_str().unwrap().to_string();
    let (s, _) = app.send("POST", &format!("/v1/webhook-endpoints/{webhook_endpoint}/test"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (_, listed) =
        app.send("GET", &format!("/v1/webhook-endpoints/{webhook_endpoint}/deliveries"), Some(&admin), None).await;
    let delivery = listed["deliveries"][0]["id"].as_str().unwrap().to_string();
    let ids = Ids { project: app.project_id.clone(), patient, connection, webhook_endpoint, delivery };

    let (_, doc) = app.send("GET", "/openapi.json", None, None).await;
    let member = app.member_token().await;
    let before = everything_readable(&app, &doc, &ids).await;

    let mut admin_routes = Vec::new();
    let mut member_routes = Vec::new();
    for (method, template, operation) in operations(&doc) {
        let Some(roles) = bearer_roles(&operation) else { continue };
        let path = fill(&template, &ids);
        let what = format!("{method} {path}");
        let has_body = operation.get("requestBody").is_some();
        let request = |token: Option<&str>, content_type: &str, body: &[u8]| {
            let mut request = app.http.request(method.parse().unwrap(), app.url(&path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if has_body {
                request = request.header("content-type", content_type).body(body.to_vec());
            }
            request.send()
        };

        // No token: 401, whatever the body.
        for (content_type, body) in junk_bodies() {
            let response = request(None, content_type, body).await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what} without a token");
            assert_problem(&response, &what);
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(error_code(&body, StatusCode::UNAUTHORIZED, &what), "unauthorized", "{what}");
        }
        if has_body {
            let answer = answer_to_a_body_never_sent(&app, &method, &path, None).await;
            assert_eq!(answer, (401, error_media(&what).into()), "{what}: too large, without a token");
        }

        if !roles.iter().any(|r| r == "admin") {
            member_routes.push((method.clone(), path.clone()));
            continue;
        }
        admin_routes.push(format!("{method} {template}"));
        // A member: 403, before the body is read (malformed, wrong shape, wrong type, too large).
        for (content_type, body) in junk_bodies() {
            let response = request(Some(&member), content_type, body).await.unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{what} as a member ({content_type})");
            assert_problem(&response, &what);
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(error_code(&body, StatusCode::FORBIDDEN, &what), "forbidden", "{what}");
        }
        if has_body {
            let answer = answer_to_a_body_never_sent(&app, &method, &path, Some(&member)).await;
            assert_eq!(answer, (403, error_media(&what).into()), "{what}: too large, as a member");
            // The same junk from an admin is refused for what it is: the 403 came first.
            let response = request(Some(&admin), "application/json", br#"{"value": true"#).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}: malformed JSON as admin");
        }
    }
    assert_eq!(everything_readable(&app, &doc, &ids).await, before, "refused calls changed nothing");

    // The other routes with a token are for members, as the document says (some change things,
    // so they come after the comparison above).
    for (method, path) in member_routes {
        let (status, body) = app.send(&method, &path, Some(&member), Some(json!({"value": true}))).await;
        assert_ne!(status, StatusCode::FORBIDDEN, "{method} {path} is for members, as documented: {body}");
    }

    // The walk covered the admin routes we know of (and whatever else the document marks).
    for known in [
        "PUT /v1/project/settings/{key}",
        "GET /v1/project/secrets",
        "PUT /v1/project/secrets/{key}",
        "DELETE /v1/project/secrets/{key}",
        "PUT /v1/wearables/{provider}/credentials",
        "POST /v1/wearables/connections/{endpointId}/token",
        "POST /v1/wearables/connections/{endpointId}/sync",
        "POST /v1/wearables/{provider}/webhook-subscription",
        "GET /v1/wearables/events",
        "POST /v1/wearables/events/{eventId}/replay",
        "POST /v1/webhook-endpoints",
        "PATCH /v1/webhook-endpoints/{id}",
        "POST /v1/webhook-deliveries/{id}/retry",
        "POST /v1/project/fhir-server/check",
        "POST /v1/project/fhir-server/keys",
        "GET /v1/project/fhir-store",
        "POST /v1/project/fhir-store",
        "GET /v1/fhir-outbox",
        "POST /v1/fhir-outbox/{id}/replay",
        "POST /v1/fhir-outbox/replay",
    ] {
        assert!(admin_routes.iter().any(|r| r == known), "{known} is not marked admin in the document");
    }
    assert_eq!(admin_routes.len(), 28, "{admin_routes:#?}");
}

/// Issue 11 §1: errors are sent as `application/problem+json`, so the document says so, for
/// every error status of every operation; and each operation lists the errors of its kind.
/// (schemathesis checks the same against the running server: .ci/schemathesis.sh.)
async fn every_error_is_documented_as_problem_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, doc) = app.send("GET", "/openapi.json", None, None).await;
    // FHIR routes answer their errors as FHIR OperationOutcomes, where the document has them.
    let fhir_outcomes = doc["components"]["schemas"].get("OperationOutcome").is_some();
    for (method, path, operation) in operations(&doc) {
        let what = format!("{method} {path}");
        let media_type = match path.starts_with("/fhir/R4") && fhir_outcomes {
            true => "application/fhir+json",
            false => "application/problem+json",
        };
        let responses = operation["responses"].as_object().unwrap();
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let content = response["content"].as_object().unwrap_or_else(|| panic!("{what} {status}: no body"));
                assert_eq!(content.keys().collect::<Vec<_>>(), [media_type], "{what} {status}");
            }
        }
        let has = |status: &str| responses.contains_key(status);
        assert!(has("503"), "{what}: the time limit applies to every route");
        if let Some(roles) = bearer_roles(&operation) {
            assert!(has("401"), "{what}");
            assert_eq!(has("403"), roles.iter().any(|r| r == "admin"), "{what}");
        }
        if operation.get("requestBody").is_some() {
            assert!(has("400") && has("413"), "{what}");
        }
    }
    // The callback's redirect and where it goes.
    let redirect = &doc["paths"]["/v1/wearables/{provider}/callback"]["get"]["responses"]["303"];
    assert!(redirect["headers"]["Location"].is_object(), "{redirect}");
    // The stateful links: a created Patient's id into connect.
    let link = &doc["paths"]["/fhir/R4/Patient"]["post"]["responses"]["201"]["links"]["ConnectStrava"];
    assert_eq!(link["operationId"], "connect");
    assert_eq!(link["requestBody"]["patientId"], "$response.body#/id");
}
