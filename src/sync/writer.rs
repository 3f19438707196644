//! Writes mapped resources: a new version only where the content changed, never a duplicate
//! (ids derive from identifiers), with the columns search needs.

use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::fhir::{MapContext, ResourceDraft};
use crate::store::sync::{ResourceWrite, SearchIndex, WriteOutcome};
use crate::time::now_ms;
use crate::Services;

/// Resources written per transaction (about 20 activities with their Observations).
const WRITE_CHUNK: usize = 120;
/// While requests keep the instance busy: on SQLite a transaction holds the one writer that
/// connect's writes wait for.
const WRITE_CHUNK_BUSY: usize = 30;

/// What a write did.
#[derive(Clone, Debug, Default)]
pub struct Written {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// `Type/id` of what was created or changed.
    pub changed: Vec<String>,
}

/// Writes the drafts of one or more objects in one transaction.
pub async fn write(services: &Services, ctx: &MapContext, drafts: Vec<ResourceDraft>) -> crate::Result<Written> {
    let writes: Vec<ResourceWrite> = drafts
        .into_iter()
        .map(|d| ResourceWrite {
            index: search_index(&d.body),
            resource_type: d.resource_type.to_string(),
            id: d.id,
            patient_id: Some(ctx.patient_id.clone()),
            body: d.body,
        })
        .collect();
    write_all(services, &ctx.into(), writes).await
}

async fn write_all(
    services: &Services,
    source: &crate::events::SyncSource,
    writes: Vec<ResourceWrite>,
) -> crate::Result<Written> {
    // Transactions of bounded size: on SQLite each holds the one writer, which requests wait for.
    let mut outcomes = Vec::with_capacity(writes.len());
    let budget = &services.work_budget;
    let mut rest = &writes[..];
    while !rest.is_empty() {
        budget.turn().await;
        let size = if budget.busy() { WRITE_CHUNK_BUSY } else { WRITE_CHUNK };
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        // Two writers of the same new resources (a webhook's fetch beside a backfill) conflict;
        // the one that lost writes again and finds them there.
        let mut tries = 0;
        let written = loop {
            let write = services.store.write_resources(&source.project_id, chunk, now_ms(), Some(source));
            match budget.charged(write).await {
                Err(crate::store::StoreError::Conflict) if tries < 3 => tries += 1,
                other => break other?,
            }
        };
        outcomes.extend(written);
    }
    let mut written = Written::default();
    for (w, (outcome, _)) in writes.iter().zip(outcomes) {
        match outcome {
            WriteOutcome::Created => written.created += 1,
            WriteOutcome::Updated => written.updated += 1,
            WriteOutcome::Unchanged => written.unchanged += 1,
        }
        if outcome != WriteOutcome::Unchanged {
            written.changed.push(format!("{}/{}", w.resource_type, w.id));
        }
    }
    services.sync_counters.resources_written.fetch_add((written.created + written.updated) as u64, Ordering::Relaxed);
    Ok(written)
}

/// Marks what an object wrote `entered-in-error` (kept, not deleted: history is append-only).
pub async fn mark_entered_in_error(
    services: &Services,
    ctx: &MapContext,
    ids: Vec<(&'static str, String)>,
) -> crate::Result<Written> {
    let mut writes = Vec::new();
    for (resource_type, id) in ids {
        let Some(stored) = services.store.read_resource(&ctx.project_id, resource_type, &id).await? else {
            continue;
        };
        let mut body = stored.body;
        body["status"] = Value::from("entered-in-error");
        writes.push(ResourceWrite {
            index: search_index(&body),
            resource_type: resource_type.into(),
            id,
            patient_id: Some(ctx.patient_id.clone()),
            body,
        });
    }
    write_all(services, &ctx.into(), writes).await
}

/// The tokens of `code` and `category`, and the clinical time range, of a resource.
pub fn search_index(body: &Value) -> SearchIndex {
    let tokens = |concepts: Vec<&Value>| {
        let mut out = String::from(" ");
        for coding in concepts.iter().filter_map(|c| c.get("coding")?.as_array()).flatten() {
            let system = coding.get("system").and_then(Value::as_str).unwrap_or_default();
            if let Some(code) = coding.get("code").and_then(Value::as_str) {
                out.push_str(&format!("{system}|{code} "));
            }
        }
        out
    };
    let categories: Vec<&Value> = match body.get("category") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
        None => Vec::new(),
    };
    let (date_start, date_end) = clinical_range(body);
    SearchIndex {
        codes: tokens(body.get("code").into_iter().collect()),
        categories: tokens(categories),
        date_start,
        date_end,
    }
}

/// `effective[x]` / `performed[x]` as epoch ms; a date without a time spans its whole day (UTC).
fn clinical_range(body: &Value) -> (Option<i64>, Option<i64>) {
    for prefix in ["effective", "performed"] {
        if let Some(period) = body.get(format!("{prefix}Period")) {
            let start = period.get("start").and_then(Value::as_str).and_then(crate::fhir::search::date_bounds);
            let end = period.get("end").and_then(Value::as_str).and_then(crate::fhir::search::date_bounds);
            return (start.map(|(lo, _)| lo), end.map(|(_, hi)| hi - 1).or(start.map(|(_, hi)| hi - 1)));
        }
        if let Some(at) = body.get(format!("{prefix}DateTime")).and_then(Value::as_str) {
            if let Some((lo, hi)) = crate::fhir::search::date_bounds(at) {
                return (Some(lo), Some(hi - 1));
            }
        }
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn codes_categories_and_dates_are_indexed() {
        let index = search_index(&json!({
            "code": {"coding": [{"system": "http://loinc.org", "code": "55411-3"}]},
            "category": [{"coding": [{"system": "c", "code": "activity"}]}],
            "effectivePeriod": {"start": "2026-03-14T08:02:11+01:00", "end": "2026-03-14T09:02:11+01:00"}
        }));
        assert_eq!(index.codes, " http://loinc.org|55411-3 ");
        assert_eq!(index.categories, " c|activity ");
        assert_eq!(index.date_start, Some(1_773_471_731_000));
        assert_eq!(index.date_end, Some(1_773_475_331_000));
        let day = search_index(&json!({"effectiveDateTime": "2026-03-15"}));
        assert_eq!(day.date_end.unwrap() - day.date_start.unwrap(), 86_400_000 - 1);
    }
}
