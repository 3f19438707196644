//! One delivery attempt: a job of the one queue. The target is checked again (DNS included)
//! before each attempt, the body signed with the endpoint's secret(s), 2xx is delivered; anything
//! else is retried on the schedule and then failed. The outcome is written with the job's
//! completion, fenced on its lease: two instances never both record one attempt. Outcomes are
//! written in groups (`Outcomes`): one transaction for the attempts that finished meanwhile.

use std::sync::{Arc, OnceLock};

use secrecy::ExposeSecret;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::endpoints::signing_secrets;
use super::sign;
use crate::store::outbound::{AttemptResult, AttemptWrite, DeliveryRecord, EndpointRecord};
use crate::store::sync::{Job, JobOutcome};
use crate::store::{Lease, Store, StoreError, StoreResult};
use crate::time::now_ms;
use crate::Services;

/// Runs one delivery job; false when its lease was lost.
pub async fn deliver(services: &Services, job: &Job, lease: &Lease) -> crate::Result<bool> {
    let loaded = match job.unique_key.as_deref() {
        Some(id) => services.store.load_delivery(id).await?,
        None => None,
    };
    let Some((delivery, body, endpoint)) = loaded.filter(|(d, _, _)| d.state == "pending") else {
        return Ok(services.store.complete_job(lease, &job.id, &JobOutcome::Done, &[]).await?);
    };
    // The claim's clock when it runs ahead (tests move it), so a retry is not due at once.
    let now = now_ms().max(lease.now);
    let result = if !endpoint.enabled {
        AttemptResult {
            job: JobOutcome::Done,
            state: "failed".into(),
            status: None,
            error: Some("endpoint disabled".into()),
            next_attempt_at: None,
            at: now,
            endpoint_failed: endpoint.failing_since.is_some(),
            disable: None,
        }
    } else {
        match send(services, &endpoint, &delivery, &body).await {
            Ok(status) if (200..300).contains(&status) => AttemptResult {
                job: JobOutcome::Done,
                state: "delivered".into(),
                status: Some(i64::from(status)),
                error: None,
                next_attempt_at: None,
                at: now,
                endpoint_failed: false,
                disable: None,
            },
            Ok(status) => failure(services, &endpoint, &delivery, Some(status), format!("answered {status}"), now),
            Err(error) => failure(services, &endpoint, &delivery, None, error, now),
        }
    };
    let attempt = AttemptWrite {
        lease_owner: lease.owner.clone(),
        job_id: job.id.clone(),
        delivery_id: delivery.id,
        endpoint_id: delivery.endpoint_id,
        result,
    };
    Ok(services.delivery_outcomes.record(attempt).await?)
}

/// Attempts recorded together at most.
const MAX_GROUP: usize = 128;

type Waiting = (AttemptWrite, oneshot::Sender<StoreResult<bool>>);

/// Group commit of delivery outcomes: the attempts that finished while the previous group was
/// being written go in the next transaction, so a commit (and on SQLite a turn of the one writer)
/// serves many deliveries. No timer: a lone attempt is written at once; each caller gets its
/// answer once its group has committed.
pub struct Outcomes {
    store: Arc<dyn Store>,
    /// Started on first use.
    queue: OnceLock<mpsc::UnboundedSender<Waiting>>,
}

impl Outcomes {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, queue: OnceLock::new() }
    }

    /// Records one attempt with its job's completion; false when its lease was lost.
    pub async fn record(&self, attempt: AttemptWrite) -> StoreResult<bool> {
        let queue = self.queue.get_or_init(|| {
            let (queue, waiting) = mpsc::unbounded_channel();
            tokio::spawn(write_groups(Arc::clone(&self.store), waiting));
            queue
        });
        let (answer, answered) = oneshot::channel();
        queue.send((attempt, answer)).map_err(|_| unanswered())?;
        answered.await.map_err(|_| unanswered())?
    }
}

fn unanswered() -> StoreError {
    StoreError::Unavailable("the delivery outcome writer did not answer".into())
}

async fn write_groups(store: Arc<dyn Store>, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    // As many groups in flight as the backend writes at once; the rest queue meanwhile.
    let in_flight = Arc::new(Semaphore::new(store.parallel_writes()));
    let mut group = Vec::with_capacity(MAX_GROUP);
    loop {
        let Ok(slot) = Arc::clone(&in_flight).acquire_owned().await else { return };
        if waiting.recv_many(&mut group, MAX_GROUP).await == 0 {
            return;
        }
        let (attempts, answers): (Vec<AttemptWrite>, Vec<_>) = group.drain(..).unzip();
        let store = Arc::clone(&store);
        // Background work: on SQLite the group lets waiting requests write first.
        tokio::spawn(crate::store::in_background(async move {
            for (answer, result) in answers.into_iter().zip(write_group(&store, &attempts).await) {
                let _ = answer.send(result); // the job may have gone away
            }
            drop(slot);
        }));
    }
}

/// One transaction for the group; if it fails, each attempt is written on its own so that only
/// the one at fault fails.
async fn write_group(store: &Arc<dyn Store>, attempts: &[AttemptWrite]) -> Vec<StoreResult<bool>> {
    match store.record_attempts(attempts).await {
        Ok(held) => return held.into_iter().map(Ok).collect(),
        Err(e) if attempts.len() == 1 => return vec![Err(e)],
        Err(_) => {}
    }
    let mut results = Vec::with_capacity(attempts.len());
    for attempt in attempts {
        results.push(
            store
                .record_attempts(std::slice::from_ref(attempt))
                .await
                .map(|held| held.first().copied().unwrap_or(false)),
        );
    }
    results
}

/// A failed attempt: the next on the schedule (±10 %), or failed once it is spent; the endpoint
/// is disabled when its deliveries have all failed for `disable_after`.
fn failure(
    services: &Services,
    endpoint: &EndpointRecord,
    delivery: &DeliveryRecord,
    status: Option<u16>,
    error: String,
    now: i64,
) -> AttemptResult {
    let policy = &services.config.outbound;
    let attempt = delivery.attempts as usize + 1;
    let next = policy.schedule.get(attempt - 1).map(|wait| {
        let wait = wait.as_millis() as i64;
        let jitter = wait / 10;
        now + wait + if jitter > 0 { rand::Rng::gen_range(&mut rand::thread_rng(), -jitter..=jitter) } else { 0 }
    });
    let failing_since = endpoint.failing_since.unwrap_or(now);
    let disable = (now - failing_since >= policy.disable_after.as_millis() as i64).then(|| {
        tracing::warn!(endpoint = %endpoint.id, "webhook endpoint disabled: every delivery failed for too long");
        format!("every delivery failed since {}", crate::time::to_rfc3339(failing_since))
    });
    tracing::info!(delivery = %delivery.id, attempt, status, error = %error, retried = next.is_some(), "webhook delivery failed");
    AttemptResult {
        job: match next {
            Some(due_at) => JobOutcome::Retry { due_at, error: error.clone() },
            None => JobOutcome::Done,
        },
        state: if next.is_some() { "pending" } else { "failed" }.into(),
        status: status.map(i64::from),
        error: Some(error),
        next_attempt_at: next,
        at: now,
        endpoint_failed: true,
        disable,
    }
}

/// POSTs the signed event; answers the status, or why there is none (never a secret).
async fn send(
    services: &Services,
    endpoint: &EndpointRecord,
    delivery: &DeliveryRecord,
    body: &str,
) -> Result<u16, String> {
    // Checked again at every attempt: the address may have changed since registration. The
    // client's resolver checks the addresses it connects to as well.
    let url = services.config.outbound.targets().check_url(&endpoint.url).await.map_err(|e| e.to_string())?;
    // The real clock: receivers check the timestamp's freshness.
    let timestamp = now_ms() / 1000;
    let secrets = signing_secrets(services, endpoint, now_ms())
        .map_err(|_| "the endpoint's secret cannot be read".to_string())?;
    let secrets: Vec<&str> = secrets.iter().map(|s| s.expose_secret()).collect();
    let signature = sign::header(&secrets, &delivery.event_id, timestamp, body);
    let response = services
        .outbound_http
        .post(url)
        .header("webhook-id", &delivery.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| if e.is_timeout() { "timed out".to_string() } else { "could not connect".to_string() })?;
    Ok(response.status().as_u16())
}
