//! The real binary: the README's commands, and what `serve` writes to its log.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{stand_in, StandIn};

fn wearlink(dir: &std::path::Path, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_wearlink"))
        .args(args)
        .env_clear()
        .env("WEARLINK_DATA_DIR", dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("commands print JSON on stdout")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn an_operator_creates_a_project_serves_it_and_no_secret_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let created = wearlink(dir.path(), &["project", "create", "Clinic"]);
    let project = created["projectId"].as_str().unwrap().to_string();
    let admin = created["adminToken"].as_str().unwrap().to_string();
    let member = wearlink(dir.path(), &["token", "create", "--project", &project, "--role", "member"]);
    let member = member["token"].as_str().unwrap().to_string();
    assert_ne!(admin, member);
    let key = dir.path().join("master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let stand_in = StandIn::start().await;
    let port = free_port();
    let mut server =
        serve(dir.path(), port, stand_in.provider_env().into_iter().chain([("RUST_LOG".into(), "debug".into())]));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    wait_up(&http, &base).await;

    // The tokens the CLI printed work against the service on the same database.
    let put = |path: &str, body: Value| http.put(format!("{base}{path}")).bearer_auth(&admin).json(&body).send();
    assert!(put("/v1/project/settings/WEARABLE_STRAVA_ENABLED", json!({"enabled": true}))
        .await
        .unwrap()
        .status()
        .is_success());
    let credentials = json!({"clientId": stand_in::STRAVA_CLIENT_ID, "clientSecret": stand_in::STRAVA_CLIENT_SECRET, "webhookSecret": "webhook-secret-5150"});
    assert!(put("/v1/wearables/strava/credentials", credentials).await.unwrap().status().is_success());
    let patient: Value = http
        .post(format!("{base}/fhir/R4/Patient"))
        .bearer_auth(&member)
        .json(&json!({"resourceType": "Patient"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let started: Value = http
        .post(format!("{base}/v1/wearables/strava/connect"))
        .bearer_auth(&member)
        .json(&json!({"patientId": patient["id"], "redirectUri": "https://my.dashboard/done"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let state = started["state"].as_str().unwrap().to_string();
    let authorize = http.get(started["authorizationUrl"].as_str().unwrap()).send().await.unwrap();
    let callback = authorize.headers()["location"].to_str().unwrap().to_string();
    let code = support::query_map(&url::Url::parse(&callback).unwrap())["code"].clone();
    let done = http.get(&callback).send().await.unwrap();
    assert_eq!(done.status(), reqwest::StatusCode::SEE_OTHER);
    assert!(done.headers()["location"].to_str().unwrap().contains("status=connected"));

    // Stop it and read everything it logged.
    terminate(&server);
    let output = tokio::task::spawn_blocking(move || {
        server.wait().unwrap();
        let mut log = String::new();
        std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut log).unwrap();
        log
    })
    .await
    .unwrap();
    assert!(output.contains("/v1/wearables/strava/callback"), "the log has the requests: {output}");
    assert!(!output.contains('\u{1b}'), "no terminal colour codes in a log that is not a terminal");
    let master_key = std::fs::read_to_string(&key).unwrap();
    let mut secrets = vec![
        admin.clone(),
        member.clone(),
        state,
        code,
        master_key.trim().to_string(),
        stand_in::STRAVA_CLIENT_SECRET.to_string(),
        "webhook-secret-5150".to_string(),
    ];
    secrets.extend(stand_in.issued_tokens());
    for secret in secrets {
        assert!(!output.contains(&secret), "a secret reached the log: {secret}");
    }
}

/// `wearlink serve` on the data folder and a loopback port, its log piped.
fn serve(dir: &std::path::Path, port: u16, env: impl IntoIterator<Item = (String, String)>) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_wearlink"))
        .arg("serve")
        .env_clear()
        .env("WEARLINK_DATA_DIR", dir)
        .env("WEARLINK_BIND", format!("127.0.0.1:{port}"))
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wait_up(http: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve did not come up at {base}");
}

/// SIGTERM, so the server shuts down gracefully and flushes its log.
fn terminate(child: &std::process::Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

/// Stopping under load: a flood of webhooks, SIGTERM in the middle of it. The server stops within
/// 10 s (the container story's bound, inside Kubernetes' 30 s grace period), cleanly, with its
/// JSON log on stdout; restarted on the same folder, every event it acknowledged is there.
#[tokio::test]
async fn sigterm_in_a_flood_of_webhooks_stops_within_seconds_and_loses_no_acknowledged_event() {
    use futures::StreamExt;
    use hmac::Mac;

    let dir = tempfile::tempdir().unwrap();
    let created = wearlink(dir.path(), &["project", "create", "Clinic"]);
    let (project, admin) = (created["projectId"].as_str().unwrap(), created["adminToken"].as_str().unwrap());
    let port = free_port();
    let json_log = [("WEARLINK_LOG_FORMAT".to_string(), "json".to_string())];
    let server = serve(dir.path(), port, json_log.clone());
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_up(&http, &base).await;
    let put = |path: &str, body: Value| http.put(format!("{base}{path}")).bearer_auth(admin).json(&body).send();
    assert!(put("/v1/project/settings/WEARABLE_POLAR_ENABLED", json!({"enabled": true}))
        .await
        .unwrap()
        .status()
        .is_success());
    let credentials = json!({"clientId": "polar-client", "clientSecret": "polar-secret", "webhookSecret": "polar-key"});
    assert!(put("/v1/wearables/polar/credentials", credentials).await.unwrap().status().is_success());

    // Polar events signed as Polar signs them (HMAC-SHA256 of the body, hex), each its own entity.
    let url = format!("{base}/v1/wearables/polar/webhook/{project}");
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let flood = futures::stream::iter(0..900)
        .map({
            let (http, acknowledged) = (http.clone(), acknowledged.clone());
            move |i| {
                let (http, url, acknowledged) = (http.clone(), url.clone(), acknowledged.clone());
                async move {
                    let entity = format!("flood{i}");
                    let body = json!({"event": "EXERCISE", "user_id": 4242, "entity_id": entity,
                    "timestamp": "2026-11-25T10:15:00.000Z",
                    "url": format!("https://www.polaraccesslink.com/v3/exercises/{entity}")})
                    .to_string();
                    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"polar-key").unwrap();
                    mac.update(body.as_bytes());
                    let sent = http
                        .post(&url)
                        .header("Polar-Webhook-Event", "EXERCISE")
                        .header("Polar-Webhook-Signature", hex::encode(mac.finalize().into_bytes()))
                        .body(body)
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                        acknowledged.lock().unwrap().push(entity);
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>();
    let flood = tokio::spawn(flood);
    while acknowledged.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    terminate(&server);
    let stopping = std::time::Instant::now();
    let (status, stdout) = tokio::task::spawn_blocking(move || {
        let output = server.wait_with_output().unwrap();
        (output.status, String::from_utf8(output.stdout).unwrap())
    })
    .await
    .unwrap();
    let took = stopping.elapsed();
    flood.await.unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    let log: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON log lines on stdout")).collect();
    assert!(
        log.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("job leases released"))),
        "the shutdown is logged: {stdout}"
    );

    let mut server = serve(dir.path(), port, json_log);
    wait_up(&http, &base).await;
    let events: Value =
        http.get(format!("{base}/v1/wearables/events")).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
    terminate(&server);
    server.wait().unwrap();
    let stored: std::collections::HashSet<&str> =
        events["events"].as_array().unwrap().iter().filter_map(|e| e["object"]["entity_id"].as_str()).collect();
    let acknowledged = acknowledged.lock().unwrap();
    let lost: Vec<_> = acknowledged.iter().filter(|e| !stored.contains(e.as_str())).collect();
    assert!(acknowledged.len() >= 100 && lost.is_empty(), "{} acknowledged, lost: {lost:?}", acknowledged.len());
    assert!(stored.len() <= 900);
}

/// The README's quick start ("Using it"), replayed as written in a fresh folder against the
/// server its Set-up starts there: only `cargo run --release --` becomes the binary cargo built
/// and `localhost:8080` a free port. A command of the README that breaks fails here.
#[tokio::test]
async fn the_readmes_quick_start_runs_as_written_in_a_fresh_folder() {
    let readme = include_str!("../README.md");
    assert!(readme.contains("\n    cargo run --release -- serve\n"), "the Set-up still starts the server so");
    let section = &readme[readme.find("\n## Using it\n").expect("the README's quick start")..];
    let block = &section[section.find("```sh\n").expect("its commands") + 6..];
    let block = &block[..block.find("```").unwrap()];
    let port = free_port();
    let script = block
        .replace("cargo run --release --", "\"$WEARLINK_BIN\"")
        .replace("localhost:8080", &format!("127.0.0.1:{port}"));
    assert!(script.contains("$WEARLINK_BIN") && script.contains(&format!("127.0.0.1:{port}/fhir/R4/Patient")));
    let missing: Vec<_> = ["curl", "jq"]
        .into_iter()
        .filter(|tool| !Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()))
        .collect();
    if !missing.is_empty() {
        eprintln!("skipped: the README's quick start needs {missing:?} (.ci/run installs them)");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let mut server = Command::new(env!("CARGO_BIN_EXE_wearlink"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("WEARLINK_BIND", format!("127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_up(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;
    let ran = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", path)
        .env("WEARLINK_BIN", env!("CARGO_BIN_EXE_wearlink"))
        .output()
        .unwrap();
    terminate(&server);
    server.wait().unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "the quick start failed:\n{stdout}\n{}", String::from_utf8_lossy(&ran.stderr));
    assert!(stdout.contains(r#"{"revoked":true}"#), "{stdout}");
    assert!(stdout.contains(r#""authorizationUrl":"https://www.strava.com/oauth/authorize?"#), "{stdout}");
    assert!(dir.path().join("wearlink-data/wearlink.db").exists(), "the data lands in ./wearlink-data");
}
