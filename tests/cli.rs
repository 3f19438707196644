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
    let mut server = Command::new(env!("CARGO_BIN_EXE_wearlink"))
        .arg("serve")
        .env_clear()
        .env("WEARLINK_DATA_DIR", dir.path())
        .env("WEARLINK_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "debug")
        .envs(stand_in.provider_env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "serve did not come up");

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

/// SIGTERM, so the server shuts down gracefully and flushes its log.
fn terminate(child: &std::process::Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}
