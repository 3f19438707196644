//! Stories of an operator watching the service with Prometheus: `GET /metrics` counts what
//! happened, exactly, and no label gives away a patient, a project, a token or a state.

mod support;

on_both_backends!(
    a_connect_and_its_callback_each_move_their_counters_by_exactly_one,
    failures_refreshes_and_revocations_are_counted_by_their_outcome,
    webhook_events_are_counted_by_type_and_the_inbox_by_state,
    with_a_metrics_listener_the_api_listener_serves_no_metrics,
);

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::{query_map, Backend, TestApp, TestDatabase};

/// One sample of the exposition: its name, its labels, its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The Prometheus text format, read as Prometheus reads it (label values may hold `{`, `}`, `,`).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).expect("a sample has a name");
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let (mut key, mut value, mut in_value, mut escaped) = (String::new(), String::new(), false, false);
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match (in_value, escaped, c) {
                    (false, _, '}') => {
                        end = Some(i);
                        break;
                    }
                    (false, _, '=') => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        in_value = true;
                    }
                    (false, _, ',') => {}
                    (false, _, c) => key.push(c),
                    (true, false, '\\') => escaped = true,
                    (true, false, '"') => {
                        labels.insert(std::mem::take(&mut key), std::mem::take(&mut value));
                        in_value = false;
                    }
                    (true, true, c) => {
                        value.push(if c == 'n' { '\n' } else { c });
                        escaped = false;
                    }
                    (true, false, c) => value.push(c),
                }
            }
            rest = &inner[end.expect("labels end with }") + 1..];
        }
        let value = rest.trim().parse().unwrap_or_else(|_| panic!("a sample ends with its value: {line}"));
        samples.push(Sample { name, labels, value });
    }
    samples
}

struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of the one series with exactly these labels; 0 when it has not appeared yet.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let found: Vec<_> = self.0.iter().filter(|s| s.name == name && s.labels == wanted).collect();
        assert!(found.len() <= 1, "one series per label set: {found:?}");
        found.first().map_or(0.0, |s| s.value)
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }

    fn label_values(&self) -> impl Iterator<Item = &String> {
        self.0.iter().flat_map(|s| s.labels.values())
    }
}

async fn scrape_at(http: &reqwest::Client, url: &str) -> Scrape {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    Scrape(parse(&response.text().await.unwrap()))
}

async fn scrape(app: &TestApp) -> Scrape {
    scrape_at(&app.http, &app.url("/metrics")).await
}

const CONNECT: &str = "/v1/wearables/{provider}/connect";
const CALLBACK: &str = "/v1/wearables/{provider}/callback";

async fn a_connect_and_its_callback_each_move_their_counters_by_exactly_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let before = scrape(&app).await;

    let (status, started) =
        app.connect("strava", json!({"patientId": patient, "redirectUri": "https://my.dashboard/done"})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let state = started["state"].as_str().unwrap().to_string();
    let callback = app.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let code = query_map(&url::Url::parse(&callback).unwrap())["code"].clone();
    let (status, location, _) = app.callback(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(query_map(&location.unwrap())["status"], "connected");
    let after = scrape(&app).await;

    let moved = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    let strava = |outcome| [("provider", "strava"), ("outcome", outcome)];
    assert_eq!(moved("wearlink_connects_total", &strava("started")), 1.0);
    assert_eq!(moved("wearlink_callbacks_total", &strava("connected")), 1.0);
    let connect_route = [("method", "POST"), ("route", CONNECT), ("status", "200")];
    assert_eq!(moved("wearlink_http_requests_total", &connect_route), 1.0);
    assert_eq!(moved("wearlink_http_request_duration_seconds_count", &connect_route), 1.0);
    let callback_route = [("method", "GET"), ("route", CALLBACK), ("status", "303")];
    assert_eq!(moved("wearlink_http_requests_total", &callback_route), 1.0);
    let exchange = [("provider", "strava"), ("operation", "token_exchange"), ("status_class", "2xx")];
    assert_eq!(moved("wearlink_provider_calls_total", &exchange), 1.0, "the code exchange, as it went out");
    assert_eq!(moved("wearlink_provider_call_duration_seconds_count", &exchange), 1.0);
    // Nothing else of the flow went to the provider (Strava needs no registration).
    let calls =
        |s: &Scrape| -> f64 { s.0.iter().filter(|s| s.name == "wearlink_provider_calls_total").map(|s| s.value).sum() };
    assert_eq!(calls(&after) - calls(&before), 1.0);

    // Gauges read at scrape time: the inbox by state (dead included) and the database pool.
    assert_eq!(after.value("wearlink_webhook_inbox_events", &[("state", "dead")]), 0.0);
    assert!(after.value("wearlink_db_pool_max_connections", &[]) >= 1.0);
    assert!(after.value("wearlink_db_pool_connections", &[("state", "idle")]) >= 0.0);
    assert!(after.has("wearlink_db_pool_waiting"));
    assert_eq!(after.value("wearlink_sync_lost_leases_total", &[]), 0.0);

    // No label carries a patient, a project, a state, a code, a token or a query.
    let mut secrets = vec![patient.clone(), app.project_id.clone(), state, code];
    secrets.extend(app.stand_in.issued_tokens());
    for value in after.label_values() {
        assert!(!value.contains('?'), "a label with a query: {value}");
        for secret in &secrets {
            assert!(!value.contains(secret.as_str()), "a label carries {secret}: {value}");
        }
    }
    // Routes are templates, never the raw paths with their ids.
    let routes: Vec<_> = after.0.iter().filter_map(|s| s.labels.get("route")).collect();
    assert!(routes.iter().any(|r| *r == "/fhir/R4/Patient"));
    assert!(routes.iter().all(|r| r.starts_with('/') || *r == "unmatched"), "{routes:?}");
}

async fn failures_refreshes_and_revocations_are_counted_by_their_outcome(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let patient = app.create_patient().await;
    let before = scrape(&app).await;

    // A user who declines, and a forged state: each callback counted under its error code.
    app.stand_in.set_user_declines(true);
    let (status, _, _) = app
        .connect_and_approve("strava", json!({"patientId": patient, "redirectUri": "https://my.dashboard/done"}))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    app.stand_in.set_user_declines(false);
    let (status, _, _) = app.callback(&app.url("/v1/wearables/strava/callback?code=x&state=forged")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A connect for a patient that does not exist: counted under not_found.
    let (status, _) = app.connect("strava", json!({"patientId": "nobody"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A connection whose token expires soon is refreshed by the refresher, then disconnected.
    app.stand_in.set_initial_expires_in(60);
    let (status, _, _) = app.connect_and_approve("strava", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK);
    let report = wearlink::connections::refresh_due(&app.services, wearlink::time::now_ms()).await.unwrap();
    assert_eq!(report.refreshed, 1);
    let admin = app.admin.clone();
    let (status, _) =
        app.send("DELETE", &format!("/v1/wearables/strava/connections/{patient}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let after = scrape(&app).await;

    let moved = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    let strava = |outcome| [("provider", "strava"), ("outcome", outcome)];
    assert_eq!(moved("wearlink_callbacks_total", &strava("access_denied")), 1.0);
    assert_eq!(moved("wearlink_callbacks_total", &strava("invalid_state")), 1.0);
    assert_eq!(moved("wearlink_callbacks_total", &strava("connected")), 1.0);
    assert_eq!(moved("wearlink_connects_total", &strava("not_found")), 1.0);
    assert_eq!(moved("wearlink_connects_total", &strava("started")), 2.0);
    assert_eq!(moved("wearlink_refreshes_total", &strava("refreshed")), 1.0);
    assert_eq!(moved("wearlink_revocations_total", &strava("revoked")), 1.0);
    let call = |operation| [("provider", "strava"), ("operation", operation), ("status_class", "2xx")];
    assert_eq!(moved("wearlink_provider_calls_total", &call("token_refresh")), 1.0);
    assert_eq!(moved("wearlink_provider_calls_total", &call("revoke")), 1.0);
    let forged = [("method", "GET"), ("route", CALLBACK), ("status", "400")];
    assert_eq!(moved("wearlink_http_requests_total", &forged), 1.0);
}

async fn webhook_events_are_counted_by_type_and_the_inbox_by_state(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("strava").await;
    let admin = app.admin.clone();
    let (status, body) = app.send("POST", "/v1/wearables/strava/webhook-subscription", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let patient = app.create_patient().await;
    let (status, _, _) = app.connect_and_approve("strava", json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK);
    let athlete = app.stand_in.last_user_id().unwrap();
    let before = scrape(&app).await;

    let path = format!("/v1/wearables/strava/webhook/{}", app.project_id);
    let event = |owner: u64, object_type: &str| {
        json!({"aspect_type": "create", "event_time": 1764064000, "object_id": 9001, "object_type": object_type,
               "owner_id": owner, "subscription_id": support::stand_in::STRAVA_SUBSCRIPTION_ID, "updates": {}})
    };
    // An activity (and Strava's retry of it), one of an athlete we do not know, and a type no
    // provider documents.
    for body in
        [event(athlete, "activity"), event(athlete, "activity"), event(424242, "activity"), event(424242, "club")]
    {
        let (status, answer) = app.send("POST", &path, None, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let after = scrape(&app).await;

    let moved = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    let received = |event_type| [("provider", "strava"), ("event_type", event_type)];
    assert_eq!(moved("wearlink_webhook_events_received_total", &received("activity.create")), 3.0);
    assert_eq!(moved("wearlink_webhook_events_received_total", &received("other")), 1.0);
    let inbox = |s: &Scrape, state| s.value("wearlink_webhook_inbox_events", &[("state", state)]);
    assert_eq!(inbox(&after, "received"), 1.0, "the retry is stored once");
    assert_eq!(inbox(&after, "ignored"), 2.0, "events of unknown athletes are kept as ignored");
    assert_eq!(inbox(&after, "dead"), 0.0);
    let subscribe = [("provider", "strava"), ("operation", "create_subscription"), ("status_class", "2xx")];
    assert_eq!(after.value("wearlink_provider_calls_total", &subscribe), 1.0);
    for value in after.label_values() {
        assert!(!value.contains(&app.project_id) && !value.contains("club"), "{value}");
    }

    // The worker processes the event: it leaves `received`, and its provider calls are counted.
    app.sync().await;
    let processed = scrape(&app).await;
    assert_eq!(inbox(&processed, "received"), 0.0);
    let settled: f64 = ["synced", "done", "ignored"].into_iter().map(|s| inbox(&processed, s)).sum();
    assert_eq!(settled, 3.0);
    let data_calls: f64 = processed
        .0
        .iter()
        .filter(|s| s.name == "wearlink_provider_calls_total" && s.labels["provider"] == "strava")
        .filter(|s| ["list", "fetch"].contains(&s.labels["operation"].as_str()))
        .map(|s| s.value)
        .sum();
    assert!(data_calls >= 2.0, "the backfill's listing and the event's fetch: {data_calls}");
}

async fn with_a_metrics_listener_the_api_listener_serves_no_metrics(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let (port, metrics_port) = (free_port(), free_port());
    let mut server = Command::new(env!("CARGO_BIN_EXE_wearlink"))
        .arg("serve")
        .env_clear()
        .env("WEARLINK_DATA_DIR", db.dir.path())
        .env("WEARLINK_DATABASE_URL", &db.url)
        .env("WEARLINK_BIND", format!("127.0.0.1:{port}"))
        .env("WEARLINK_METRICS_BIND", format!("127.0.0.1:{metrics_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let (api, metrics) = (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{metrics_port}"));
    let mut up = false;
    for _ in 0..200 {
        if http.get(format!("{api}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "serve did not come up");
    assert_eq!(http.get(format!("{api}/healthz")).send().await.unwrap().status(), StatusCode::OK);

    // The API listener does not know /metrics: a 404 like any unknown path.
    let answer = http.get(format!("{api}/metrics")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");

    // The metrics listener serves them, counting the API listener's requests.
    let scraped = scrape_at(&http, &format!("{metrics}/metrics")).await;
    let healthz = [("method", "GET"), ("route", "/healthz"), ("status", "200")];
    assert!(scraped.value("wearlink_http_requests_total", &healthz) >= 1.0);
    let unmatched = [("method", "GET"), ("route", "unmatched"), ("status", "404")];
    assert_eq!(scraped.value("wearlink_http_requests_total", &unmatched), 1.0);
    assert!(scraped.value("wearlink_db_pool_max_connections", &[]) >= 1.0);
    // ... and nothing else.
    assert_eq!(http.get(format!("{metrics}/healthz")).send().await.unwrap().status(), StatusCode::NOT_FOUND);

    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    tokio::task::spawn_blocking(move || server.wait()).await.unwrap().unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
