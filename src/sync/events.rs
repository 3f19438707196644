//! Webhook events from the inbox, one job each: what the event names is fetched and written
//! (or marked `entered-in-error`, or the connection forgotten on deauthorization). The event ends
//! `synced` with the references it wrote, `ignored` with a reason, `done`, or `dead` after retries;
//! that outcome is written with the job's (fenced) completion.

use serde_json::Value;

use super::session::{CallError, Session};
use super::writer;
use crate::connections::endpoint_body;
use crate::providers::data::EventAction;
use crate::store::sync::{Job, JobOutcome};
use crate::store::{EventOutcome, Lease, WebhookEvent};
use crate::time::now_ms;
use crate::Services;

enum Handled {
    Synced(Vec<String>),
    Ignored(String),
    Done,
}

pub async fn process(services: &Services, job: &Job, lease: &Lease) -> crate::Result<bool> {
    let event = match job.unique_key.as_deref() {
        Some(id) => services.store.read_event(id).await?,
        None => None,
    };
    let Some(event) = event.filter(|e| e.state == "received") else {
        return Ok(services.store.complete_job(lease, &job.id, &JobOutcome::Done, &[]).await?);
    };
    // The claim's clock when it runs ahead (tests move it), so a retry is not due at once.
    let now = now_ms().max(lease.now);
    let (job_outcome, state, error, refs) = match handle(services, &event).await {
        Ok(Handled::Synced(refs)) => (JobOutcome::Done, "synced", None, Some(refs)),
        Ok(Handled::Ignored(reason)) => (JobOutcome::Done, "ignored", Some(reason), None),
        Ok(Handled::Done) => (JobOutcome::Done, "done", None, None),
        Err(CallError::Parked(until)) => {
            let park = JobOutcome::Park {
                due_at: until.max(now + 1),
                payload: job.payload.clone(),
                note: Some("rate limited".into()),
            };
            (park, "received", None, None)
        }
        // The connection went `error`: nothing more to do for this event.
        Err(CallError::Stopped(reason)) => (JobOutcome::Done, "ignored", Some(reason), None),
        Err(e) => {
            let attempts = job.attempts + 1;
            let dead = attempts >= services.config.sync.max_attempts;
            tracing::warn!(event = %event.id, attempts, dead, error = %e, "webhook event processing failed");
            let retry = now + services.config.refresh.backoff_after(attempts).as_millis() as i64;
            let outcome =
                if dead { JobOutcome::Done } else { JobOutcome::Retry { due_at: retry, error: e.to_string() } };
            (outcome, if dead { "dead" } else { "received" }, Some(e.to_string()), None)
        }
    };
    let finished = state != "received";
    // A failed attempt is one retried or given up; a parked one is no attempt.
    let failed = state == "dead" || matches!(job_outcome, JobOutcome::Retry { .. });
    let outcome = EventOutcome {
        job: job_outcome,
        state: state.into(),
        attempts: job.attempts + i64::from(failed),
        error,
        refs,
        processed_at: finished.then_some(now),
    };
    Ok(services.store.complete_event(lease, &job.id, &event.id, &outcome).await?)
}

async fn handle(services: &Services, event: &WebhookEvent) -> Result<Handled, CallError> {
    let Some(endpoint_id) = &event.endpoint_id else {
        return Ok(Handled::Ignored("no connection for this user".into()));
    };
    let Some(c) = services.store.find_connection_by_endpoint(endpoint_id).await.map_err(crate::Error::from)? else {
        return Ok(Handled::Ignored("the connection is gone".into()));
    };
    let Some(provider) = services.providers.get(&c.provider).cloned() else {
        return Ok(Handled::Ignored("unknown provider".into()));
    };
    let Some(source) = provider.data() else {
        return Ok(Handled::Ignored(format!("{} data is not synced", provider.display_name())));
    };
    let Ok(payload) = serde_json::from_str::<Value>(&event.payload) else {
        return Ok(Handled::Ignored("the payload is not JSON".into()));
    };
    let action = source.event_action(&payload, &provider.urls().api);
    if action == EventAction::Deauthorize {
        // The user revoked us at the provider: nothing to revoke upstream, only to forget.
        let mut off = c.clone();
        off.status = "off".into();
        off.tokens = None;
        off.last_error = Some("deauthorized at the provider".into());
        let body = endpoint_body(provider.as_ref(), &off);
        services
            .store
            .set_connection_status(&c.endpoint_id, "off", off.last_error.as_deref(), true, body, None)
            .await
            .map_err(crate::Error::from)?;
        return Ok(Handled::Done);
    }
    if let EventAction::Ignore(reason) = action {
        return Ok(Handled::Ignored(reason));
    }
    if c.status != "active" {
        return Ok(Handled::Ignored(format!("the connection is {}", c.status)));
    }
    let Some(mut session) = Session::open(services, endpoint_id, false).await? else {
        return Ok(Handled::Ignored("the connection is not usable".into()));
    };
    let ctx = session.context.clone();
    let mut objects: Vec<(crate::providers::data::ObjectRef, Value)> = Vec::new();
    let mut deleted_refs = Vec::new();
    match action {
        EventAction::Fetch(object) => match session.fetch(&object).await? {
            Some(data) => objects.push((object, data)),
            None => return Ok(Handled::Ignored("the provider no longer has this object".into())),
        },
        EventAction::Delete(object) => {
            let ids = session.source().resource_ids(&ctx, &object);
            let written = writer::mark_entered_in_error(services, &ctx, ids).await?;
            return Ok(Handled::Synced(written.changed));
        }
        EventAction::Items(items) => objects = items,
        EventAction::Range { stream, range } => {
            let mut cursor = None;
            loop {
                let page = session.list(&stream, range, cursor.as_ref()).await?;
                for item in page.items {
                    let data = match item.data {
                        Some(data) => Some(data),
                        None => session.fetch(&item.object).await?,
                    };
                    objects.extend(data.map(|d| (item.object, d)));
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            if let Some(system) = session.source().complete_listing(&stream) {
                let listed: Vec<_> = objects.iter().map(|(o, _)| o.clone()).collect();
                let gone = vanished(services, &ctx, session.source(), system, range, &listed).await?;
                deleted_refs = writer::mark_entered_in_error(services, &ctx, gone).await?.changed;
            }
        }
        EventAction::Deauthorize | EventAction::Ignore(_) => unreachable!("handled above"),
    }
    let mut drafts = Vec::new();
    for (object, data) in &objects {
        match session.source().map(&ctx, object, data) {
            Ok(mapped) => drafts.extend(mapped),
            // Bad data never poisons the queue: kept as ignored, with the payload, for inspection.
            Err(e) => return Ok(Handled::Ignored(e.to_string())),
        }
    }
    let mut refs: Vec<String> = drafts.iter().map(|d| format!("{}/{}", d.resource_type, d.id)).collect();
    refs.extend(deleted_refs);
    writer::write(services, &ctx, drafts).await?;
    let update = crate::store::sync::SyncUpdate { synced_at: Some(now_ms()), ..Default::default() };
    services
        .store
        .update_sync_status(&c.project_id, &c.endpoint_id, &update, now_ms())
        .await
        .map_err(crate::Error::from)?;
    Ok(Handled::Synced(refs))
}

/// What this connection wrote from a completely listed stream inside `range` that the listing no
/// longer has (`DataSource::complete_listing`): resources carrying the stream's identifier system
/// and this user's prefix, not yet `entered-in-error`, none of the listed objects' resources.
async fn vanished(
    services: &Services,
    ctx: &crate::fhir::MapContext,
    source: &dyn crate::providers::DataSource,
    system: &str,
    range: crate::providers::data::TimeRange,
    listed: &[crate::providers::data::ObjectRef],
) -> crate::Result<Vec<(&'static str, String)>> {
    use crate::store::sync::{DateBound, ResourceQuery};
    const PAGE: i64 = 1000;
    let kept: std::collections::HashSet<String> =
        listed.iter().flat_map(|o| source.resource_ids(ctx, o)).map(|(_, id)| id).collect();
    let prefix = format!("{}:", ctx.remote_user_id);
    let mut gone = Vec::new();
    for resource_type in ["Observation", "Procedure"] {
        let mut offset = 0;
        loop {
            let query = ResourceQuery {
                resource_type: resource_type.into(),
                patient_id: ctx.patient_id.clone(),
                codes: Vec::new(),
                categories: Vec::new(),
                dates: vec![DateBound::EndsAtOrAfter(range.from), DateBound::StartsBefore(range.to)],
                newest_first: false,
                count: PAGE,
                offset,
            };
            let (_, page) = services.store.search_resources(&ctx.project_id, &query).await?;
            let ours = |body: &Value| {
                body.get("identifier").and_then(Value::as_array).is_some_and(|ids| {
                    ids.iter().any(|i| {
                        i.get("system").and_then(Value::as_str) == Some(system)
                            && i.get("value").and_then(Value::as_str).is_some_and(|v| v.starts_with(&prefix))
                    })
                })
            };
            gone.extend(
                page.iter()
                    .filter(|r| {
                        ours(&r.body) && r.body.get("status").and_then(Value::as_str) != Some("entered-in-error")
                    })
                    .filter(|r| !kept.contains(&r.id))
                    .map(|r| (resource_type, r.id.clone())),
            );
            if (page.len() as i64) < PAGE {
                break;
            }
            offset += PAGE;
        }
    }
    Ok(gone)
}
