//! WHOOP API v2 data → FHIR (shared/spec/data-sync.md, "The mapping"; field names from
//! https://developer.whoop.com/api). Pure: no I/O.
//!
//! WHOOP quirks: energy is in **kilojoules** (÷ 4.184 → kcal), durations are `*_milli`, times are
//! UTC with the user's `timezone_offset` beside them (written with that offset), and a `score`
//! only counts when `score_state == "SCORED"` (`PENDING_SCORE` / `UNSCORABLE` carry none, or a
//! stale one): a workout without a score is its Procedure (and duration) alone; a sleep, a
//! recovery or a cycle without one writes nothing.
//!
//! What makes a payload unusable (a [`MapError`]): a workout or sleep without a plain id, a valid
//! start/end (end after start, at most 7 days / 24 h) or offset; a recovery without `sleep_id`
//! or `created_at`; a cycle without id or start.

use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use crate::fhir::activity::{
    end_after, exercise_session, number, observation_identifier, parse_instant, quantity_observations, text,
    FhirPeriod, Measure, Observed, Session, DAILY_ENERGY, DISTANCE, ENERGY, EXERCISE_DURATION, HEART_RATE_MAX,
    HEART_RATE_MEAN, HRV_RMSSD, MAX_SESSION_SECONDS, MAX_SLEEP_SECONDS, OXYGEN_SATURATION, RESTING_HEART_RATE,
    SLEEP_DEEP, SLEEP_DURATION, SLEEP_LIGHT, SLEEP_REM,
};
use crate::fhir::{MapContext, MapError, ResourceDraft};

/// Procedure value: the workout UUID; its Observations `<id>:<measure code>`.
pub const WORKOUT_SYSTEM: &str = "https://api.prod.whoop.com/developer/v2/activity/workout";
/// Values `<sleep UUID>:<measure code>`.
pub const SLEEP_SYSTEM: &str = "https://api.prod.whoop.com/developer/v2/activity/sleep";
/// Values `<sleep UUID>:<measure code>`: a recovery is keyed on its sleep, which is what a v2
/// `recovery.*` webhook names (the cycle id is not in it).
pub const RECOVERY_SYSTEM: &str = "https://api.prod.whoop.com/developer/v2/recovery";
/// Values `<cycle id>:<measure code>`.
pub const CYCLE_SYSTEM: &str = "https://api.prod.whoop.com/developer/v2/cycle";
pub const IDENTIFIER_SYSTEMS: &[&str] = &[WORKOUT_SYSTEM, SLEEP_SYSTEM, RECOVERY_SYSTEM, CYCLE_SYSTEM];

/// Thermochemical calorie: 1 kcal = 4.184 kJ.
const KJ_PER_KCAL: f64 = 4.184;

const WORKOUT_MEASURES: [&Measure; 5] = [&EXERCISE_DURATION, &DISTANCE, &ENERGY, &HEART_RATE_MEAN, &HEART_RATE_MAX];
const SLEEP_MEASURES: [&Measure; 4] = [&SLEEP_DURATION, &SLEEP_DEEP, &SLEEP_LIGHT, &SLEEP_REM];
const RECOVERY_MEASURES: [&Measure; 3] = [&RESTING_HEART_RATE, &HRV_RMSSD, &OXYGEN_SATURATION];

/// kJ → kcal, to one decimal.
pub fn kilojoules_to_kcal(kj: f64) -> f64 {
    (kj / KJ_PER_KCAL * 10.0).round() / 10.0
}

fn milli_to_minutes(ms: f64) -> f64 {
    (ms / 60_000.0 * 100.0).round() / 100.0
}

/// The score, only when WHOOP says it is scored.
fn score(record: &Value) -> Option<&Value> {
    (record.get("score_state").and_then(Value::as_str) == Some("SCORED")).then(|| record.get("score")).flatten()
}

/// A WHOOP UUID (v2 workouts and sleeps).
pub fn plain_id(value: Option<&Value>) -> Option<String> {
    let text = crate::providers::id_text(value)?;
    let text = text.trim();
    let plain = (1..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    plain.then(|| text.to_ascii_lowercase())
}

/// `±HH:MM` (or `Z`) as an offset.
fn offset(value: Option<&Value>) -> Option<FixedOffset> {
    let text = value?.as_str()?.trim();
    if text == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 14 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// `start`/`end` (UTC) rendered in the record's `timezone_offset` (UTC when it has none).
fn local_span(
    record: &Value,
    max_seconds: i64,
    what: &str,
) -> Result<(DateTime<FixedOffset>, DateTime<FixedOffset>), MapError> {
    let fail = |m: &str| MapError(format!("WHOOP {what}: {m}"));
    let zone = match record.get("timezone_offset") {
        None | Some(Value::Null) => FixedOffset::east_opt(0).expect("UTC"),
        other => offset(other).ok_or_else(|| fail("no valid timezone_offset"))?,
    };
    let instant = |key: &str| record.get(key).and_then(Value::as_str).and_then(parse_instant);
    let start = instant("start").ok_or_else(|| fail("no valid start"))?.with_timezone(&zone);
    let end = instant("end").ok_or_else(|| fail("no valid end"))?.with_timezone(&zone);
    end_after(&start, end - start, max_seconds).map_err(|e| fail(&e.0))?;
    Ok((start, end))
}

/// A workout (`GET /v2/activity/workout/{id}`): the Procedure, its duration, and — only when
/// scored — distance, energy (kJ → kcal), average and maximum heart rate.
pub fn map_workout(ctx: &MapContext, workout: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let id = plain_id(workout.get("id")).ok_or_else(|| MapError("WHOOP workout without id".into()))?;
    let (start, end) = local_span(workout, MAX_SESSION_SECONDS, &format!("workout {id}"))?;
    let sport = text(workout.get("sport_name"), 64).map(|s| s.replace(' ', "_"));
    let session = Session {
        identifier_system: WORKOUT_SYSTEM,
        identifier_value: &id,
        sport: sport.as_deref(),
        title: None,
        period: FhirPeriod::between(&start, &end),
        device: None,
    };
    let minutes = (end - start).num_milliseconds() as f64 / 60_000.0;
    let scored = score(workout);
    let field = |key: &str| number(scored.and_then(|s| s.get(key)));
    let values: [(&Measure, Option<f64>); 5] = [
        (&EXERCISE_DURATION, Some((minutes * 100.0).round() / 100.0)),
        (&DISTANCE, field("distance_meter")),
        (&ENERGY, field("kilojoule").map(kilojoules_to_kcal)),
        (&HEART_RATE_MEAN, field("average_heart_rate")),
        (&HEART_RATE_MAX, field("max_heart_rate")),
    ];
    Ok(exercise_session(ctx, &session, &values))
}

/// A sleep (`GET /v2/activity/sleep/{id}`), when scored: total sleep (light + slow wave + REM;
/// awake and no-data time are not sleep) and one Observation per stage, over the sleep's span.
pub fn map_sleep(ctx: &MapContext, sleep: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let id = plain_id(sleep.get("id")).ok_or_else(|| MapError("WHOOP sleep without id".into()))?;
    let (start, end) = local_span(sleep, MAX_SLEEP_SECONDS, &format!("sleep {id}"))?;
    let Some(stages) = score(sleep).and_then(|s| s.get("stage_summary")) else {
        return Ok(Vec::new());
    };
    let stage = |key: &str| number(stages.get(key)).filter(|ms| (0.0..=MAX_SLEEP_SECONDS as f64 * 1000.0).contains(ms));
    let (light, deep, rem) = (
        stage("total_light_sleep_time_milli"),
        stage("total_slow_wave_sleep_time_milli"),
        stage("total_rem_sleep_time_milli"),
    );
    let total = [light, deep, rem].into_iter().sum::<Option<f64>>();
    let period = FhirPeriod::between(&start, &end);
    let observed = Observed {
        identifier_system: SLEEP_SYSTEM,
        identifier_prefix: &id,
        period: &period,
        part_of: None,
        device: None,
    };
    let values: [(&Measure, Option<f64>); 4] = [
        (&SLEEP_DURATION, total.map(milli_to_minutes)),
        (&SLEEP_DEEP, deep.map(milli_to_minutes)),
        (&SLEEP_LIGHT, light.map(milli_to_minutes)),
        (&SLEEP_REM, rem.map(milli_to_minutes)),
    ];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// A recovery (`GET /v2/cycle/{cycleId}/recovery`, or an entry of `/v2/recovery`), when scored:
/// resting heart rate, HRV (RMSSD, ms) and SpO2 for the day. WHOOP scores a recovery when the
/// user wakes; the recovery carries no time of its own but `created_at`, whose (UTC) date is the
/// day written.
pub fn map_recovery(ctx: &MapContext, recovery: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let sleep = plain_id(recovery.get("sleep_id")).ok_or_else(|| MapError("WHOOP recovery without sleep_id".into()))?;
    let created = recovery
        .get("created_at")
        .and_then(Value::as_str)
        .and_then(parse_instant)
        .ok_or_else(|| MapError(format!("WHOOP recovery of sleep {sleep}: no valid created_at")))?;
    let Some(scored) = score(recovery) else {
        return Ok(Vec::new());
    };
    let period = FhirPeriod::day(created.naive_utc().date());
    let observed = Observed {
        identifier_system: RECOVERY_SYSTEM,
        identifier_prefix: &sleep,
        period: &period,
        part_of: None,
        device: None,
    };
    let values: [(&Measure, Option<f64>); 3] = [
        (&RESTING_HEART_RATE, number(scored.get("resting_heart_rate"))),
        (&HRV_RMSSD, number(scored.get("hrv_rmssd_milli"))),
        (&OXYGEN_SATURATION, number(scored.get("spo2_percentage"))),
    ];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// A physiological cycle (`GET /v2/cycle`), when scored and complete (the current cycle has no
/// `end` and its energy still grows): the energy WHOOP counts for it — total expenditure, resting
/// metabolism included — as the day's kcal, on the local date the cycle started.
pub fn map_cycle(ctx: &MapContext, cycle: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let id = crate::providers::id_text(cycle.get("id"))
        .filter(|id| !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| MapError("WHOOP cycle without id".into()))?;
    if cycle.get("end").is_none_or(Value::is_null) {
        return Ok(Vec::new());
    }
    let (start, _) = local_span(cycle, 3 * 86_400, &format!("cycle {id}"))?;
    let Some(scored) = score(cycle) else {
        return Ok(Vec::new());
    };
    let period = FhirPeriod::day(start.date_naive());
    let observed = Observed {
        identifier_system: CYCLE_SYSTEM,
        identifier_prefix: &id,
        period: &period,
        part_of: None,
        device: None,
    };
    let values: [(&Measure, Option<f64>); 1] =
        [(&DAILY_ENERGY, number(scored.get("kilojoule")).map(kilojoules_to_kcal))];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// Every resource a workout can have written: what a `workout.deleted` marks.
pub fn workout_resource_ids(ctx: &MapContext, id: &str) -> Vec<(&'static str, String)> {
    let procedure = ("Procedure", ctx.id_for("Procedure", WORKOUT_SYSTEM, id));
    std::iter::once(procedure).chain(observation_ids(ctx, WORKOUT_SYSTEM, id, &WORKOUT_MEASURES)).collect()
}

pub fn sleep_resource_ids(ctx: &MapContext, id: &str) -> Vec<(&'static str, String)> {
    observation_ids(ctx, SLEEP_SYSTEM, id, &SLEEP_MEASURES).collect()
}

/// The recovery of a sleep (a v2 `recovery.deleted` names the sleep).
pub fn recovery_resource_ids(ctx: &MapContext, sleep_id: &str) -> Vec<(&'static str, String)> {
    observation_ids(ctx, RECOVERY_SYSTEM, sleep_id, &RECOVERY_MEASURES).collect()
}

fn observation_ids<'a>(
    ctx: &'a MapContext,
    system: &'static str,
    prefix: &'a str,
    measures: &'a [&'static Measure],
) -> impl Iterator<Item = (&'static str, String)> + 'a {
    measures.iter().map(move |m| ("Observation", ctx.id_for("Observation", system, &observation_identifier(prefix, m))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::activity::{arbitrary, LOINC, UCUM};
    use proptest::prelude::*;
    use serde_json::json;

    fn ctx(project: &str) -> MapContext {
        MapContext {
            project_id: project.into(),
            patient_id: "pat-1".into(),
            endpoint_id: "ep-1".into(),
            provider: "whoop".into(),
            remote_user_id: "9012".into(),
        }
    }

    /// The spec's sample workout (shared/spec/providers.md).
    pub fn workout() -> Value {
        json!({"id":"ecfc6a15-4661-442f-a9a4-f160dd7afae8","user_id":9012,"start":"2022-04-24T02:25:44.774Z",
         "end":"2022-04-24T10:25:44.774Z","timezone_offset":"-05:00","sport_name":"running","score_state":"SCORED",
         "score":{"strain":8.2463,"average_heart_rate":123,"max_heart_rate":146,"kilojoule":1569.34,"distance_meter":1772.77}})
    }

    /// WHOOP's documented sleep example, with a v2 UUID.
    pub fn sleep() -> Value {
        json!({"id":"ecfc6a15-4661-442f-a9a4-f160dd7afae8","cycle_id":93845,"user_id":10129,
         "created_at":"2022-04-24T11:25:44.774Z","updated_at":"2022-04-24T14:25:44.774Z",
         "start":"2022-04-24T02:25:44.774Z","end":"2022-04-24T10:25:44.774Z","timezone_offset":"-05:00",
         "nap":false,"score_state":"SCORED","score":{"stage_summary":{"total_in_bed_time_milli":30272735,
         "total_awake_time_milli":1403507,"total_no_data_time_milli":0,"total_light_sleep_time_milli":14905851,
         "total_slow_wave_sleep_time_milli":6630370,"total_rem_sleep_time_milli":5879573,"sleep_cycle_count":3,
         "disturbance_count":12},"respiratory_rate":16.11328125,"sleep_performance_percentage":98,
         "sleep_consistency_percentage":90,"sleep_efficiency_percentage":91.69533848}})
    }

    pub fn recovery() -> Value {
        json!({"cycle_id":93845,"sleep_id":"123e4567-e89b-12d3-a456-426614174000","user_id":10129,
         "created_at":"2022-04-24T11:25:44.774Z","updated_at":"2022-04-24T14:25:44.774Z","score_state":"SCORED",
         "score":{"user_calibrating":false,"recovery_score":44,"resting_heart_rate":64,"hrv_rmssd_milli":31.813562,
         "spo2_percentage":95.6875,"skin_temp_celsius":33.7}})
    }

    pub fn cycle() -> Value {
        json!({"id":93845,"user_id":10129,"created_at":"2022-04-24T11:25:44.774Z","updated_at":"2022-04-24T14:25:44.774Z",
         "start":"2022-04-24T02:25:44.774Z","end":"2022-04-25T10:25:44.774Z","timezone_offset":"-05:00",
         "score_state":"SCORED","score":{"strain":5.2951527,"kilojoule":8288.297,"average_heart_rate":68,"max_heart_rate":141}})
    }

    fn by_code<'a>(drafts: &'a [ResourceDraft], code: &str) -> &'a ResourceDraft {
        drafts.iter().find(|d| d.body["code"]["coding"][0]["code"] == code).unwrap_or_else(|| panic!("no {code}"))
    }

    fn value(drafts: &[ResourceDraft], code: &str) -> Value {
        by_code(drafts, code).body["valueQuantity"]["value"].clone()
    }

    fn codes(drafts: &[ResourceDraft]) -> Vec<String> {
        drafts.iter().skip_while(|d| d.resource_type == "Procedure").map(|d| d.identifier_value.clone()).collect()
    }

    #[test]
    fn the_sample_workout_is_kcal_not_kilojoules_in_its_own_offset() {
        let drafts = map_workout(&ctx("p1"), &workout()).unwrap();
        let p = &drafts[0];
        assert_eq!(p.resource_type, "Procedure");
        assert_eq!(
            (p.identifier_system.as_str(), p.identifier_value.as_str()),
            (WORKOUT_SYSTEM, "ecfc6a15-4661-442f-a9a4-f160dd7afae8")
        );
        assert_eq!(
            p.body["performedPeriod"],
            json!({"start": "2022-04-23T21:25:44.774-05:00", "end": "2022-04-24T05:25:44.774-05:00"})
        );
        assert_eq!(p.body["code"]["coding"][0]["system"], "https://wearlink.dev/fhir/CodeSystem/whoop-sport");
        assert_eq!(p.body["code"]["coding"][0]["code"], "running");
        assert_eq!(drafts.len(), 6);
        // 1569.34 kJ / 4.184 = 375.08 kcal, never 1569.
        assert_eq!(
            by_code(&drafts, "55424-6").body["valueQuantity"],
            json!({"value": 375.1, "unit": "kcal", "system": UCUM, "code": "kcal"})
        );
        assert_eq!(value(&drafts, "distance"), json!(1772.77));
        assert_eq!(value(&drafts, "55425-3"), json!(123));
        assert_eq!(value(&drafts, "55426-1"), json!(146));
        assert_eq!(value(&drafts, "55411-3"), json!(480));
        for o in &drafts[1..] {
            assert_eq!(o.body["partOf"][0]["reference"], format!("Procedure/{}", p.id));
            assert!(o.identifier_value.starts_with("ecfc6a15-4661-442f-a9a4-f160dd7afae8:"));
        }
    }

    #[test]
    fn an_unscored_workout_is_its_procedure_and_duration_only() {
        for state in ["PENDING_SCORE", "UNSCORABLE"] {
            let mut w = workout();
            w["score_state"] = json!(state);
            let drafts = map_workout(&ctx("p1"), &w).unwrap();
            assert_eq!(drafts[0].resource_type, "Procedure");
            assert_eq!(codes(&drafts), vec!["ecfc6a15-4661-442f-a9a4-f160dd7afae8:55411-3".to_string()], "{state}");
        }
        let mut w = workout();
        w.as_object_mut().unwrap().remove("score");
        assert_eq!(map_workout(&ctx("p1"), &w).unwrap().len(), 2);
    }

    #[test]
    fn an_unusable_workout_is_an_error() {
        for (key, bad) in [
            ("id", Value::Null),
            ("id", json!("../x")),
            ("start", json!("2022-04-24T02:25:44")),
            ("end", Value::Null),
            ("end", json!("2022-04-24T01:00:00Z")),
            ("end", json!("2022-05-24T01:00:00Z")),
            ("timezone_offset", json!("EST")),
        ] {
            let mut w = workout();
            w[key] = bad.clone();
            assert!(map_workout(&ctx("p1"), &w).is_err(), "{key} = {bad}");
        }
    }

    #[test]
    fn the_sample_sleep_totals_light_deep_and_rem() {
        let drafts = map_sleep(&ctx("p1"), &sleep()).unwrap();
        assert_eq!(drafts.len(), 4);
        let total = by_code(&drafts, "93832-4");
        assert_eq!(total.identifier_system, SLEEP_SYSTEM);
        assert_eq!(total.identifier_value, "ecfc6a15-4661-442f-a9a4-f160dd7afae8:93832-4");
        // (14905851 + 6630370 + 5879573) ms = 456.93 min; awake time is not sleep.
        assert_eq!(total.body["valueQuantity"], json!({"value": 456.93, "unit": "min", "system": UCUM, "code": "min"}));
        assert_eq!(total.body["code"]["coding"][0]["system"], LOINC);
        assert_eq!(
            total.body["effectivePeriod"],
            json!({"start": "2022-04-23T21:25:44.774-05:00", "end": "2022-04-24T05:25:44.774-05:00"})
        );
        assert_eq!(value(&drafts, "93831-6"), json!(110.51));
        assert_eq!(value(&drafts, "93830-8"), json!(248.43));
        assert_eq!(value(&drafts, "93829-0"), json!(97.99));
        let mut pending = sleep();
        pending["score_state"] = json!("PENDING_SCORE");
        assert!(map_sleep(&ctx("p1"), &pending).unwrap().is_empty());
    }

    #[test]
    fn a_scored_recovery_gives_the_days_vitals() {
        let drafts = map_recovery(&ctx("p1"), &recovery()).unwrap();
        assert_eq!(drafts.len(), 3);
        let rhr = by_code(&drafts, "40443-4");
        assert_eq!(rhr.identifier_system, RECOVERY_SYSTEM);
        assert_eq!(rhr.identifier_value, "123e4567-e89b-12d3-a456-426614174000:40443-4");
        assert_eq!(rhr.body["valueQuantity"]["value"], json!(64));
        assert_eq!(rhr.body["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(rhr.body["effectivePeriod"], json!({"start": "2022-04-24", "end": "2022-04-24"}));
        assert_eq!(
            by_code(&drafts, "hrv-rmssd").body["valueQuantity"],
            json!({"value": 31.813562, "unit": "ms", "system": UCUM, "code": "ms"})
        );
        assert_eq!(value(&drafts, "2708-6"), json!(95.6875));
        let mut pending = recovery();
        pending["score_state"] = json!("PENDING_SCORE");
        assert!(map_recovery(&ctx("p1"), &pending).unwrap().is_empty());
        let mut bad = recovery();
        bad["sleep_id"] = Value::Null;
        assert!(map_recovery(&ctx("p1"), &bad).is_err());
    }

    #[test]
    fn a_complete_scored_cycle_is_the_days_kcal() {
        let drafts = map_cycle(&ctx("p1"), &cycle()).unwrap();
        assert_eq!(drafts.len(), 1);
        let kcal = &drafts[0];
        assert_eq!(kcal.identifier_value, "93845:41979-6");
        // 8288.297 kJ / 4.184 = 1980.95 kcal; the cycle started on the 23rd at UTC-5.
        assert_eq!(
            kcal.body["valueQuantity"],
            json!({"value": 1981, "unit": "kcal/day", "system": UCUM, "code": "kcal/d"})
        );
        assert_eq!(kcal.body["effectivePeriod"], json!({"start": "2022-04-23", "end": "2022-04-23"}));
        let mut current = cycle();
        current["end"] = Value::Null;
        assert!(map_cycle(&ctx("p1"), &current).unwrap().is_empty());
        assert!(map_cycle(&ctx("p1"), &json!({"id": "x"})).is_err());
    }

    #[test]
    fn deletes_name_what_was_written() {
        let c = ctx("p1");
        let written: Vec<_> =
            map_workout(&c, &workout()).unwrap().into_iter().map(|d| (d.resource_type, d.id)).collect();
        let marked = workout_resource_ids(&c, "ecfc6a15-4661-442f-a9a4-f160dd7afae8");
        assert!(written.iter().all(|w| marked.contains(w)), "{written:?} / {marked:?}");
        let written: Vec<_> = map_sleep(&c, &sleep()).unwrap().into_iter().map(|d| (d.resource_type, d.id)).collect();
        assert_eq!(written, sleep_resource_ids(&c, "ecfc6a15-4661-442f-a9a4-f160dd7afae8"));
        let written: Vec<_> =
            map_recovery(&c, &recovery()).unwrap().into_iter().map(|d| (d.resource_type, d.id)).collect();
        assert_eq!(written, recovery_resource_ids(&c, "123e4567-e89b-12d3-a456-426614174000"));
    }

    #[test]
    fn offsets_read_as_whoop_writes_them() {
        assert_eq!(offset(Some(&json!("-05:00"))), FixedOffset::west_opt(5 * 3600));
        assert_eq!(offset(Some(&json!("+05:30"))), FixedOffset::east_opt(5 * 3600 + 1800));
        assert_eq!(offset(Some(&json!("Z"))), FixedOffset::east_opt(0));
        for bad in ["05:00", "+5:00", "+15:00", "+05:60", "", "-05"] {
            assert_eq!(offset(Some(&json!(bad))), None, "{bad}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_json_never_panics(value in arbitrary::json_value()) {
            let _ = map_workout(&ctx("p1"), &value);
            let _ = map_sleep(&ctx("p1"), &value);
            let _ = map_recovery(&ctx("p1"), &value);
            let _ = map_cycle(&ctx("p1"), &value);
        }

        #[test]
        fn mutated_samples_map_or_fail_cleanly(
            w in arbitrary::mutated(workout()), s in arbitrary::mutated(sleep()),
            r in arbitrary::mutated(recovery()), c in arbitrary::mutated(cycle())
        ) {
            for drafts in [map_workout(&ctx("p1"), &w), map_sleep(&ctx("p1"), &s), map_recovery(&ctx("p1"), &r), map_cycle(&ctx("p1"), &c)]
                .into_iter()
                .flatten()
            {
                for o in drafts.iter().filter(|d| d.resource_type == "Observation") {
                    let v = o.body["valueQuantity"]["value"].as_f64().unwrap();
                    prop_assert!(v.is_finite() && v >= 0.0);
                }
            }
        }
    }
}
