//! The platform's side of outbound events: an HTTP receiver on 127.0.0.1 that checks every
//! delivery with the `standardwebhooks` crate (the standard's own Rust library, not our signing
//! code) under the secrets it was given, records what arrived, and answers as it is told: 2xx, a
//! scripted sequence of statuses, every other request failing, or never (sleeping past the
//! client's timeout).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::Value;
use standardwebhooks::Webhook;

/// How the receiver answers requests once its script (if any) is used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer this status at once.
    Answer(u16),
    /// Answer 500 to the first request, 200 to the second, 500 to the third, …: failing half the time.
    FailEveryOther,
    /// Never answer: hold the request this long (longer than the sender's timeout), then drop it.
    Hang(Duration),
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Arrival order at this receiver, from 0.
    pub seq: usize,
    pub method: String,
    pub path: String,
    pub webhook_id: Option<String>,
    /// `webhook-timestamp`, when it was an integer.
    pub timestamp: Option<i64>,
    /// `webhook-signature` as sent.
    pub signature: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    /// The body as JSON (`Null` when it was not JSON).
    pub json: Value,
    /// `json["type"]` ("" when absent).
    pub event_type: String,
    /// `json["data"]`.
    pub data: Value,
    /// Labels of the secrets under which `Webhook::verify` accepted it (signature and timestamp).
    pub verified_under: Vec<String>,
    /// Why `Webhook::verify` refused it, per secret label.
    pub verify_errors: Vec<(String, String)>,
    /// Each `v1,<sig>` entry of the signature header, with the label of the secret whose
    /// `Webhook::sign` (over the id, the header's timestamp and the body) gives it.
    pub entries: Vec<(String, Option<String>)>,
    /// The status answered; `None` when it was never answered (`Behaviour::Hang`).
    pub status: Option<u16>,
    pub received_at: Instant,
}

impl Delivery {
    pub fn verified(&self) -> bool {
        !self.verified_under.is_empty()
    }

    /// The labels of the secrets that made the signature entries, in header order.
    pub fn signed_by(&self) -> Vec<Option<String>> {
        self.entries.iter().map(|(_, by)| by.clone()).collect()
    }

    pub fn answered_2xx(&self) -> bool {
        matches!(self.status, Some(s) if (200..300).contains(&s))
    }
}

#[derive(Default)]
struct Inner {
    secrets: Vec<(String, String)>,
    script: VecDeque<u16>,
    behaviour: Option<Behaviour>,
    every_other: u64,
    deliveries: Vec<Delivery>,
    /// Refuse (401) what no known secret verifies.
    lenient: bool,
}

/// A receiver of Standard Webhooks on 127.0.0.1.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    /// A receiver answering 200 to every verified delivery.
    pub async fn start() -> Self {
        Self::start_with(Behaviour::Answer(200)).await
    }

    pub async fn start_with(behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver =
            Receiver { addr, inner: Arc::new(Mutex::new(Inner { behaviour: Some(behaviour), ..Default::default() })) };
        let app = Router::new().fallback(receive).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    /// The URL to register: `http://127.0.0.1:<port>/hooks/wearlink`.
    pub fn url(&self) -> String {
        self.url_at("/hooks/wearlink")
    }

    pub fn url_at(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Verify deliveries under this secret too (`whsec_…`, as the endpoint's answer gave it).
    pub fn add_secret(&self, label: &str, secret: &str) {
        Webhook::new(secret).unwrap_or_else(|e| panic!("secret {label} is not a Standard Webhooks secret: {e}"));
        self.inner.lock().unwrap().secrets.push((label.to_string(), secret.to_string()));
    }

    /// Answer what no secret verifies like anything else, instead of 401 (for the self-test).
    pub fn set_lenient(&self, lenient: bool) {
        self.inner.lock().unwrap().lenient = lenient;
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.inner.lock().unwrap().behaviour = Some(behaviour);
    }

    /// Answer these statuses to the next verified requests, in order, then behave as set.
    pub fn script(&self, statuses: &[u16]) {
        self.inner.lock().unwrap().script.extend(statuses.iter().copied());
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.lock().unwrap().deliveries.clone()
    }

    pub fn count(&self) -> usize {
        self.inner.lock().unwrap().deliveries.len()
    }

    pub fn of_type(&self, event_type: &str) -> Vec<Delivery> {
        self.deliveries().into_iter().filter(|d| d.event_type == event_type).collect()
    }

    pub fn with_id(&self, webhook_id: &str) -> Vec<Delivery> {
        self.deliveries().into_iter().filter(|d| d.webhook_id.as_deref() == Some(webhook_id)).collect()
    }

    /// Distinct webhook-ids received.
    pub fn ids(&self) -> std::collections::HashSet<String> {
        self.deliveries().into_iter().filter_map(|d| d.webhook_id).collect()
    }

    /// Distinct webhook-ids this receiver answered with a 2xx.
    pub fn ids_accepted(&self) -> std::collections::HashSet<String> {
        self.deliveries().into_iter().filter(|d| d.answered_2xx()).filter_map(|d| d.webhook_id).collect()
    }

    /// Waits (at most `within`) until `done` holds for what arrived; panics with a summary otherwise.
    pub async fn wait_until(&self, within: Duration, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.deliveries();
            if done(&all) {
                return all;
            }
            if Instant::now() >= deadline {
                panic!("receiver: no {what} within {within:?}; got {}", summary(&all));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (at most `within`) until at least `n` requests arrived; answers them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Delivery> {
        self.wait_until(within, &format!("{n} deliveries"), |all| all.len() >= n).await
    }

    /// Waits (at most `within`) until at least `n` deliveries of `event_type` arrived; answers those.
    pub async fn wait_for_type(&self, event_type: &str, n: usize, within: Duration) -> Vec<Delivery> {
        self.wait_until(within, &format!("{n} × {event_type}"), |all| {
            all.iter().filter(|d| d.event_type == event_type).count() >= n
        })
        .await;
        self.of_type(event_type)
    }

    /// Asserts nothing more than `n` requests arrive during `quiet`.
    pub async fn assert_stays_at(&self, n: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        let all = self.deliveries();
        assert_eq!(all.len(), n, "receiver: expected {n} deliveries, got {}", summary(&all));
    }

    /// Every request so far was a Standard Webhook that verified under one of the secrets.
    pub fn assert_all_verified(&self) {
        for d in self.deliveries() {
            assert!(
                d.verified(),
                "delivery #{} ({} {}) did not verify: {:?}, signature {:?}",
                d.seq,
                d.event_type,
                d.webhook_id.as_deref().unwrap_or("-"),
                d.verify_errors,
                d.signature
            );
        }
    }
}

/// A short account of what arrived, for failure messages.
pub fn summary(all: &[Delivery]) -> String {
    let mut out = format!("{} request(s)", all.len());
    for d in all.iter().take(20) {
        out.push_str(&format!(
            "\n  #{} {} id={} status={:?} verified_under={:?} errors={:?}",
            d.seq,
            if d.event_type.is_empty() { "<no type>" } else { &d.event_type },
            d.webhook_id.as_deref().unwrap_or("-"),
            d.status,
            d.verified_under,
            d.verify_errors
        ));
    }
    if all.len() > 20 {
        out.push_str("\n  …");
    }
    out
}

/// A fresh Standard Webhooks secret (`whsec_` + base64 of 32 random bytes), for the self-test.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Asserts `secret` has the standard's form: `whsec_` + base64 of 32 bytes.
pub fn assert_secret_format(secret: &str) {
    let encoded = secret.strip_prefix("whsec_").unwrap_or_else(|| panic!("secret without whsec_: {secret}"));
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("secret is not base64 after whsec_: {secret}: {e}"));
    assert_eq!(key.len(), 32, "a secret of 32 random bytes: {secret}");
    Webhook::new(secret).expect("the standard's library accepts it");
}

enum Answer {
    Now(u16),
    Never(Duration),
}

async fn receive(
    State(receiver): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let webhook_id = header(standardwebhooks::HEADER_WEBHOOK_ID);
    let timestamp = header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP).and_then(|t| t.parse::<i64>().ok());
    let signature = header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE);
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let secrets = receiver.inner.lock().unwrap().secrets.clone();

    let mut verified_under = Vec::new();
    let mut verify_errors = Vec::new();
    for (label, secret) in &secrets {
        match Webhook::new(secret).unwrap().verify(&body, &headers) {
            Ok(()) => verified_under.push(label.clone()),
            Err(e) => verify_errors.push((label.clone(), e.to_string())),
        }
    }
    // Which secret made which entry of the header (the standard allows several, space-separated).
    let entries: Vec<(String, Option<String>)> = signature
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let by = match (&webhook_id, timestamp) {
                (Some(id), Some(ts)) => secrets
                    .iter()
                    .find(|(_, secret)| {
                        Webhook::new(secret).unwrap().sign(id, ts, &body).ok().as_deref() == Some(entry)
                    })
                    .map(|(label, _)| label.clone()),
                _ => None,
            };
            (entry.to_string(), by)
        })
        .collect();

    let answer = {
        let mut inner = receiver.inner.lock().unwrap();
        let answer = if !inner.lenient && verified_under.is_empty() {
            Answer::Now(401)
        } else if let Some(status) = inner.script.pop_front() {
            Answer::Now(status)
        } else {
            match inner.behaviour.unwrap_or(Behaviour::Answer(200)) {
                Behaviour::Answer(status) => Answer::Now(status),
                Behaviour::FailEveryOther => {
                    inner.every_other += 1;
                    Answer::Now(if inner.every_other % 2 == 1 { 500 } else { 200 })
                }
                Behaviour::Hang(d) => Answer::Never(d),
            }
        };
        let seq = inner.deliveries.len();
        inner.deliveries.push(Delivery {
            seq,
            method: method.to_string(),
            path: uri.path().to_string(),
            webhook_id,
            timestamp,
            signature,
            content_type: header("content-type"),
            body: String::from_utf8_lossy(&body).into_owned(),
            event_type: json["type"].as_str().unwrap_or("").to_string(),
            data: json["data"].clone(),
            json,
            verified_under,
            verify_errors,
            entries,
            status: match answer {
                Answer::Now(s) => Some(s),
                Answer::Never(_) => None,
            },
            received_at: Instant::now(),
        });
        answer
    };
    match answer {
        Answer::Now(status) => {
            (StatusCode::from_u16(status).unwrap(), axum::Json(serde_json::json!({"received": true}))).into_response()
        }
        Answer::Never(d) => {
            tokio::time::sleep(d).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}
