//! Writing into the project's own FHIR server (issue 20, parts 2–4): the drain of the outbox, the
//! switch between the embedded store and the server, and the dead letters.
//!
//! Wearlink keeps its working copy in its own store in both modes (change detection, the CGM
//! summary, switching back need it). In server mode every new version a write produces is also
//! put in the project's outbox, in the transaction of the write (`store::outbox`). One drain job
//! per project (the job's unique key) sends the rows in order: the current body of each resource,
//! several pending versions written once, as conditional updates on the Wearlink identifier in
//! `transaction` Bundles (or `batch`, or one PUT each when the server refuses bundles of a size).
//! References to resources written in the same Bundle point at their `fullUrl`, to those written
//! before at the server's id (learned from each answer). See docs/fhir-server.md.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};

use super::{FhirClient, FhirResponse, FhirServerError, ServerConfig};
use crate::error::{Error, Result};
use crate::projects::{self, Principal};
use crate::store::outbox::{
    CurrentResource, DrainResults, OutboxFilter, OutboxRow, SwitchOutcome, SwitchRecord, DEAD, MODE_EMBEDDED,
    MODE_SERVER, MODE_SETTING, PENDING,
};
use crate::store::sync::{Job, JobOutcome};
use crate::store::Lease;
use crate::time::now_ms;
use crate::Services;

/// Resources in one Bundle (`1..=500`; 8 by default: Medplum's cap for transactions with
/// conditional entries). A server that refuses a size gets smaller Bundles.
pub const BUNDLE_SIZE_SETTING: &str = "FHIR_SERVER_BUNDLE_SIZE";
pub const DEFAULT_BUNDLE_SIZE: usize = 8;
pub const MAX_BUNDLE_SIZE: usize = 500;
/// Reserved (the settings API refuses it): what the drain learned of the server, so every
/// instance and restart uses it: `{server, for, size, bundles}`.
pub const LEARNED_SETTING: &str = "FHIR_SERVER_BUNDLE_LEARNED";

/// Rows read per pass of the drain.
const WINDOW: i64 = 500;

/// The identifier system of the Wearlink identifier every written resource carries: the
/// conditional update's key. Wearlink ids are unique per project (derived from the project and
/// the provider's identifier; Endpoints are UUIDs), where a provider's identifier is not: two
/// projects writing into one server, or two patients connecting one provider account, would
/// otherwise update each other's resources.
pub fn identifier_system() -> String {
    format!("{}/sid/resource", crate::fhir::BASE)
}

/// Retries of the drain; from config.
#[derive(Clone, Debug)]
pub struct OutboxPolicy {
    /// The first retry's wait; doubled each attempt (with jitter) up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Attempts of a write the server answers 404, 409 or 412 (conditional write conflicts)
    /// before it is a dead letter.
    pub conflict_attempts: i64,
}

impl Default for OutboxPolicy {
    fn default() -> Self {
        Self { retry_base: Duration::from_secs(1), retry_max: Duration::from_secs(300), conflict_attempts: 5 }
    }
}

impl OutboxPolicy {
    /// When attempt `attempts + 1` is due: exponential backoff with jitter, at least `at_least`.
    fn next_attempt(&self, attempts: i64, at_least: Option<Duration>, now: i64) -> i64 {
        let base = self.retry_base.as_millis() as f64;
        let wait = (base * 2f64.powi(attempts.clamp(0, 30) as i32)).min(self.retry_max.as_millis() as f64);
        let jittered = wait * rand::thread_rng().gen_range(0.5..=1.0);
        let floor = at_least.map_or(0.0, |d| d.as_millis() as f64);
        now + jittered.max(floor) as i64
    }
}

/// Whether the project writes into its own FHIR server (read from the cached settings).
pub async fn is_server_mode(services: &Services, project_id: &str) -> Result<bool> {
    let settings = projects::stored_settings(services, project_id).await?;
    Ok(settings.iter().any(|(k, v)| k == MODE_SETTING && v.as_str() == Some(MODE_SERVER)))
}

/// Validates `FHIR_SERVER_BUNDLE_SIZE` (a whole number 1..=500, or null to unset it).
pub fn prepare_bundle_size(value: Option<&Value>) -> Result<Value> {
    let size = match value {
        None | Some(Value::Null) => return Ok(Value::Null),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(Value::Null),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    match size {
        Some(n) if (1..=MAX_BUNDLE_SIZE as u64).contains(&n) => Ok(Value::from(n)),
        _ => Err(Error::Invalid(format!("{BUNDLE_SIZE_SETTING} takes {{\"value\": 1..{MAX_BUNDLE_SIZE}}}"))),
    }
}

/// How Bundles go to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Transaction,
    Batch,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Transaction => "transaction",
            Mode::Batch => "batch",
        }
    }
}

/// One resource to write: its newest pending row and its current body.
#[derive(Clone, Debug)]
struct Item {
    resource_type: String,
    id: String,
    /// The highest pending sequence number: rows up to it are settled by this write.
    up_to: i64,
    attempts: i64,
    body: Value,
}

impl Item {
    fn key(&self) -> (String, String) {
        (self.resource_type.clone(), self.id.clone())
    }
}

/// What became of one resource's write.
#[derive(Clone, Debug)]
enum Sent {
    Written(Option<String>),
    /// Server unavailable, rate limited, timed out, token refused again: the whole pass stops.
    Unavailable {
        error: String,
        retry_after: Option<Duration>,
    },
    /// 404 / 409 / 412: retried a few times.
    Conflict(String),
    /// Refused for good: a dead letter with the server's OperationOutcome.
    Refused {
        error: String,
        outcome: Option<Value>,
    },
    /// Not sent: it references a resource that is not on the server yet (pending, retried or a
    /// dead letter). Sent with Wearlink's id, the reference would dangle for good; so it waits,
    /// with backoff and no attempt cap, until that one is written (a replayed dead letter too).
    Waiting(String),
}

struct Drain<'a> {
    services: &'a Services,
    client: FhirClient<'a>,
    project_id: String,
    server: String,
    mode: Mode,
    size: usize,
    configured: usize,
    /// Server ids learned (this pass and before).
    known: HashMap<(String, String), String>,
    learned_changed: bool,
}

/// Runs the project's drain job: sends every due row, then ends the job (done, or parked until
/// the next retry is due). Answers false when its lease was lost.
pub async fn drain(services: &Services, job: &Job, lease: &Lease) -> Result<bool> {
    let project_id = job.project_id.clone();
    let config = ServerConfig::load(services, &project_id).await?;
    let Some(url) = config.url.clone().filter(|_| config.missing().is_empty()) else {
        // Nothing can be sent until the configuration is complete again: the rows wait.
        let due = services.config.fhir_outbox.next_attempt(job.attempts, None, now_ms());
        let error = "the project's FHIR server configuration is incomplete".to_string();
        return Ok(services.store.complete_job(lease, &job.id, &JobOutcome::Retry { due_at: due, error }, &[]).await?);
    };
    let server = url.as_str().trim_end_matches('/').to_string();
    let settings = projects::stored_settings(services, &project_id).await?;
    let configured = settings
        .iter()
        .find(|(k, _)| k == BUNDLE_SIZE_SETTING)
        .and_then(|(_, v)| v.as_u64())
        .map_or(DEFAULT_BUNDLE_SIZE, |n| n as usize);
    let learned = settings
        .iter()
        .find(|(k, _)| k == LEARNED_SETTING)
        .map(|(_, v)| v.clone())
        .filter(|l| l["server"].as_str() == Some(server.as_str()) && l["for"].as_u64() == Some(configured as u64));
    let client = FhirClient::new(services, &project_id, config);
    let (mode, size, learned_changed) = match &learned {
        Some(l) => {
            let mode = if l["bundles"] == "batch" { Mode::Batch } else { Mode::Transaction };
            (mode, l["size"].as_u64().map_or(configured, |n| n as usize).clamp(1, configured), false)
        }
        None => {
            // Once per server and size: a server without transactions gets batches from the start.
            // Unread (the server is down), transactions until it refuses them; nothing is learned.
            let bundles = client.metadata().await.ok().and_then(|s| super::capability::qualify(&s).ok());
            let mode = match bundles.as_ref().map(|q| q.bundles) {
                Some("batch") => Mode::Batch,
                _ => Mode::Transaction,
            };
            (mode, configured, bundles.is_some())
        }
    };
    let mut drain = Drain {
        services,
        client,
        project_id: project_id.clone(),
        server,
        mode,
        size,
        configured,
        known: HashMap::new(),
        learned_changed,
    };
    let (held, not_before) = drain.run(job, lease).await?;
    if drain.learned_changed {
        let learned = json!({
            "server": drain.server, "for": drain.configured, "size": drain.size, "bundles": drain.mode.as_str()
        });
        projects::put_internal_setting(services, &project_id, LEARNED_SETTING, &learned).await?;
    }
    if !held {
        return Ok(false);
    }
    Ok(services.store.finish_drain(lease, &job.id, &project_id, now_ms(), not_before).await?)
}

impl<'a> Drain<'a> {
    /// Passes over the due rows until none is left or the server is unavailable; answers false
    /// when the lease was lost (nothing more is sent), and, when the server is unavailable, when
    /// to try again (the rows not tried yet wait for it too, rather than hammer a server that is
    /// down).
    async fn run(&mut self, job: &Job, lease: &Lease) -> Result<(bool, Option<i64>)> {
        let store = &self.services.store;
        loop {
            let rows = store.due_outbox(&self.project_id, now_ms(), WINDOW).await?;
            if rows.is_empty() {
                return Ok((true, None));
            }
            let (items, gone) = self.items(&rows).await?;
            if !gone.is_empty() {
                // Deleted from the store since (nothing to write): settled.
                let results = DrainResults { written: gone, ..DrainResults::default() };
                let lease = renewed(self.services, lease);
                if !store.record_outbox(&lease, &job.id, &self.project_id, &self.server, &results, now_ms()).await? {
                    return Ok((false, None));
                }
            }
            // The server ids of what these resources are and what they reference.
            let mut refs: Vec<(String, String)> = items.iter().map(Item::key).collect();
            for item in &items {
                references_of(&item.body, &mut refs);
            }
            refs.retain(|r| r.0 != "Patient" && !self.known.contains_key(r));
            refs.sort();
            refs.dedup();
            self.known.extend(store.server_ids(&self.project_id, &self.server, &refs).await?);
            let in_window: HashSet<(String, String)> = items.iter().map(Item::key).collect();
            let mut found = DrainResults::default();
            let unknown: Vec<(String, String)> =
                refs.iter().filter(|r| !self.known.contains_key(*r) && !in_window.contains(*r)).cloned().collect();
            for r in &unknown {
                // Written before without its id coming back (or by an older drain): ask the server.
                if let Some(server_id) = self.lookup(r).await {
                    self.known.insert(r.clone(), server_id.clone());
                    found.server_ids.push((r.0.clone(), r.1.clone(), server_id));
                }
            }
            if !found.server_ids.is_empty() {
                let lease = renewed(self.services, lease);
                if !store.record_outbox(&lease, &job.id, &self.project_id, &self.server, &found, now_ms()).await? {
                    return Ok((false, None));
                }
            }
            let mut start = 0;
            while start < items.len() {
                let end = self.chunk_end(&items, start);
                let chunk = &items[start..end];
                let sent = self.send_resolved(chunk).await;
                let unavailable = sent.iter().any(|s| matches!(s, Sent::Unavailable { .. }));
                let results = self.results(chunk, &sent);
                let lease = renewed(self.services, lease);
                if !store.record_outbox(&lease, &job.id, &self.project_id, &self.server, &results, now_ms()).await? {
                    return Ok((false, None));
                }
                if unavailable {
                    let next = results.retry.iter().map(|r| r.3).min();
                    return Ok((true, next));
                }
                start = end;
            }
        }
    }

    /// The rows as resources to write, in an order where what a resource references (within
    /// the window) comes first; and the resources no longer stored `(type, id, up to seq)`.
    async fn items(&self, rows: &[OutboxRow]) -> Result<(Vec<Item>, Vec<(String, String, i64)>)> {
        let mut order: Vec<(String, String)> = Vec::new();
        let mut newest: HashMap<(String, String), (i64, i64)> = HashMap::new();
        for row in rows {
            let key = (row.resource_type.clone(), row.resource_id.clone());
            let entry = newest.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                (row.seq, row.attempts)
            });
            entry.0 = entry.0.max(row.seq);
            entry.1 = entry.1.max(row.attempts);
        }
        let current: HashMap<(String, String), CurrentResource> = self
            .services
            .store
            .current_resources(&self.project_id, &order)
            .await?
            .into_iter()
            .map(|r| ((r.resource_type.clone(), r.id.clone()), r))
            .collect();
        let mut items = Vec::new();
        let mut gone = Vec::new();
        for key in order {
            let (up_to, attempts) = newest[&key];
            match current.get(&key) {
                Some(resource) => {
                    items.push(Item { resource_type: key.0, id: key.1, up_to, attempts, body: resource.body.clone() })
                }
                None => gone.push((key.0, key.1, up_to)),
            }
        }
        Ok((dependencies_first(items), gone))
    }

    fn results(&self, chunk: &[Item], sent: &[Sent]) -> DrainResults {
        let policy = &self.services.config.fhir_outbox;
        let now = now_ms();
        let mut results = DrainResults::default();
        for (item, outcome) in chunk.iter().zip(sent) {
            let (t, id) = item.key();
            match outcome {
                Sent::Written(server_id) => {
                    results.written.push((t.clone(), id.clone(), item.up_to));
                    if let Some(server_id) = server_id {
                        results.server_ids.push((t, id, server_id.clone()));
                    }
                }
                Sent::Unavailable { error, retry_after } => {
                    let next = policy.next_attempt(item.attempts, *retry_after, now);
                    results.retry.push((t, id, item.up_to, next, error.clone()));
                }
                Sent::Conflict(error) if item.attempts + 1 < policy.conflict_attempts => {
                    let next = policy.next_attempt(item.attempts, None, now);
                    results.retry.push((t, id, item.up_to, next, error.clone()));
                }
                Sent::Conflict(error) => results.dead.push((t, id, item.up_to, error.clone(), None)),
                Sent::Waiting(error) => {
                    let next = policy.next_attempt(item.attempts, None, now);
                    results.retry.push((t, id, item.up_to, next, error.clone()));
                }
                Sent::Refused { error, outcome } => {
                    results.dead.push((t, id, item.up_to, error.clone(), outcome.clone()))
                }
            }
        }
        let written = results.written.len() as u64;
        self.services.metrics.fhir_writes.inc_by(written);
        results
    }

    /// Sends `items` (at most `size`): one Bundle, smaller ones when the server refuses its size,
    /// halves when it refuses its content (to find the resource it refuses), one PUT each at
    /// size 1. Answers one outcome per item, in order.
    /// `send` for the items whose references all resolve (to the server's ids, or, in a
    /// transaction, to entries sent with them); the others wait.
    async fn send_resolved(&mut self, chunk: &[Item]) -> Vec<Sent> {
        let mut waiting: Vec<Option<String>> = vec![None; chunk.len()];
        // Until nothing changes: an entry that waits cannot be what another one resolves to.
        loop {
            let sendable: HashSet<(String, String)> = chunk
                .iter()
                .zip(&waiting)
                .filter(|(_, w)| w.is_none() && self.mode == Mode::Transaction)
                .map(|(item, _)| item.key())
                .collect();
            let mut changed = false;
            for (item, wait) in chunk.iter().zip(waiting.iter_mut()) {
                if wait.is_some() {
                    continue;
                }
                let mut refs = Vec::new();
                references_of(&item.body, &mut refs);
                if let Some((t, id)) =
                    refs.into_iter().find(|r| r.0 != "Patient" && !self.known.contains_key(r) && !sendable.contains(r))
                {
                    *wait = Some(format!("waits for {t}/{id} to be on the FHIR server first"));
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let ready: Vec<Item> =
            chunk.iter().zip(&waiting).filter(|(_, w)| w.is_none()).map(|(item, _)| item.clone()).collect();
        let mut sent = if ready.is_empty() { Vec::new() } else { self.send(&ready).await }.into_iter();
        waiting
            .into_iter()
            .map(|wait| match wait {
                Some(reason) => Sent::Waiting(reason),
                None => sent.next().expect("one outcome per item sent"),
            })
            .collect()
    }

    /// The server's id of a Wearlink resource, found by its Wearlink identifier; `None` when it
    /// is not there (or the server could not say: the reference then waits).
    async fn lookup(&self, (resource_type, id): &(String, String)) -> Option<String> {
        let token = format!("{}|{id}", identifier_system());
        let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
        let answer = self.client.get(&format!("{resource_type}?identifier={encoded}&_count=2")).await.ok()?;
        let entries = answer.body["entry"].as_array().filter(|_| answer.is_success())?;
        match entries.as_slice() {
            [one] => one["resource"]["id"].as_str().map(str::to_string),
            _ => None,
        }
    }

    async fn send(&mut self, items: &[Item]) -> Vec<Sent> {
        if items.len() > self.size {
            return Box::pin(self.send_in_chunks(items)).await;
        }
        if items.len() == 1 || self.size == 1 {
            let mut sent = Vec::with_capacity(items.len());
            for item in items {
                let outcome = self.put(item).await;
                let stop = matches!(outcome, Sent::Unavailable { .. });
                sent.push(outcome.clone());
                if stop {
                    // The server is unavailable: the rest waits too.
                    sent.resize(items.len(), outcome);
                    break;
                }
            }
            return sent;
        }
        let bundle = self.bundle(items);
        self.services
            .metrics
            .fhir_requests
            .get_or_create(&crate::metrics::FhirRequestLabels { kind: self.mode.as_str() })
            .inc();
        let answer = match self.client.post("", &bundle).await {
            Ok(answer) => answer,
            Err(e) => return unavailable_all(items.len(), e.to_string(), None),
        };
        if answer.is_success() {
            return self.entries(items, &answer);
        }
        let what = format!("POST {} Bundle", self.mode.as_str());
        if let Some(sent) = unavailable(&answer, &what) {
            return vec![sent; items.len()];
        }
        let text = outcome_text(&answer.body).to_ascii_lowercase();
        if is_size_refusal(answer.status, &text) {
            // Halve, remember, and send these again in the smaller size.
            self.size = (items.len() / 2).max(1);
            self.learned_changed = true;
            self.services.metrics.fhir_fallbacks.inc();
            tracing::info!(project = %self.project_id, size = self.size, "the FHIR server refused the bundle size; smaller bundles from now on");
            return Box::pin(self.send_in_chunks(items)).await;
        }
        if self.mode == Mode::Transaction && is_unsupported(answer.status, &text) {
            self.mode = Mode::Batch;
            self.learned_changed = true;
            self.services.metrics.fhir_fallbacks.inc();
            tracing::info!(project = %self.project_id, "the FHIR server refused transactions; batches from now on");
            return Box::pin(self.send(items)).await;
        }
        // One entry refused fails a whole transaction: halves isolate it, the rest goes through.
        let (left, right) = items.split_at(items.len() / 2);
        let mut sent = Box::pin(self.send(left)).await;
        if sent.iter().any(|s| matches!(s, Sent::Unavailable { .. })) {
            let first = sent.iter().find(|s| matches!(s, Sent::Unavailable { .. })).cloned().expect("found");
            sent.resize(items.len(), first);
            return sent;
        }
        sent.extend(Box::pin(self.send(right)).await);
        sent
    }

    async fn send_in_chunks(&mut self, items: &[Item]) -> Vec<Sent> {
        let mut sent = Vec::with_capacity(items.len());
        let mut start = 0;
        while start < items.len() {
            let end = self.chunk_end(items, start);
            let part = self.send(&items[start..end]).await;
            let stop = part.iter().find(|s| matches!(s, Sent::Unavailable { .. })).cloned();
            sent.extend(part);
            if let Some(outcome) = stop {
                sent.resize(items.len(), outcome);
                return sent;
            }
            start = end;
        }
        sent
    }

    /// Where the Bundle that starts at `start` ends: `size` items, and in a batch (whose entries
    /// the server handles independently, so they cannot reference each other) before the first
    /// item that references one already in it.
    fn chunk_end(&self, items: &[Item], start: usize) -> usize {
        let max = (start + self.size).min(items.len());
        if self.mode == Mode::Transaction {
            return max;
        }
        let mut in_chunk = HashSet::new();
        for (i, item) in items.iter().enumerate().take(max).skip(start) {
            let mut refs = Vec::new();
            references_of(&item.body, &mut refs);
            if i > start && refs.iter().any(|r| in_chunk.contains(r)) {
                return i;
            }
            in_chunk.insert(item.key());
        }
        max
    }

    /// One conditional update, outside any Bundle.
    async fn put(&mut self, item: &Item) -> Sent {
        let body = self.prepare(item, &HashMap::new());
        self.services.metrics.fhir_requests.get_or_create(&crate::metrics::FhirRequestLabels { kind: "single" }).inc();
        let path = conditional_url(item);
        let answer = match self.client.put(&path, &body).await {
            Ok(answer) => answer,
            Err(e) => return Sent::Unavailable { error: e.to_string(), retry_after: None },
        };
        let what = format!("PUT {}?identifier=…", item.resource_type);
        let status = answer.status;
        if answer.is_success() {
            // Confirmed by the resource it answers or its Location; any other 2xx (a proxy's
            // page) confirms nothing.
            let echoed = answer.body["resourceType"] == item.resource_type.as_str();
            let located = answer.location.as_deref().and_then(|l| id_in_location(l, &item.resource_type));
            if !echoed && located.is_none() {
                let error = format!("the FHIR server answered {status} to {what} without the resource or its Location");
                return Sent::Unavailable { error, retry_after: None };
            }
            let server_id =
                answer.body.get("id").and_then(Value::as_str).map(str::to_string).filter(|_| echoed).or(located);
            self.remember(item, server_id.as_deref());
            return Sent::Written(server_id);
        }
        if let Some(sent) = unavailable(&answer, &what) {
            return sent;
        }
        classify(status, &what, &answer.body)
    }

    fn remember(&mut self, item: &Item, server_id: Option<&str>) {
        if let Some(server_id) = server_id {
            self.known.insert(item.key(), server_id.to_string());
        }
    }

    /// The transaction (or batch) Bundle of conditional updates.
    fn bundle(&self, items: &[Item]) -> Value {
        let full_urls: HashMap<(String, String), String> =
            items.iter().map(|i| (i.key(), format!("urn:uuid:{}", uuid::Uuid::new_v4()))).collect();
        // Only a transaction resolves references between its entries (`chunk_end` keeps a
        // batch's entries independent).
        let no_entries = HashMap::new();
        let in_bundle = if self.mode == Mode::Transaction { &full_urls } else { &no_entries };
        let entries: Vec<Value> = items
            .iter()
            .map(|item| {
                json!({
                    "fullUrl": full_urls[&item.key()],
                    "resource": self.prepare(item, in_bundle),
                    "request": { "method": "PUT", "url": conditional_url(item) }
                })
            })
            .collect();
        json!({ "resourceType": "Bundle", "type": self.mode.as_str(), "entry": entries })
    }

    /// The body to send: without Wearlink's `id` and `meta`, with the Wearlink identifier, and
    /// references rewritten to the Bundle's `fullUrl`s or the server's ids.
    fn prepare(&self, item: &Item, in_bundle: &HashMap<(String, String), String>) -> Value {
        let mut body = item.body.clone();
        if let Value::Object(map) = &mut body {
            map.remove("id");
            map.remove("meta");
            let identifiers = map.entry("identifier").or_insert_with(|| json!([]));
            if let Value::Array(list) = identifiers {
                list.push(json!({ "system": identifier_system(), "value": item.id }));
            }
        }
        rewrite_references(&mut body, &|t, id| {
            let key = (t.to_string(), id.to_string());
            in_bundle.get(&key).cloned().or_else(|| self.known.get(&key).map(|server_id| format!("{t}/{server_id}")))
        });
        body
    }

    /// The outcome of each entry of a transaction-response or batch-response.
    fn entries(&mut self, items: &[Item], answer: &FhirResponse) -> Vec<Sent> {
        // Only a response Bundle with one entry per request confirms anything: a 2xx from a
        // proxy or login page, or a short answer, must not settle (delete) the rows.
        let expected = format!("{}-response", self.mode.as_str());
        let entries = answer.body["entry"].as_array().cloned().unwrap_or_default();
        if answer.body["resourceType"] != "Bundle"
            || answer.body["type"] != expected.as_str()
            || entries.len() != items.len()
        {
            let error = format!(
                "the FHIR server answered {} to a {} Bundle without a {expected} of {} entries",
                answer.status,
                self.mode.as_str(),
                items.len()
            );
            return unavailable_all(items.len(), error, None);
        }
        let mut sent = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let entry = entries.get(i).cloned().unwrap_or(Value::Null);
            let status = entry["response"]["status"]
                .as_str()
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse::<u16>().ok())
                // A transaction that succeeded wrote every entry.
                .unwrap_or(if self.mode == Mode::Transaction { 200 } else { 500 });
            let what = format!("{} entry PUT {}?identifier=…", self.mode.as_str(), item.resource_type);
            if (200..300).contains(&status) {
                let server_id = entry["response"]["location"]
                    .as_str()
                    .and_then(|l| id_in_location(l, &item.resource_type))
                    .or_else(|| entry["resource"]["id"].as_str().map(str::to_string));
                self.remember(item, server_id.as_deref());
                sent.push(Sent::Written(server_id));
                continue;
            }
            let outcome = entry["response"]["outcome"].clone();
            let as_answer = FhirResponse { status, body: outcome, retry_after: None, location: None };
            match unavailable(&as_answer, &what) {
                Some(s) => sent.push(s),
                None => sent.push(classify(status, &what, &as_answer.body)),
            }
        }
        sent
    }
}

/// A lease extended from now, for the record of a bundle's results.
fn renewed(services: &Services, lease: &Lease) -> Lease {
    let now = now_ms();
    Lease { owner: lease.owner.clone(), now, until: now + services.config.sync.lease.as_millis() as i64 }
}

fn unavailable_all(n: usize, error: String, retry_after: Option<Duration>) -> Vec<Sent> {
    vec![Sent::Unavailable { error, retry_after }; n]
}

/// 401 (a second one: the client renewed the token once already), 408, 429 and 5xx: the server
/// cannot take writes now.
fn unavailable(answer: &FhirResponse, what: &str) -> Option<Sent> {
    match answer.status {
        401 | 408 | 429 | 500.. => Some(Sent::Unavailable {
            error: format!("the FHIR server answered {} to {what}", answer.status),
            retry_after: answer.retry_after,
        }),
        _ => None,
    }
}

/// A refusal of one resource: a conflict (retried a few times) or a dead letter.
fn classify(status: u16, what: &str, body: &Value) -> Sent {
    let detail = outcome_text(body);
    let error = if detail.is_empty() {
        format!("the FHIR server answered {status} to {what}")
    } else {
        format!("the FHIR server answered {status} to {what}: {}", truncate(&detail, 500))
    };
    match status {
        404 | 409 | 412 => Sent::Conflict(error),
        _ => {
            let outcome = (body["resourceType"] == "OperationOutcome").then(|| body.clone());
            Sent::Refused { error, outcome }
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The diagnostics and details of an OperationOutcome, joined.
fn outcome_text(body: &Value) -> String {
    let issues = body["issue"].as_array().map(Vec::as_slice).unwrap_or_default();
    let texts: Vec<String> = issues
        .iter()
        .flat_map(|i| [i["diagnostics"].as_str(), i["details"]["text"].as_str()])
        .flatten()
        .map(str::to_string)
        .collect();
    texts.join("; ")
}

/// The server refused the Bundle for its size (Medplum: "Transaction requires strict isolation
/// but has too many entries"; others: 413, "too large", "maximum").
fn is_size_refusal(status: u16, text: &str) -> bool {
    // Only words about the Bundle itself: a resource's own validation error ("string exceeds
    // max length") must not shrink every Bundle of the project for good (review).
    let about_bundle = ["entries", "bundle", "transaction"].iter().any(|w| text.contains(w));
    let too_big = ["too many", "too large", "maximum number", "exceeds"].iter().any(|w| text.contains(w));
    status == 413 || (matches!(status, 400 | 422) && about_bundle && too_big)
}

/// The server does not take transactions.
fn is_unsupported(status: u16, text: &str) -> bool {
    matches!(status, 400 | 404 | 405 | 422 | 501)
        && text.contains("transaction")
        && ["not supported", "unsupported", "not allowed", "not enabled"].iter().any(|w| text.contains(w))
}

/// `{Type}?identifier={system}|{wearlink id}`.
fn conditional_url(item: &Item) -> String {
    let token = format!("{}|{}", identifier_system(), item.id);
    let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    format!("{}?identifier={encoded}", item.resource_type)
}

/// The id in a `Location` (`[base/]Type/id[/_history/v]`).
fn id_in_location(location: &str, resource_type: &str) -> Option<String> {
    let segments: Vec<&str> = location.split('/').collect();
    let at = segments.iter().rposition(|s| *s == resource_type)?;
    segments.get(at + 1).filter(|s| !s.is_empty()).map(|s| s.to_string())
}

/// Rewrites every `reference` of the form `Type/id` that `resolve` knows.
fn rewrite_references(value: &mut Value, resolve: &dyn Fn(&str, &str) -> Option<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if key == "reference" {
                    if let Some(new) =
                        inner.as_str().and_then(|r| split_reference(r)).and_then(|(t, id)| resolve(t, id))
                    {
                        *inner = Value::String(new);
                    }
                } else {
                    rewrite_references(inner, resolve);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite_references(i, resolve)),
        _ => {}
    }
}

/// `Type/id` (relative, no history, no query) as its parts.
fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let (t, id) = reference.split_once('/')?;
    let typed = t.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && t.chars().all(|c| c.is_ascii_alphabetic());
    (typed && !id.is_empty() && !id.contains(['/', '?'])).then_some((t, id))
}

/// The references `Type/id` in a body.
fn references_of(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "reference" {
                    if let Some((t, id)) = inner.as_str().and_then(split_reference) {
                        out.push((t.to_string(), id.to_string()));
                    }
                } else {
                    references_of(inner, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| references_of(i, out)),
        _ => {}
    }
}

/// A stable order in which every resource comes after those it references (among `items`);
/// cycles keep their order.
fn dependencies_first(items: Vec<Item>) -> Vec<Item> {
    let keys: HashSet<(String, String)> = items.iter().map(Item::key).collect();
    let needs: Vec<Vec<(String, String)>> = items
        .iter()
        .map(|item| {
            let mut refs = Vec::new();
            references_of(&item.body, &mut refs);
            refs.retain(|r| keys.contains(r) && *r != item.key());
            refs
        })
        .collect();
    let mut placed: HashSet<(String, String)> = HashSet::new();
    let mut order = Vec::with_capacity(items.len());
    let mut waiting: Vec<usize> = (0..items.len()).collect();
    while !waiting.is_empty() {
        let before = waiting.len();
        waiting.retain(|&i| {
            if needs[i].iter().all(|r| placed.contains(r)) {
                placed.insert(items[i].key());
                order.push(i);
                false
            } else {
                true
            }
        });
        if waiting.len() == before {
            order.append(&mut waiting);
        }
    }
    let mut slots: Vec<Option<Item>> = items.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// `GET /v1/project/fhir-store`: the mode and the latest switch.
pub struct StoreView {
    pub mode: &'static str,
    pub switch: Option<SwitchRecord>,
}

pub async fn store_view(services: &Services, principal: &Principal) -> Result<StoreView> {
    principal.require_admin()?;
    let mode = if is_server_mode(services, &principal.project_id).await? { MODE_SERVER } else { MODE_EMBEDDED };
    let switch = services.store.latest_switch(&principal.project_id).await?;
    Ok(StoreView { mode, switch })
}

/// `POST /v1/project/fhir-store`: switches the project to `target` (`server` or `embedded`).
/// To the server: only with a complete configuration that passes its checks; every current
/// resource is queued with the flip. Back to embedded: the working copy is complete already;
/// rows still pending are still drained, so the server ends with every change made while it was
/// the store (nothing half-written there).
pub async fn switch(services: &Services, principal: &Principal, target: &str) -> Result<StoreView> {
    principal.require_admin()?;
    let target = match target {
        MODE_SERVER => MODE_SERVER,
        MODE_EMBEDDED => MODE_EMBEDDED,
        _ => return Err(Error::Invalid("store is \"server\" or \"embedded\"".into())),
    };
    if target == MODE_SERVER {
        super::check_project(services, principal).await.map_err(|e| match e {
            Error::FhirServer(FhirServerError::NotConfigured) => {
                let missing = ServerConfig::default().missing();
                Error::FhirServer(FhirServerError::Incomplete(missing))
            }
            other => other,
        })?;
        require_patients_on_server(services, &principal.project_id).await?;
    }
    let project_id = principal.project_id.clone();
    let switch_id = uuid::Uuid::new_v4().to_string();
    let outcome = projects::changing_settings(
        services,
        &project_id,
        services.store.switch_fhir_store(&project_id, target, &switch_id, now_ms()),
        |o| matches!(o, SwitchOutcome::Started(_)),
    )
    .await?;
    match outcome {
        SwitchOutcome::Busy(running) => Err(Error::Conflict(format!(
            "a switch to the {} store is still copying ({} of {} pending): wait for it to finish",
            running.target, running.pending, running.total
        ))),
        SwitchOutcome::Unchanged | SwitchOutcome::Started(_) => {
            services.delivery_wake.notify_one();
            store_view(services, principal).await
        }
    }
}

/// The copy references each connection's patient as `Patient/{id}`, which must be the platform's
/// own: a patient only Wearlink knows (made at `POST /fhir/R4/Patient`) would leave every copy of
/// its data pointing nowhere. So the switch asks the server first (review finding).
async fn require_patients_on_server(services: &Services, project_id: &str) -> Result<()> {
    use futures::StreamExt;
    let connections = services.store.list_connections(project_id, &Default::default()).await?;
    let mut patients: Vec<String> = connections.into_iter().map(|c| c.patient_id).collect();
    patients.sort();
    patients.dedup();
    let Some(client) = FhirClient::for_project(services, project_id).await? else {
        return Err(FhirServerError::NotConfigured.into());
    };
    let lookups: Vec<(String, super::PatientLookup)> = futures::stream::iter(patients)
        .map(|id| {
            let client = &client;
            async move {
                let found = client.patient(&id).await;
                (id, found)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut missing = Vec::new();
    for (id, found) in lookups {
        match found {
            super::PatientLookup::Found(_) => {}
            super::PatientLookup::NotFound => missing.push(id),
            super::PatientLookup::Unavailable(reason) => return Err(FhirServerError::Unreachable(reason).into()),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort();
    let shown: Vec<String> = missing.iter().take(10).map(|id| format!("Patient/{id}")).collect();
    Err(Error::Invalid(format!(
        "{} of the project's patients are not on its FHIR server ({}{}): the copies would reference them; \
         create them there under the same ids first",
        missing.len(),
        shown.join(", "),
        if missing.len() > shown.len() { ", …" } else { "" }
    )))
}

/// `GET /v1/fhir-outbox`: the project's rows of one state (`dead` by default, or `pending`),
/// oldest first, after `after`.
pub async fn list(
    services: &Services,
    principal: &Principal,
    state: Option<&str>,
    after: Option<i64>,
    limit: Option<i64>,
) -> Result<Vec<OutboxRow>> {
    principal.require_admin()?;
    let state = outbox_state(state)?;
    let limit = match limit {
        None => 100,
        Some(n) if (1..=500).contains(&n) => n,
        Some(_) => return Err(Error::Invalid("limit is 1..500".into())),
    };
    let filter = OutboxFilter { state: state.into(), after, limit };
    Ok(services.store.list_outbox(&principal.project_id, &filter).await?)
}

fn outbox_state(state: Option<&str>) -> Result<&'static str> {
    match state {
        None | Some(DEAD) => Ok(DEAD),
        Some(PENDING) => Ok(PENDING),
        Some(_) => Err(Error::Invalid("state is dead or pending".into())),
    }
}

/// `POST /v1/fhir-outbox/{id}/replay`: the row back to pending (dead) or due now (pending),
/// sent with the resource's then-current body.
pub async fn replay(services: &Services, principal: &Principal, id: &str) -> Result<()> {
    principal.require_admin()?;
    let not_found = || Error::NotFound(format!("outbox row {id}"));
    let seq: i64 = id.parse().ok().filter(|n| *n > 0).ok_or_else(not_found)?;
    let mut replayed = 0;
    for state in [DEAD, PENDING] {
        replayed += services.store.replay_outbox(&principal.project_id, state, Some(seq), now_ms()).await?;
    }
    if replayed == 0 {
        return Err(not_found());
    }
    services.delivery_wake.notify_one();
    Ok(())
}

/// `POST /v1/fhir-outbox/replay?state=dead`: every row of the state; answers how many.
pub async fn replay_all(services: &Services, principal: &Principal, state: Option<&str>) -> Result<u64> {
    principal.require_admin()?;
    let state = outbox_state(state)?;
    let replayed = services.store.replay_outbox(&principal.project_id, state, None, now_ms()).await?;
    if replayed > 0 {
        services.delivery_wake.notify_one();
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(t: &str, id: &str, body: Value) -> Item {
        Item { resource_type: t.into(), id: id.into(), up_to: 1, attempts: 0, body }
    }

    #[test]
    fn what_is_referenced_is_written_first() {
        let obs = item("Observation", "o", json!({ "partOf": [{ "reference": "Procedure/p" }] }));
        let summary = item("Observation", "s", json!({ "hasMember": [{ "reference": "Observation/o" }] }));
        let procedure = item("Procedure", "p", json!({ "subject": { "reference": "Patient/x" } }));
        let ordered = dependencies_first(vec![summary, obs, procedure]);
        let ids: Vec<&str> = ordered.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["p", "o", "s"]);
    }

    #[test]
    fn references_point_at_the_bundle_or_the_server() {
        let mut body = json!({
            "subject": { "reference": "Patient/pat" },
            "partOf": [{ "reference": "Procedure/p1" }],
            "extension": [{ "valueReference": { "reference": "Endpoint/e1" } }],
            "device": { "reference": "https://elsewhere/Device/d" }
        });
        rewrite_references(&mut body, &|t, id| match (t, id) {
            ("Procedure", "p1") => Some("urn:uuid:1".into()),
            ("Endpoint", "e1") => Some("Endpoint/srv-9".into()),
            _ => None,
        });
        assert_eq!(body["subject"]["reference"], "Patient/pat", "the platform's own ids stay");
        assert_eq!(body["partOf"][0]["reference"], "urn:uuid:1");
        assert_eq!(body["extension"][0]["valueReference"]["reference"], "Endpoint/srv-9");
        assert_eq!(body["device"]["reference"], "https://elsewhere/Device/d");
    }

    #[test]
    fn refusals_for_size_are_told_from_refusals_of_content() {
        let medplum = "transaction requires strict isolation but has too many entries";
        assert!(is_size_refusal(400, medplum));
        assert!(is_size_refusal(413, ""));
        assert!(!is_size_refusal(400, "observation.status: missing required property"));
        assert!(!is_size_refusal(400, "observation.code.text: string exceeds max length"), "a resource's own error");
        assert!(is_unsupported(400, "transaction bundles are not supported"));
        assert!(!is_unsupported(400, "too many entries"));
    }

    #[test]
    fn a_write_is_a_conflict_a_dead_letter_or_unavailable() {
        let outcome = json!({ "resourceType": "OperationOutcome", "issue": [{ "diagnostics": "bad" }] });
        assert!(matches!(classify(412, "PUT", &outcome), Sent::Conflict(_)));
        match classify(400, "PUT", &outcome) {
            Sent::Refused { outcome: Some(o), error } => {
                assert_eq!(o["issue"][0]["diagnostics"], "bad");
                assert!(error.contains("bad"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        let answer = |status| FhirResponse { status, body: Value::Null, retry_after: None, location: None };
        for status in [401, 429, 503] {
            assert!(unavailable(&answer(status), "PUT").is_some(), "{status}");
        }
        assert!(unavailable(&answer(400), "PUT").is_none());
        assert_eq!(id_in_location("Observation/abc/_history/1", "Observation").as_deref(), Some("abc"));
        assert_eq!(id_in_location("http://s/fhir/R4/Endpoint/e-1", "Endpoint").as_deref(), Some("e-1"));
    }

    #[test]
    fn backoff_grows_to_its_cap_and_honours_retry_after() {
        let policy = OutboxPolicy {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            conflict_attempts: 3,
        };
        let first = policy.next_attempt(0, None, 0);
        assert!((50..=100).contains(&first), "{first}");
        let late = policy.next_attempt(20, None, 0);
        assert!((500..=1000).contains(&late), "{late}");
        assert_eq!(policy.next_attempt(0, Some(Duration::from_secs(7)), 0), 7000);
    }

    #[test]
    fn bundle_sizes_are_whole_numbers_up_to_500() {
        assert_eq!(prepare_bundle_size(Some(&json!(16))).unwrap(), json!(16));
        assert_eq!(prepare_bundle_size(Some(&json!("3"))).unwrap(), json!(3));
        assert_eq!(prepare_bundle_size(None).unwrap(), Value::Null);
        for bad in [json!(0), json!(501), json!("x"), json!(1.5)] {
            assert!(prepare_bundle_size(Some(&bad)).is_err(), "{bad}");
        }
    }
}
