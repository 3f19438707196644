//! The daily CGM summary (`crate::fhir::cgm`), provider-neutral: whenever a sync job reads sensor
//! readings of a patient (a backfill, late data on the next poll), each UTC day they fall in is
//! summarized again, once, when the job ends, from the readings *stored* for that patient and
//! day — whatever connection wrote them — and written like any other resource (an unchanged
//! summary keeps its version).

use std::collections::BTreeSet;

use chrono::{NaiveDate, TimeZone, Utc};
use serde_json::Value;

use super::writer;
use crate::fhir::cgm::{self, counted};
use crate::fhir::{MapContext, ResourceDraft};
use crate::store::sync::{DateBound, ResourceQuery, TokenParam};
use crate::Services;

/// Readings a day can hold at most as we read them back (one a minute is 1,440).
const MAX_READINGS_PER_DAY: i64 = 2_000;

/// `(Observation id, UTC day)` of each sensor reading among the drafts.
pub fn reading_days(drafts: &[ResourceDraft]) -> Vec<(String, NaiveDate)> {
    drafts
        .iter()
        .filter(|d| d.resource_type == "Observation")
        .filter(|d| {
            let code = d.body.pointer("/code/coding/0/code").and_then(Value::as_str);
            matches!(code, Some(cgm::READING_MASS) | Some(cgm::READING_MOLAR))
        })
        .filter_map(|d| {
            let at = d.body.get("effectiveDateTime")?.as_str()?;
            let day = chrono::DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc).date_naive();
            Some((d.id.clone(), day))
        })
        .collect()
}

/// The job payload's list of days to summarize (`summarize`: `YYYY-MM-DD`s).
const NOTED: &str = "summarize";

/// Adds to the job's payload each day with a reading in the page, written or re-read unchanged.
/// Noted rather than summarized at once: a page is a day of readings, and summarizing after each
/// page read a day's stored readings back twice per page (bench/sync.sh: most of the backfill's
/// time). Unchanged readings count too: a job cut after a page was written but before its
/// checkpoint re-reads that page, finds it unchanged, and must still summarize its day (an
/// unchanged summary keeps its version, so noting too much costs a read, never a write).
pub fn note_reading_days(payload: &mut Value, readings: &[(String, NaiveDate)]) {
    if readings.is_empty() {
        return;
    }
    let mut days: BTreeSet<String> = payload
        .get(NOTED)
        .and_then(Value::as_array)
        .map(|days| days.iter().filter_map(|d| d.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let before = days.len();
    days.extend(readings.iter().map(|(_, day)| day.format("%Y-%m-%d").to_string()));
    if days.len() != before {
        payload[NOTED] = Value::from(days.into_iter().collect::<Vec<_>>());
    }
}

/// Summarizes again each day the job noted (its stored readings as they are now).
pub async fn summarize_noted_days(services: &Services, ctx: &MapContext, payload: &Value) -> crate::Result<()> {
    let Some(days) = payload.get(NOTED).and_then(Value::as_array) else {
        return Ok(());
    };
    let mut drafts = Vec::new();
    for day in days.iter().filter_map(Value::as_str) {
        if let Ok(day) = NaiveDate::parse_from_str(day, "%Y-%m-%d") {
            drafts.extend(summarize_day(services, ctx, day).await?);
        }
    }
    writer::write(services, ctx, drafts).await?;
    Ok(())
}

/// The summary drafts of one day, from the patient's stored readings of it.
async fn summarize_day(services: &Services, ctx: &MapContext, day: NaiveDate) -> crate::Result<Vec<ResourceDraft>> {
    let start = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"));
    let end = start + chrono::Duration::days(1);
    let code = |c: &str| TokenParam { system: Some(cgm::LOINC.into()), code: c.into() };
    let query = ResourceQuery {
        resource_type: "Observation".into(),
        patient_id: ctx.patient_id.clone(),
        codes: vec![vec![code(cgm::READING_MASS), code(cgm::READING_MOLAR)]],
        categories: Vec::new(),
        dates: vec![
            DateBound::EndsAtOrAfter(start.timestamp_millis()),
            DateBound::StartsBefore(end.timestamp_millis()),
        ],
        newest_first: false,
        count: MAX_READINGS_PER_DAY,
        offset: 0,
    };
    let (_, stored) = services.store.search_resources(&ctx.project_id, &query).await?;
    let readings: Vec<cgm::Counted> = stored.iter().filter_map(|r| counted(&r.body)).collect();
    let Some(summary) = cgm::summarize(&readings) else {
        return Ok(Vec::new());
    };
    let fmt = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let last = end - chrono::Duration::seconds(1);
    Ok(cgm::summary_drafts(ctx, &day.format("%Y-%m-%d").to_string(), &fmt(start), &fmt(last), &summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn every_day_with_a_reading_is_noted_once() {
        let mut payload = json!({});
        note_reading_days(&mut payload, &[]);
        assert!(payload.get(NOTED).is_none(), "a page without readings notes nothing");
        note_reading_days(&mut payload, &[("b".to_string(), day("2026-03-15"))]);
        assert_eq!(payload[NOTED], json!(["2026-03-15"]));
        let readings = vec![("a".to_string(), day("2026-03-14")), ("b".to_string(), day("2026-03-15"))];
        note_reading_days(&mut payload, &readings);
        note_reading_days(&mut payload, &readings);
        assert_eq!(payload[NOTED], json!(["2026-03-14", "2026-03-15"]));
    }
}
