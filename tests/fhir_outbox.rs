//! Stories of a project that writes into its own FHIR server (issue 20, parts 2–4): switched to
//! `server`, its Endpoints and synced data reach the partner server (`tests/fhir-partner`:
//! Medplum's engine, validating every write and checking references) through the outbox, once,
//! in order, with references resolved; through outages, refusals and Medplum's transaction caps;
//! and a project with data switched over copies it all.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::stand_in_data::strava_activity_json;
use support::{Backend, FhirPartner, FlakyProxy, Options, TestApp};
use wearlink::time::now_ms;

on_both_backends!(
    endpoints_and_backfilled_data_reach_the_server_once_with_their_references_resolved,
    with_medplum_caps_a_backfill_larger_than_eight_lands_whole_and_the_size_is_remembered,
    client_credentials_tokens_are_reused_by_the_outbox_and_renewed_once_after_the_server_forgets_them,
    private_key_jwt_tokens_sign_the_outbox_writes_and_are_fetched_once,
    a_server_down_mid_sync_gets_everything_once_when_it_is_back,
    a_refused_resource_is_a_dead_letter_that_stalls_nothing_and_replays_after_the_fix,
    a_server_that_takes_only_batches_gets_batches,
    switching_a_project_with_data_copies_it_all_once_and_reports_progress,
);

const DAY: i64 = 86_400;
const PLATFORM_TOKEN: &str = "platform-token-7";

/// The test app: allowed to reach the partner on loopback, outbox retries in milliseconds.
async fn app(backend: Backend) -> TestApp {
    let env = vec![
        ("WEARLINK_ALLOW_LOOPBACK_TARGETS".to_string(), "1".to_string()),
        ("WEARLINK_FHIR_OUTBOX_RETRY_MS".to_string(), "20".to_string()),
        ("WEARLINK_FHIR_OUTBOX_RETRY_MAX_MS".to_string(), "100".to_string()),
    ];
    TestApp::spawn_with(backend, Options { env, ..Options::default() }).await
}

/// The partner with bearer authentication and reference checks on, plus `env`.
async fn partner(env: &[(&str, &str)]) -> Option<FhirPartner> {
    let mut all = vec![("FHIR_AUTH", "bearer"), ("FHIR_BEARER_TOKEN", PLATFORM_TOKEN), ("FHIR_REF_CHECK", "1")];
    all.extend_from_slice(env);
    FhirPartner::start_with(&all).await
}

fn ok(answer: (StatusCode, Value)) -> Value {
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    answer.1
}

async fn set(app: &TestApp, key: &str, value: Value) -> Value {
    ok(app.send("PUT", &format!("/v1/project/settings/{key}"), Some(&app.admin), Some(json!({ "value": value }))).await)
}

async fn secret(app: &TestApp, key: &str, value: &str) {
    ok(app.send("PUT", &format!("/v1/project/secrets/{key}"), Some(&app.admin), Some(json!({ "value": value }))).await);
}

/// Points the project at `base` with the bearer token.
async fn point_at(app: &TestApp, base: &str) {
    set(app, "FHIR_SERVER_URL", json!(base)).await;
    set(app, "FHIR_SERVER_AUTH", json!("bearer")).await;
    secret(app, "FHIR_SERVER_TOKEN", PLATFORM_TOKEN).await;
}

async fn switch(app: &TestApp, store: &str) -> (StatusCode, Value) {
    app.send("POST", "/v1/project/fhir-store", Some(&app.admin), Some(json!({ "store": store }))).await
}

/// The platform's FHIR server as a client of it sees it (the platform's own token).
struct Platform<'a> {
    partner: &'a FhirPartner,
    token: String,
}

impl Platform<'_> {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}/{path}", self.partner.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.header("content-type", "application/fhir+json").body(body.to_string());
        }
        let answer = request.send().await.unwrap();
        let status = answer.status();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    async fn search(&self, query: &str) -> Vec<Value> {
        let (status, bundle) = self.call("GET", query, None).await;
        assert_eq!(status, StatusCode::OK, "{bundle}");
        bundle["entry"].as_array().map(|e| e.iter().map(|e| e["resource"].clone()).collect()).unwrap_or_default()
    }

    async fn count(&self, resource_type: &str) -> usize {
        self.search(&format!("{resource_type}?_count=1000")).await.len()
    }

    /// The server's copy of a Wearlink resource, found by the Wearlink identifier.
    async fn copy_of(&self, resource_type: &str, wearlink_id: &str) -> Value {
        let system = wearlink::fhir_server::outbox::identifier_system();
        let found = self.search(&format!("{resource_type}?identifier={system}|{wearlink_id}")).await;
        assert_eq!(found.len(), 1, "{resource_type} {wearlink_id} once on the server: {found:?}");
        found[0].clone()
    }

    async fn versions(&self, resource_type: &str, server_id: &str) -> usize {
        let (status, history) = self.call("GET", &format!("{resource_type}/{server_id}/_history"), None).await;
        assert_eq!(status, StatusCode::OK, "{history}");
        history["entry"].as_array().map_or(0, Vec::len)
    }

    /// A Patient with this id on the server (the platform's patients live there).
    async fn patient(&self, id: &str) {
        let (status, body) = self
            .call("PUT", &format!("Patient/{id}"), Some(json!({"resourceType": "Patient", "id": id, "active": true})))
            .await;
        assert!(status.is_success(), "{status} {body}");
    }
}

fn platform(partner: &FhirPartner) -> Platform<'_> {
    Platform { partner, token: PLATFORM_TOKEN.into() }
}

/// A patient of the platform: on its server (where a switched project's connect looks, and where
/// the copies' references point) and, before the switch, under the same id in Wearlink's store
/// (where connect looks until then).
async fn shared_patient(app: &TestApp, server: &Platform<'_>) -> String {
    let switched = wearlink::fhir_server::is_server_mode(&app.services, &app.project_id).await.unwrap();
    let id = if switched { format!("p-{}", uuid::Uuid::new_v4().simple()) } else { app.create_patient().await };
    server.patient(&id).await;
    id
}

/// Connects Strava for `patient` with `activities` in the backfill window; answers (endpoint, athlete).
async fn connect_strava(app: &TestApp, patient: &str, activities: u64) -> (String, u64) {
    app.configure("strava").await;
    let (status, _, page) = app.connect_and_approve("strava", json!({ "patientId": patient })).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let endpoint = page["endpointId"].as_str().unwrap().to_string();
    let athlete = app.stand_in.last_user_id().unwrap();
    let now = now_ms() / 1000;
    for i in 0..activities {
        let start = now - 20 * DAY + i as i64 * 3600;
        app.stand_in.add_strava_activity(athlete, strava_activity_json(7_000 + i, start, "Run"));
    }
    (endpoint, athlete)
}

/// Runs every due job (backfills, then the drains they queued) until none is left.
async fn settle(app: &TestApp) {
    for _ in 0..50 {
        if app.sync().await == 0 {
            return;
        }
    }
    panic!("jobs still due after 50 rounds");
}

/// The athlete records a ride (`activity` its id) and the connection is synced again.
async fn a_new_ride_synced(app: &TestApp, endpoint: &str, activity: u64) {
    let athlete = app.stand_in.last_user_id().unwrap();
    app.stand_in.add_strava_activity(athlete, strava_activity_json(activity, now_ms() / 1000 - DAY, "Ride"));
    resync(app, endpoint).await;
}

async fn resync(app: &TestApp, endpoint: &str) {
    let path = format!("/v1/wearables/connections/{endpoint}/sync");
    let (status, body) = app.send("POST", &path, Some(&app.admin), Some(json!({}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    settle(app).await;
}

/// Waits out the outbox's (millisecond) backoff and runs what came due.
async fn settle_after_backoff(app: &TestApp) {
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    settle(app).await;
}

/// Wearlink's working copy (a switched project's `/fhir/R4` points at its server), by a FHIR query.
async fn stored(app: &TestApp, query: &str) -> Vec<Value> {
    let (resource_type, params) = query.split_once('?').unwrap();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(params.as_bytes()).into_owned().collect();
    let query = wearlink::fhir::search::parse(resource_type, &params).unwrap();
    let (_, found) = app.services.store.search_resources(&app.project_id, &query).await.unwrap();
    found.into_iter().map(|r| r.body).collect()
}

async fn outbox(app: &TestApp, state: &str) -> Vec<Value> {
    let page = ok(app.get(&format!("/v1/fhir-outbox?state={state}")).await);
    page["entries"].as_array().unwrap().clone()
}

fn stat(stats: &Value, name: &str) -> u64 {
    stats[name].as_u64().unwrap_or_else(|| panic!("{name} in {stats}"))
}

/// The reference of a resource's source-endpoint extension.
fn source_endpoint(resource: &Value) -> String {
    let url = wearlink::fhir::draft::ext_source_endpoint();
    let extensions = resource["extension"].as_array().unwrap();
    let found = extensions.iter().find(|e| e["url"] == url.as_str()).unwrap_or_else(|| panic!("{resource}"));
    found["valueReference"]["reference"].as_str().unwrap().to_string()
}

/// Asserts that each stored Procedure and Observation of the patient is on the server once,
/// referencing the server's copies; answers how many.
async fn assert_on_server(app: &TestApp, server: &Platform<'_>, patient: &str, endpoint: &str) -> usize {
    let endpoint_copy = server.copy_of("Endpoint", endpoint).await;
    let endpoint_ref = format!("Endpoint/{}", endpoint_copy["id"].as_str().unwrap());
    let procedures = stored(app, &format!("Procedure?patient=Patient/{patient}")).await;
    let observations = stored(app, &format!("Observation?patient=Patient/{patient}")).await;
    assert!(!procedures.is_empty() && !observations.is_empty());
    let mut procedure_ids = std::collections::HashMap::new();
    for p in &procedures {
        let copy = server.copy_of("Procedure", p["id"].as_str().unwrap()).await;
        assert_eq!(copy["subject"]["reference"], format!("Patient/{patient}"), "the platform's patient");
        assert_eq!(source_endpoint(&copy), endpoint_ref, "the server's Endpoint");
        assert_eq!(copy["identifier"][0], p["identifier"][0], "the provider's identifier kept");
        procedure_ids.insert(format!("Procedure/{}", p["id"].as_str().unwrap()), copy["id"].clone());
    }
    for o in &observations {
        let copy = server.copy_of("Observation", o["id"].as_str().unwrap()).await;
        if let Some(part_of) = o["partOf"][0]["reference"].as_str() {
            let server_id = procedure_ids[part_of].as_str().unwrap();
            assert_eq!(copy["partOf"][0]["reference"], format!("Procedure/{server_id}"));
        }
        assert_eq!(copy["code"], o["code"]);
        assert_eq!(source_endpoint(&copy), endpoint_ref);
    }
    procedures.len() + observations.len()
}

async fn endpoints_and_backfilled_data_reach_the_server_once_with_their_references_resolved(backend: Backend) {
    let Some(partner) = partner(&[]).await else { return };
    let server = platform(&partner);
    let app = app(backend).await;
    point_at(&app, &partner.base).await;
    let view = ok(switch(&app, "server").await);
    assert_eq!(view["store"], "server");
    let (status, body) = app
        .send("PUT", "/v1/project/settings/FHIR_STORE", Some(&app.admin), Some(json!({ "value": "embedded" })))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "only the switch changes the mode: {body}");
    assert!(wearlink::fhir_server::is_server_mode(&app.services, &app.project_id).await.unwrap());

    let patient = shared_patient(&app, &server).await;
    let (endpoint, _) = connect_strava(&app, &patient, 3).await;
    settle(&app).await;

    // The Endpoint: valid (the partner validated it), the platform's Patient, no token material.
    let copy = server.copy_of("Endpoint", &endpoint).await;
    assert_eq!(copy["status"], "active");
    assert_eq!(copy["extension"][0]["valueReference"]["reference"], format!("Patient/{patient}"));
    let text = copy.to_string().to_lowercase();
    let token = app.stand_in.latest_access_token(app.stand_in.last_user_id().unwrap()).unwrap();
    assert!(!text.contains(&token.to_lowercase()), "no access token on the server");
    assert!(!text.contains("refresh") && !text.contains("access_token"), "{copy}");
    let written = assert_on_server(&app, &server, &patient, &endpoint).await;
    assert!(outbox(&app, "pending").await.is_empty());

    // Syncing the same data again writes nothing new there.
    let writes = stat(&partner.stats().await, "writes");
    resync(&app, &endpoint).await;
    assert_eq!(stat(&partner.stats().await, "writes"), writes, "unchanged data is not written again");
    assert_eq!(assert_on_server(&app, &server, &patient, &endpoint).await, written);

    // Reconnecting: the same Endpoint there, a new version, no duplicate.
    let server_id = copy["id"].as_str().unwrap().to_string();
    let (status, _, page) = app.connect_and_approve("strava", json!({ "patientId": patient })).await;
    assert_eq!((status, page["endpointId"].as_str()), (StatusCode::OK, Some(endpoint.as_str())));
    settle(&app).await;
    let again = server.copy_of("Endpoint", &endpoint).await;
    assert_eq!(again["id"], json!(server_id));
    assert_eq!(server.versions("Endpoint", &server_id).await, 2);

    // Disconnecting: the Endpoint is off there too.
    let (status, body) =
        app.send("DELETE", &format!("/v1/wearables/strava/connections/{patient}"), Some(&app.admin), None).await;
    assert!(status.is_success(), "{status} {body}");
    settle(&app).await;
    assert_eq!(server.copy_of("Endpoint", &endpoint).await["status"], "off");
}

async fn with_medplum_caps_a_backfill_larger_than_eight_lands_whole_and_the_size_is_remembered(backend: Backend) {
    let Some(partner) = partner(&[("FHIR_MEDPLUM_CAPS", "1")]).await else { return };
    let server = platform(&partner);
    let app = app(backend).await;
    point_at(&app, &partner.base).await;
    let (status, body) = app
        .send("PUT", "/v1/project/settings/FHIR_SERVER_BUNDLE_SIZE", Some(&app.admin), Some(json!({"value": 501})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    set(&app, "FHIR_SERVER_BUNDLE_SIZE", json!(40)).await;
    ok(switch(&app, "server").await);
    let patient = shared_patient(&app, &server).await;
    let (endpoint, _) = connect_strava(&app, &patient, 6).await;
    settle(&app).await;

    let written = assert_on_server(&app, &server, &patient, &endpoint).await;
    assert!(written > 8, "more than one capped transaction's worth: {written}");
    assert!(outbox(&app, "dead").await.is_empty() && outbox(&app, "pending").await.is_empty());
    let settings = wearlink::projects::stored_settings(&app.services, &app.project_id).await.unwrap();
    let learned = settings.iter().find(|(k, _)| k == "FHIR_SERVER_BUNDLE_LEARNED").map(|(_, v)| v.clone()).unwrap();
    let size = learned["size"].as_u64().unwrap();
    assert!((1..=8).contains(&size), "remembered for every instance: {learned}");
    let visible = ok(app.get("/v1/project/settings").await);
    assert!(visible["settings"].get("FHIR_SERVER_BUNDLE_LEARNED").is_none(), "internal: {visible}");

    // The next writes start at the remembered size: no refusal.
    let refused = stat(&partner.stats().await, "transactions");
    a_new_ride_synced(&app, &endpoint, 8_888).await;
    assert!(stat(&partner.stats().await, "transactions") > refused);
    assert_on_server(&app, &server, &patient, &endpoint).await;
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("wearlink_fhir_server_bundle_fallbacks_total"), "{metrics}");
    assert!(metrics.contains("wearlink_fhir_outbox_rows{state=\"pending\"} 0"), "{metrics}");
}

async fn client_credentials_tokens_are_reused_by_the_outbox_and_renewed_once_after_the_server_forgets_them(
    backend: Backend,
) {
    let Some(partner) = FhirPartner::start_with(&[
        ("FHIR_AUTH", "client-credentials"),
        ("FHIR_CLIENT_ID", "wearlink"),
        ("FHIR_CLIENT_SECRET", "s3cret-of-the-platform"),
        ("FHIR_REF_CHECK", "1"),
    ])
    .await
    else {
        return;
    };
    let app = app(backend).await;
    set(&app, "FHIR_SERVER_URL", json!(partner.base)).await;
    set(&app, "FHIR_SERVER_AUTH", json!("client_credentials")).await;
    secret(&app, "FHIR_SERVER_CLIENT_ID", "wearlink").await;
    secret(&app, "FHIR_SERVER_CLIENT_SECRET", "s3cret-of-the-platform").await;
    ok(switch(&app, "server").await);
    let token = platform_token(&partner).await;
    let server = Platform { partner: &partner, token };
    let patient = shared_patient(&app, &server).await;
    let before = partner.stats().await;
    let (endpoint, _) = connect_strava(&app, &patient, 2).await;
    settle(&app).await;
    assert_on_server(&app, &server, &patient, &endpoint).await;
    let after = partner.stats().await;
    assert_eq!(stat(&after, "tokenRequests"), stat(&before, "tokenRequests"), "the checked token is reused");

    // The server forgets its tokens: one 401, one new token, the write goes through.
    partner.revoke_tokens().await;
    let server = Platform { partner: &partner, token: platform_token(&partner).await };
    let before = partner.stats().await;
    a_new_ride_synced(&app, &endpoint, 9_999).await;
    let after = partner.stats().await;
    assert_eq!(stat(&after, "unauthorized") - stat(&before, "unauthorized"), 1, "{after}");
    assert_eq!(stat(&after, "tokenRequests") - stat(&before, "tokenRequests"), 1, "{after}");
    assert_on_server(&app, &server, &patient, &endpoint).await;
    assert!(outbox(&app, "pending").await.is_empty());
}

async fn private_key_jwt_tokens_sign_the_outbox_writes_and_are_fetched_once(backend: Backend) {
    let app = app(backend).await;
    set(&app, "FHIR_SERVER_AUTH", json!("private_key_jwt")).await;
    let jwks_url = app.url(&format!("/v1/projects/{}/jwks.json", app.project_id));
    let Some(partner) = FhirPartner::start_with(&[
        ("FHIR_AUTH", "private-key-jwt"),
        ("FHIR_CLIENT_ID", "wearlink-backend"),
        ("FHIR_JWKS_URL", &jwks_url),
        ("FHIR_REF_CHECK", "1"),
    ])
    .await
    else {
        return;
    };
    set(&app, "FHIR_SERVER_URL", json!(partner.base)).await;
    secret(&app, "FHIR_SERVER_CLIENT_ID", "wearlink-backend").await;
    ok(switch(&app, "server").await);
    // The test reads the server as Wearlink does (only Wearlink's key gets tokens there).
    let client = wearlink::fhir_server::FhirClient::for_project(&app.services, &app.project_id).await.unwrap().unwrap();
    let patient = format!("p-{}", uuid::Uuid::new_v4().simple());
    let put = client.put(&format!("Patient/{patient}"), &json!({"resourceType": "Patient", "id": patient})).await;
    assert!(put.unwrap().is_success());
    let (endpoint, _) = connect_strava(&app, &patient, 2).await;
    settle(&app).await;

    let system = wearlink::fhir_server::outbox::identifier_system();
    let found = client.get(&format!("Endpoint?identifier={system}|{endpoint}")).await.unwrap();
    assert_eq!(found.body["entry"].as_array().map(Vec::len), Some(1), "{}", found.body);
    let procedures = stored(&app, &format!("Procedure?patient=Patient/{patient}")).await;
    let on_server = client.get("Procedure?_count=100").await.unwrap();
    assert_eq!(on_server.body["entry"].as_array().map(Vec::len), Some(procedures.len()));
    let stats = partner.stats().await;
    assert_eq!(stat(&stats, "tokensIssued"), 1, "one token for the checks and every write: {stats}");
    assert!(stat(&stats, "transactions") >= 1, "{stats}");
    assert!(outbox(&app, "pending").await.is_empty() && outbox(&app, "dead").await.is_empty());
}

/// A token of the platform's own (the test reads the server with it).
async fn platform_token(partner: &FhirPartner) -> String {
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/oauth2/token", partner.origin()))
        .basic_auth("wearlink", Some("s3cret-of-the-platform"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().unwrap().to_string()
}

async fn a_server_down_mid_sync_gets_everything_once_when_it_is_back(backend: Backend) {
    let Some(partner) = partner(&[]).await else { return };
    let server = platform(&partner);
    let target = url::Url::parse(&partner.base).unwrap();
    let proxy = FlakyProxy::start(format!("127.0.0.1:{}", target.port().unwrap()).parse().unwrap()).await;
    let app = app(backend).await;
    point_at(&app, &format!("http://{}/fhir/R4", proxy.addr)).await;
    ok(switch(&app, "server").await);
    let patient = shared_patient(&app, &server).await;

    // Connected while the server answers (connect asks it for the patient), cut before the sync.
    let (endpoint, _) = connect_strava(&app, &patient, 4).await;
    proxy.cut();
    for _ in 0..4 {
        app.sync().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pending = outbox(&app, "pending").await;
    assert!(!pending.is_empty(), "kept while the server is down");
    assert!(pending[0]["attempts"].as_i64() >= Some(2), "retried with backoff: {pending:?}");
    assert!(pending[0]["lastError"].as_str().unwrap().contains("could not be reached"), "{pending:?}");
    assert_eq!(server.count("Procedure").await, 0);

    proxy.restore();
    settle_after_backoff(&app).await;
    assert!(outbox(&app, "pending").await.is_empty());
    let written = assert_on_server(&app, &server, &patient, &endpoint).await;
    assert_eq!(server.count("Procedure").await + server.count("Observation").await, written, "each once");
}

/// An HTTP proxy in front of the partner, as a platform's server that differs from it: it refuses
/// (400, an OperationOutcome) every request naming `refused` while that is set, and with
/// `batch_only` its CapabilityStatement offers `batch` and no `transaction`. It notes the type
/// of each Bundle it is sent.
struct PlatformProxy {
    base: String,
    refused: Arc<Mutex<Option<String>>>,
    batch_only: Arc<AtomicBool>,
    bundle_types: Arc<Mutex<Vec<String>>>,
}

async fn platform_proxy(partner: &FhirPartner) -> PlatformProxy {
    let proxy = PlatformProxy {
        base: String::new(),
        refused: Arc::default(),
        batch_only: Arc::default(),
        bundle_types: Arc::default(),
    };
    let state =
        (Arc::clone(&proxy.refused), Arc::clone(&proxy.batch_only), Arc::clone(&proxy.bundle_types), partner.origin());
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
            let (refused, batch_only, bundle_types, origin) = state.clone();
            async move {
                let refuse = refused.lock().unwrap().clone().is_some_and(|id| body.contains(&id));
                if refuse {
                    let outcome = json!({"resourceType": "OperationOutcome", "issue": [{
                        "severity": "error", "code": "business-rule", "diagnostics": "this platform refuses it"}]});
                    return (StatusCode::BAD_REQUEST, [("content-type", "application/fhir+json")], outcome.to_string());
                }
                if let Ok(bundle) = serde_json::from_str::<Value>(&body) {
                    if bundle["resourceType"] == "Bundle" {
                        bundle_types.lock().unwrap().push(bundle["type"].as_str().unwrap_or_default().to_string());
                    }
                }
                let mut request = reqwest::Client::new().request(method, format!("{origin}{uri}")).body(body);
                for name in ["authorization", "content-type", "accept", "prefer"] {
                    if let Some(v) = headers.get(name) {
                        request = request.header(name, v.to_str().unwrap());
                    }
                }
                let answer = request.send().await.unwrap();
                let status = answer.status();
                let mut text = answer.text().await.unwrap();
                if uri.path().ends_with("/metadata") && batch_only.load(Ordering::SeqCst) {
                    let mut statement: Value = serde_json::from_str(&text).unwrap();
                    for rest in statement["rest"].as_array_mut().unwrap() {
                        rest["interaction"].as_array_mut().unwrap().retain(|i| i["code"] != "transaction");
                    }
                    text = statement.to_string();
                }
                (status, [("content-type", "application/fhir+json")], text)
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    PlatformProxy { base: format!("http://{addr}/fhir/R4"), ..proxy }
}

async fn a_server_that_takes_only_batches_gets_batches(backend: Backend) {
    let Some(partner) = partner(&[]).await else { return };
    let server = platform(&partner);
    let proxy = platform_proxy(&partner).await;
    proxy.batch_only.store(true, Ordering::SeqCst);
    let app = app(backend).await;
    point_at(&app, &proxy.base).await;
    let report = ok(app.send("POST", "/v1/project/fhir-server/check", Some(&app.admin), None).await);
    assert_eq!(report["bundles"], "batch");
    ok(switch(&app, "server").await);
    let patient = shared_patient(&app, &server).await;
    let (endpoint, _) = connect_strava(&app, &patient, 2).await;
    settle(&app).await;

    assert_on_server(&app, &server, &patient, &endpoint).await;
    let types = proxy.bundle_types.lock().unwrap().clone();
    assert!(!types.is_empty() && types.iter().all(|t| t == "batch"), "{types:?}");
    assert!(outbox(&app, "pending").await.is_empty() && outbox(&app, "dead").await.is_empty());
}

async fn a_refused_resource_is_a_dead_letter_that_stalls_nothing_and_replays_after_the_fix(backend: Backend) {
    let Some(partner) = partner(&[]).await else { return };
    let server = platform(&partner);
    let proxy = platform_proxy(&partner).await;
    let app = app(backend).await;
    point_at(&app, &proxy.base).await;
    ok(switch(&app, "server").await);
    let patient = shared_patient(&app, &server).await;
    let (endpoint, _) = connect_strava(&app, &patient, 3).await;
    // Run the backfill into the store first (not the drain), then refuse one of its Observations.
    wearlink::sync::run_due_of(&app.services, now_ms(), &["backfill"]).await.unwrap();
    let observations = stored(&app, &format!("Observation?patient=Patient/{patient}")).await;
    let victim = observations.iter().find(|o| o["partOf"].is_null()).unwrap_or(&observations[0]).clone();
    let victim_id = victim["id"].as_str().unwrap().to_string();
    *proxy.refused.lock().unwrap() = Some(victim_id.clone());
    settle(&app).await;
    settle_after_backoff(&app).await;

    let dead = outbox(&app, "dead").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["resource"], format!("Observation/{victim_id}"));
    assert_eq!(dead[0]["outcome"]["issue"][0]["diagnostics"], "this platform refuses it");
    assert!(dead[0]["lastError"].as_str().unwrap().contains("400"), "{dead:?}");
    assert!(outbox(&app, "pending").await.is_empty(), "nothing else stalled");
    let procedures = stored(&app, &format!("Procedure?patient=Patient/{patient}")).await;
    assert_eq!(server.count("Procedure").await, procedures.len());
    assert_eq!(server.count("Observation").await, observations.len() - 1);

    // Members may not see or replay dead letters; strangers are not let in.
    let member = app.member_token().await;
    let (status, _) = app.send("GET", "/v1/fhir-outbox?state=dead", Some(&member), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.send("POST", "/v1/fhir-outbox/replay", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.send("POST", "/v1/fhir-outbox/999999/replay", Some(&app.admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The platform fixes its side; the replay writes it.
    *proxy.refused.lock().unwrap() = None;
    let id = dead[0]["id"].as_str().unwrap();
    let (status, body) = app.send("POST", &format!("/v1/fhir-outbox/{id}/replay"), Some(&app.admin), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    settle(&app).await;
    assert!(outbox(&app, "dead").await.is_empty());
    assert_on_server(&app, &server, &patient, &endpoint).await;
    let (status, body) = app.send("POST", "/v1/fhir-outbox/replay?state=dead", Some(&app.admin), None).await;
    assert_eq!((status, &body["replayed"]), (StatusCode::ACCEPTED, &json!(0)));
}

async fn switching_a_project_with_data_copies_it_all_once_and_reports_progress(backend: Backend) {
    let Some(partner) = partner(&[]).await else { return };
    let server = platform(&partner);
    let app = app(backend).await;
    // Embedded first: the data, and for now the patient, only in Wearlink.
    let patient = app.create_patient().await;
    let (endpoint, _) = connect_strava(&app, &patient, 3).await;
    settle(&app).await;
    assert_eq!(server.count("Endpoint").await, 0);
    let view = ok(app.get("/v1/project/fhir-store").await);
    assert_eq!((view["store"].as_str(), &view["switch"]), (Some("embedded"), &Value::Null));

    // The switch refuses a server that is not configured.
    let (status, body) = switch(&app, "server").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("fhir_server_incomplete")));
    let (status, _) = switch(&app, "elsewhere").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    point_at(&app, &partner.base).await;
    // The copies would reference a patient the server does not have: refused, nothing moved.
    let (status, body) = switch(&app, "server").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(&format!("Patient/{patient}")), "{body}");
    assert_eq!(ok(app.get("/v1/project/fhir-store").await)["store"], "embedded");
    server.patient(&patient).await;
    let view = ok(switch(&app, "server").await);
    let total = view["switch"]["total"].as_i64().unwrap();
    let procedures = stored(&app, &format!("Procedure?patient=Patient/{patient}")).await.len();
    let observations = stored(&app, &format!("Observation?patient=Patient/{patient}")).await.len();
    assert_eq!(total as usize, 1 + procedures + observations, "the Endpoint and the data, not the Patient");
    assert_eq!((view["switch"]["pending"].as_i64(), view["switch"]["done"].as_i64()), (Some(total), Some(0)));
    let (status, body) = switch(&app, "embedded").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "still copying");

    settle(&app).await;
    let view = ok(app.get("/v1/project/fhir-store").await);
    assert_eq!(view["store"], "server");
    assert_eq!((view["switch"]["done"].as_i64(), view["switch"]["pending"].as_i64()), (Some(total), Some(0)));
    assert!(view["switch"]["finishedAt"].is_i64(), "{view}");
    let written = assert_on_server(&app, &server, &patient, &endpoint).await;
    assert_eq!(server.count("Procedure").await + server.count("Observation").await, written, "once each");

    // The same switch again changes nothing; back to embedded stops the writes there.
    let writes = stat(&partner.stats().await, "writes");
    ok(switch(&app, "server").await);
    settle(&app).await;
    assert_eq!(stat(&partner.stats().await, "writes"), writes);
    assert_eq!(ok(switch(&app, "embedded").await)["store"], "embedded");
    a_new_ride_synced(&app, &endpoint, 4_242).await;
    assert_eq!(stat(&partner.stats().await, "writes"), writes, "embedded again: nothing sent");
    assert!(stored(&app, &format!("Procedure?patient=Patient/{patient}")).await.len() > procedures);
}
