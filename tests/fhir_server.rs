//! Stories of pointing a project at its own FHIR server (issue 20, part 1): each auth mode set
//! through the settings and secrets APIs and checked against the partner server
//! (`tests/fhir-partner`: Medplum's engine with bearer, client-credentials and SMART Backend
//! Services authentication), tokens cached and renewed once after a 401, wrong credentials and
//! unsuitable servers refused when they are set.

mod support;

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{Backend, FhirPartner, Options, TestApp};
use wearlink::fhir_server::{FhirClient, PatientLookup};

on_both_backends!(
    a_bearer_token_is_checked_when_set_and_patients_are_looked_up_with_it,
    client_credentials_tokens_are_fetched_once_reused_and_renewed_once_after_a_401,
    private_key_jwt_assertions_verify_against_our_jwks_and_rotation_keeps_the_old_key,
    servers_that_do_not_qualify_or_cannot_be_reached_are_refused_with_clear_problems,
    a_project_on_its_own_server_connects_that_servers_patients_and_is_read_there,
);

/// The test app, allowed to reach the partner on loopback over plain http.
async fn app(backend: Backend) -> TestApp {
    let env = vec![("WEARLINK_ALLOW_LOOPBACK_TARGETS".to_string(), "1".to_string())];
    TestApp::spawn_with(backend, Options { env, ..Options::default() }).await
}

async fn set(app: &TestApp, key: &str, value: Value) -> (StatusCode, Value) {
    app.send("PUT", &format!("/v1/project/settings/{key}"), Some(&app.admin), Some(json!({ "value": value }))).await
}

async fn secret(app: &TestApp, key: &str, value: &str) -> (StatusCode, Value) {
    app.send("PUT", &format!("/v1/project/secrets/{key}"), Some(&app.admin), Some(json!({ "value": value }))).await
}

async fn check(app: &TestApp) -> (StatusCode, Value) {
    app.send("POST", "/v1/project/fhir-server/check", Some(&app.admin), None).await
}

fn ok(answer: (StatusCode, Value)) -> Value {
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    answer.1
}

fn problem(answer: (StatusCode, Value), status: StatusCode, code: &str) -> String {
    assert_eq!((answer.0, answer.1["code"].as_str()), (status, Some(code)), "{}", answer.1);
    answer.1["detail"].as_str().unwrap().to_string()
}

async fn client(app: &TestApp) -> FhirClient<'_> {
    FhirClient::for_project(&app.services, &app.project_id).await.unwrap().expect("a FHIR server is configured")
}

/// A Patient written straight to the partner; answers its id.
async fn patient_on(partner: &FhirPartner, token: &str) -> String {
    let answer = reqwest::Client::new()
        .post(format!("{}/Patient", partner.base))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "name": [{"family": "Doe"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    answer.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

fn stat(stats: &Value, name: &str) -> u64 {
    stats[name].as_u64().unwrap_or_else(|| panic!("{name} in {stats}"))
}

async fn a_bearer_token_is_checked_when_set_and_patients_are_looked_up_with_it(backend: Backend) {
    let partner =
        match FhirPartner::start_with(&[("FHIR_AUTH", "bearer"), ("FHIR_BEARER_TOKEN", "platform-token-1")]).await {
            Some(partner) => partner,
            None => return,
        };
    let app = app(backend).await;
    // Auth first, URL next: the configuration is incomplete (no token), so only /metadata is checked.
    ok(set(&app, "FHIR_SERVER_AUTH", json!("bearer")).await);
    let settings = ok(set(&app, "FHIR_SERVER_URL", json!(format!("{}/", partner.base))).await);
    assert_eq!(settings["settings"]["FHIR_SERVER_URL"], json!(partner.base), "stored without the trailing slash");
    let detail = problem(check(&app).await, StatusCode::UNPROCESSABLE_ENTITY, "fhir_server_incomplete");
    assert!(detail.contains("FHIR_SERVER_TOKEN"), "{detail}");

    // A wrong token is refused when it is set, and not stored.
    let detail = problem(
        secret(&app, "FHIR_SERVER_TOKEN", "wrong-token").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "fhir_server_auth_failed",
    );
    assert!(detail.contains("401") && !detail.contains("wrong-token"), "{detail}");
    let (_, secrets) = app.send("GET", "/v1/project/secrets", Some(&app.admin), None).await;
    assert!(!secrets.to_string().contains("FHIR_SERVER_TOKEN"), "{secrets}");

    let answer = ok(secret(&app, "FHIR_SERVER_TOKEN", "platform-token-1").await);
    assert!(!answer.to_string().contains("platform-token-1"), "write-only: {answer}");
    let report = ok(check(&app).await);
    assert_eq!(
        (report["url"].as_str(), report["fhirVersion"].as_str(), report["bundles"].as_str(), report["auth"].as_str()),
        (Some(partner.base.as_str()), Some("4.0.1"), Some("transaction"), Some("bearer"))
    );
    assert_eq!(report["credentials"], "ok");

    let id = patient_on(&partner, "platform-token-1").await;
    let client = client(&app).await;
    match client.patient(&id).await {
        PatientLookup::Found(patient) => assert_eq!(patient["id"], json!(id)),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.patient("no-such-patient").await, PatientLookup::NotFound);
    assert_eq!(client.patient("../metadata").await, PatientLookup::NotFound, "not a FHIR id: never sent");
    let written = client
        .put(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id, "active": true}))
        .await
        .unwrap();
    assert_eq!((written.status, &written.body["active"]), (200, &json!(true)));
    assert!(!app.db.stored_bytes().await.windows(16).any(|w| w == b"platform-token-1"), "sealed at rest");

    // The server's token changes under us: a bearer token is not renewed, the lookup is unavailable.
    drop(partner);
    match client.patient(&id).await {
        PatientLookup::Unavailable(reason) => assert!(reason.contains("could not be reached"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// Token requests as a token URL saw them: the `Authorization` header and the form.
type TokenRequests = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// A token URL in front of the partner's that records how the client authenticated.
async fn recording_token_url(partner_origin: String) -> (String, TokenRequests) {
    let seen: TokenRequests = Arc::default();
    let log = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (log, origin) = (Arc::clone(&log), partner_origin.clone());
            async move {
                let authorization = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
                log.lock().unwrap().push((authorization.clone(), body.clone()));
                let mut forward = reqwest::Client::new()
                    .post(format!("{origin}/oauth2/token"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body);
                if let Some(authorization) = authorization {
                    forward = forward.header("authorization", authorization);
                }
                let answer = forward.send().await.unwrap();
                let status = axum::http::StatusCode::from_u16(answer.status().as_u16()).unwrap();
                (status, [("content-type", "application/json")], answer.text().await.unwrap())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn client_credentials_tokens_are_fetched_once_reused_and_renewed_once_after_a_401(backend: Backend) {
    let Some(partner) = FhirPartner::start_with(&[
        ("FHIR_AUTH", "client-credentials"),
        ("FHIR_CLIENT_ID", "wearlink"),
        ("FHIR_CLIENT_SECRET", "s3cret-of-the-platform"),
    ])
    .await
    else {
        return;
    };
    let app = app(backend).await;
    ok(set(&app, "FHIR_SERVER_URL", json!(partner.base)).await);
    ok(set(&app, "FHIR_SERVER_AUTH", json!("client_credentials")).await);
    ok(set(&app, "FHIR_SERVER_SCOPE", json!("system/Patient.rs system/Observation.cu")).await);
    ok(secret(&app, "FHIR_SERVER_CLIENT_ID", "wearlink").await);
    assert_eq!(stat(&partner.stats().await, "tokenRequests"), 0, "incomplete: nothing asked yet");
    let detail = problem(
        secret(&app, "FHIR_SERVER_CLIENT_SECRET", "not-the-secret").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "fhir_server_auth_failed",
    );
    assert!(detail.contains("invalid_client") && !detail.contains("not-the-secret"), "{detail}");
    ok(secret(&app, "FHIR_SERVER_CLIENT_SECRET", "s3cret-of-the-platform").await);
    let report = ok(check(&app).await);
    assert_eq!(report["tokenUrl"], json!(format!("{}/oauth2/token", partner.origin())), "discovered");

    // One token for the set and the check and every call after them.
    let client = client(&app).await;
    for _ in 0..3 {
        assert_eq!(client.get("Patient?_count=1").await.unwrap().status, 200);
    }
    let stats = partner.stats().await;
    assert_eq!((stat(&stats, "tokensIssued"), stat(&stats, "unauthorized")), (1, 0), "{stats}");

    // The server forgets its tokens: the next call gets one 401, one new token, and goes through.
    partner.revoke_tokens().await;
    assert_eq!(client.get("Patient?_count=1").await.unwrap().status, 200);
    assert_eq!(client.get("Patient?_count=1").await.unwrap().status, 200);
    let stats = partner.stats().await;
    assert_eq!((stat(&stats, "tokensIssued"), stat(&stats, "unauthorized")), (2, 1), "{stats}");

    // Calls in flight together when the tokens are forgotten again: one fetch serves them all.
    // How many of them reach the server with the old token (and get a 401) before the new one is
    // cached depends on scheduling, so only the bounds are checked: at least one, at most four.
    partner.revoke_tokens().await;
    let answers = futures::future::join_all((0..4).map(|_| client.get("Patient?_count=1"))).await;
    assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|a| a.status == 200)), "{answers:?}");
    let stats = partner.stats().await;
    assert_eq!(stat(&stats, "tokensIssued"), 3, "one fetch for all four: {stats}");
    assert!((2..=5).contains(&stat(&stats, "unauthorized")), "{stats}");

    // Basic by default (the SMART configuration offers it), in the form when the setting says so.
    let (token_url, seen) = recording_token_url(partner.origin()).await;
    let before = stat(&partner.stats().await, "tokensIssued");
    // The stored secret is never sent to an address it was not given for: moving the token URL
    // is refused (409) while it is stored, and nothing reaches the new address.
    let (status, body) = set(&app, "FHIR_SERVER_TOKEN_URL", json!(token_url)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(seen.lock().unwrap().is_empty(), "nothing sent to the new token URL");
    let path = "/v1/project/secrets/FHIR_SERVER_CLIENT_SECRET";
    assert_eq!(app.send("DELETE", path, Some(&app.admin), None).await.0, StatusCode::NO_CONTENT);
    ok(set(&app, "FHIR_SERVER_TOKEN_URL", json!(token_url)).await);
    ok(secret(&app, "FHIR_SERVER_CLIENT_SECRET", "s3cret-of-the-platform").await);
    ok(set(&app, "FHIR_SERVER_CLIENT_AUTH", json!("form")).await);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one token request per changed configuration: {seen:?}");
    assert_eq!(stat(&partner.stats().await, "tokensIssued"), before + 2);
    let (basic, form) = (&seen[0], &seen[1]);
    assert!(basic.0.as_deref().is_some_and(|a| a.starts_with("Basic ")), "{basic:?}");
    assert!(!basic.1.contains("client_secret"), "{basic:?}");
    assert!(basic.1.contains("scope=system%2FPatient.rs+system%2FObservation.cu"), "{basic:?}");
    assert_eq!(form.0, None, "{form:?}");
    assert!(
        form.1.contains("client_id=wearlink") && form.1.contains("client_secret=s3cret-of-the-platform"),
        "{form:?}"
    );
}

async fn private_key_jwt_assertions_verify_against_our_jwks_and_rotation_keeps_the_old_key(backend: Backend) {
    let app = app(backend).await;
    // The mode first: Wearlink makes the key, and the JWKS URL can be registered at the platform.
    ok(set(&app, "FHIR_SERVER_AUTH", json!("private_key_jwt")).await);
    let jwks_url = app.url(&format!("/v1/projects/{}/jwks.json", app.project_id));
    let jwks: Value = reqwest::get(&jwks_url).await.unwrap().json().await.unwrap();
    let first_kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!((jwks["keys"][0]["alg"].as_str(), jwks["keys"][0].get("d")), (Some("ES384"), None));

    let Some(partner) = FhirPartner::start_with(&[
        ("FHIR_AUTH", "private-key-jwt"),
        ("FHIR_CLIENT_ID", "wearlink-backend"),
        ("FHIR_JWKS_URL", &jwks_url),
    ])
    .await
    else {
        return;
    };
    ok(set(&app, "FHIR_SERVER_URL", json!(partner.base)).await);
    let detail = problem(
        secret(&app, "FHIR_SERVER_CLIENT_ID", "someone-else").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "fhir_server_auth_failed",
    );
    assert!(detail.contains("invalid_client"), "{detail}");
    ok(secret(&app, "FHIR_SERVER_CLIENT_ID", "wearlink-backend").await);
    let report = ok(check(&app).await);
    assert_eq!(
        (report["auth"].as_str(), report["jwksUrl"].as_str()),
        (Some("private_key_jwt"), Some(jwks_url.as_str()))
    );

    let client = client(&app).await;
    assert_eq!(client.get("Patient?_count=1").await.unwrap().status, 200);
    let stats = partner.stats().await;
    assert_eq!(stat(&stats, "tokensIssued"), 1, "{stats}");

    // Rotation: a new key signs; the old one is still served beside it.
    let (status, rotated) = app.send("POST", "/v1/project/fhir-server/keys", Some(&app.admin), None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let served: Value = reqwest::get(&jwks_url).await.unwrap().json().await.unwrap();
    let kids: Vec<&str> = served["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids.len(), 2, "{served}");
    assert_eq!(kids[1], first_kid, "the old key stays, after the new one");
    assert_eq!(served, rotated);

    // After the server forgot its tokens: a client made before the rotation still signs with the
    // old key, which verifies (still served); one made after it signs with the new key (the key
    // is part of the configuration, so its token is a new one).
    partner.revoke_tokens().await;
    assert_eq!(client.get("Patient?_count=1").await.unwrap().status, 200);
    let fresh = self::client(&app).await;
    assert_eq!(fresh.get("Patient?_count=1").await.unwrap().status, 200);
    let stats = partner.stats().await;
    assert_eq!(stats["tokenErrors"].as_array().unwrap().len(), 1, "only the wrong client id failed: {stats}");
    assert_eq!((stat(&stats, "tokensIssued"), stat(&stats, "unauthorized")), (3, 1), "{stats}");

    // Unknown projects have no JWKS.
    let answer = reqwest::get(app.url("/v1/projects/no-such-project/jwks.json")).await.unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
}

/// A server whose CapabilityStatement is R3 and has no conditional update.
async fn stu3_server() -> String {
    let statement = json!({
        "resourceType": "CapabilityStatement", "fhirVersion": "3.0.2",
        "rest": [{"mode": "server", "interaction": [{"code": "batch"}],
                  "resource": [{"type": "Patient", "interaction": [{"code": "read"}]}]}],
    });
    let app =
        axum::Router::new().route("/fhir/metadata", axum::routing::get(move || async move { axum::Json(statement) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn servers_that_do_not_qualify_or_cannot_be_reached_are_refused_with_clear_problems(backend: Backend) {
    let app = app(backend).await;
    let detail = problem(
        set(&app, "FHIR_SERVER_URL", json!(stu3_server().await)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "fhir_server_unsuitable",
    );
    assert!(
        detail.contains("fhirVersion is 3.0.2") && detail.contains("Observation is not a supported resource type"),
        "{detail}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let detail = problem(
        set(&app, "FHIR_SERVER_URL", json!(format!("http://{closed}/fhir/R4"))).await,
        StatusCode::BAD_GATEWAY,
        "fhir_server_unreachable",
    );
    assert!(detail.contains("could not be reached"), "{detail}");

    // The outbound target policy: private networks and plain http elsewhere than loopback.
    for url in ["https://10.1.2.3/fhir", "http://fhir.example.com/R4", "https://169.254.169.254/"] {
        let detail = problem(
            set(&app, "FHIR_SERVER_URL", json!(url)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert!(detail.starts_with("FHIR_SERVER_URL: the target"), "{detail}");
    }
    problem(
        set(&app, "FHIR_SERVER_AUTH", json!("password")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    problem(check(&app).await, StatusCode::CONFLICT, "fhir_server_not_configured");

    // Nothing was stored; unsetting is always possible (the embedded store, as before).
    let settings = ok(set(&app, "FHIR_SERVER_URL", Value::Null).await);
    assert_eq!(settings["settings"]["FHIR_SERVER_URL"], Value::Null);
    assert!(FhirClient::for_project(&app.services, &app.project_id).await.unwrap().is_none());
    // Members may not.
    let member = app.member_token().await;
    let (status, _) = app.send("POST", "/v1/project/fhir-server/check", Some(&member), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Once a project has switched to its own server, connect asks that server for the patient
/// (its 404 ours, it down 503) and `/fhir/R4` points there instead of answering from Wearlink.
async fn a_project_on_its_own_server_connects_that_servers_patients_and_is_read_there(backend: Backend) {
    let Some(partner) =
        FhirPartner::start_with(&[("FHIR_AUTH", "bearer"), ("FHIR_BEARER_TOKEN", "platform-token-2")]).await
    else {
        return;
    };
    let app = app(backend).await;
    ok(set(&app, "FHIR_SERVER_URL", json!(partner.base)).await);
    ok(set(&app, "FHIR_SERVER_AUTH", json!("bearer")).await);
    ok(secret(&app, "FHIR_SERVER_TOKEN", "platform-token-2").await);
    app.configure("strava").await;
    let on_server = patient_on(&partner, "platform-token-2").await;
    let embedded = app.create_patient().await;

    // Configured but not switched: the embedded store is still the project's store.
    assert_eq!(app.connect("strava", json!({"patientId": embedded})).await.0, StatusCode::OK);
    problem(app.connect("strava", json!({"patientId": on_server})).await, StatusCode::NOT_FOUND, "not_found");

    let switched = app.send("POST", "/v1/project/fhir-store", Some(&app.admin), Some(json!({"store": "server"}))).await;
    assert!(switched.0.is_success(), "{}", switched.1);

    // Its data lives there now: the URL cannot move (or go) under it without a switch.
    let detail = problem(set(&app, "FHIR_SERVER_URL", json!(null)).await, StatusCode::CONFLICT, "conflict");
    assert!(detail.contains("switch to the embedded store first"), "{detail}");

    let (status, started) = app.connect("strava", json!({"patientId": on_server})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert!(started["authorizationUrl"].as_str().unwrap().contains("state="), "{started}");
    problem(app.connect("strava", json!({"patientId": embedded})).await, StatusCode::NOT_FOUND, "not_found");

    let member = app.member_token().await;
    for (method, path) in [
        ("GET", format!("/fhir/R4/Patient/{embedded}")),
        ("GET", format!("/fhir/R4/Endpoint?patient={on_server}")),
        ("GET", format!("/fhir/R4/Observation?patient={on_server}")),
        ("POST", "/fhir/R4/Patient".to_string()),
    ] {
        let body = (method == "POST").then(|| json!({"resourceType": "Patient"}));
        let (status, outcome) = app.send(method, &path, Some(&member), body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {path}: {outcome}");
        assert_eq!(support::outcome_code(&outcome, "not-supported"), "fhir_data_on_server");
        assert!(outcome.to_string().contains(&partner.base), "names the server: {outcome}");
    }
    let (status, statement) = app.get("/fhir/R4/metadata").await;
    assert_eq!(status, StatusCode::OK);
    assert!(statement["rest"][0]["documentation"].as_str().unwrap().contains("fhir_data_on_server"));

    // The server down: connect cannot know the patient, so it answers 503 and stores no state.
    drop(partner);
    let (status, body) = app.connect("strava", json!({"patientId": on_server})).await;
    assert_eq!(support::problem_code(&body, StatusCode::SERVICE_UNAVAILABLE), "fhir_server_unavailable");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!body.to_string().contains("platform-token-2"), "{body}");
}
