//! Oura API v2 documents → FHIR (shared/spec/data-sync.md, "The mapping"; field names from Oura's
//! v2 docs, https://cloud.ouraring.com/v2/docs, and the samples in shared/spec/providers.md).
//! Pure: no I/O.
//!
//! Every document has an `id` that Oura keeps across updates and names in its webhooks (also in
//! `delete` events), so every identifier is `<document id>` (a workout's Procedure) or
//! `<document id>:<measure code>`, under one system per collection: a re-sync or an `update`
//! writes a new version of the same resources, a `delete` finds them all ([`resource_ids`]).
//!
//! What makes a document unusable (a [`MapError`]): no plausible id; a workout without a
//! start/end pair (with offsets) at most 7 days apart; a sleep without bedtimes at most 24 h
//! apart, or of a type that is no sleep (`deleted`, `rest`); a daily document without a `day`.
//! A missing or absurd value only drops its Observation.

use chrono::NaiveDate;
use serde_json::Value;

use crate::fhir::activity::{
    end_after, exercise_session, number, observation_identifier, parse_instant, quantity_observations,
    seconds_to_minutes, text, FhirPeriod, Measure, Observed, Session, DAILY_DISTANCE, DAILY_ENERGY, DAILY_STEPS,
    DISTANCE, ENERGY, EXERCISE_DURATION, HRV_RMSSD, MAX_SESSION_SECONDS, MAX_SLEEP_SECONDS, OXYGEN_SATURATION,
    RESTING_HEART_RATE, SLEEP_DEEP, SLEEP_DURATION, SLEEP_LIGHT, SLEEP_REM,
};
use crate::fhir::{MapContext, MapError, ResourceDraft};

/// Procedure value: the workout id; its Observations `<id>:<measure code>`.
pub const WORKOUT_SYSTEM: &str = "https://api.ouraring.com/v2/usercollection/workout";
/// Values `<sleep document id>:<measure code>`.
pub const SLEEP_SYSTEM: &str = "https://api.ouraring.com/v2/usercollection/sleep";
/// Values `<daily_activity document id>:<measure code>`.
pub const DAILY_ACTIVITY_SYSTEM: &str = "https://api.ouraring.com/v2/usercollection/daily_activity";
/// Values `<daily_spo2 document id>:<measure code>`.
pub const DAILY_SPO2_SYSTEM: &str = "https://api.ouraring.com/v2/usercollection/daily_spo2";
/// Every identifier system this mapper writes.
pub const IDENTIFIER_SYSTEMS: &[&str] = &[WORKOUT_SYSTEM, SLEEP_SYSTEM, DAILY_ACTIVITY_SYSTEM, DAILY_SPO2_SYSTEM];

/// The collections mapped, as Oura names them (streams, webhook `data_type`s, object kinds).
pub const WORKOUT: &str = "workout";
pub const SLEEP: &str = "sleep";
pub const DAILY_ACTIVITY: &str = "daily_activity";
pub const DAILY_SPO2: &str = "daily_spo2";

const WORKOUT_MEASURES: [&Measure; 3] = [&EXERCISE_DURATION, &DISTANCE, &ENERGY];
const SLEEP_MEASURES: [&Measure; 6] =
    [&SLEEP_DURATION, &SLEEP_DEEP, &SLEEP_LIGHT, &SLEEP_REM, &RESTING_HEART_RATE, &HRV_RMSSD];
/// Energy is `total_calories` (BMR included), what LOINC 41979-6 "Calories burned in 24 hour
/// Calculated" counts and what Polar's daily `calories` is; `active_calories` would undercount it.
const DAILY_ACTIVITY_MEASURES: [&Measure; 3] = [&DAILY_STEPS, &DAILY_ENERGY, &DAILY_DISTANCE];
const DAILY_SPO2_MEASURES: [&Measure; 1] = [&OXYGEN_SATURATION];

/// The object kind's mapper.
pub fn map(ctx: &MapContext, kind: &str, document: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    match kind {
        WORKOUT => map_workout(ctx, document),
        SLEEP => map_sleep(ctx, document),
        DAILY_ACTIVITY => map_daily_activity(ctx, document),
        DAILY_SPO2 => map_daily_spo2(ctx, document),
        other => Err(MapError(format!("Oura {other} documents are not mapped"))),
    }
}

/// A workout (`GET /v2/usercollection/workout/{id}`): the Procedure over
/// `start_datetime`..`end_datetime` (offsets kept), with its duration, distance (m) and kcal.
pub fn map_workout(ctx: &MapContext, workout: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let id = document_id(workout).ok_or_else(|| MapError("Oura workout without a valid id".into()))?;
    let fail = |what: &str| MapError(format!("Oura workout {id}: {what}"));
    let instant = |key: &str| workout.get(key).and_then(Value::as_str).and_then(parse_instant);
    let start = instant("start_datetime").ok_or_else(|| fail("no valid start_datetime"))?;
    let end = instant("end_datetime").ok_or_else(|| fail("no valid end_datetime"))?;
    end_after(&start, end - start, MAX_SESSION_SECONDS).map_err(|e| fail(&e.0))?;
    let session = Session {
        identifier_system: WORKOUT_SYSTEM,
        identifier_value: &id,
        sport: text(workout.get("activity"), 64),
        title: text(workout.get("label"), 500),
        period: FhirPeriod::between(&start, &end),
        device: None,
    };
    let seconds = (end - start).num_milliseconds() as f64 / 1000.0;
    let values: [(&Measure, Option<f64>); 3] = [
        (&EXERCISE_DURATION, Some(seconds_to_minutes(seconds))),
        (&DISTANCE, number(workout.get("distance"))),
        (&ENERGY, number(workout.get("calories"))),
    ];
    Ok(exercise_session(ctx, &session, &values))
}

/// A sleep period (`GET /v2/usercollection/sleep/{id}`): total sleep (`total_sleep_duration`) and
/// the deep, light and REM stages (seconds → min), over `bedtime_start`..`bedtime_end`; for the
/// main sleep of the day (`type` `long_sleep`) also the night's resting heart rate
/// (`lowest_heart_rate`) and HRV (`average_hrv`, RMSSD in ms) as vital signs. Naps (`sleep`,
/// `late_nap`) give durations only: their lowest heart rate is no resting rate of the day.
pub fn map_sleep(ctx: &MapContext, sleep: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let id = document_id(sleep).ok_or_else(|| MapError("Oura sleep without a valid id".into()))?;
    let fail = |what: &str| MapError(format!("Oura sleep {id}: {what}"));
    let kind = sleep.get("type").and_then(Value::as_str).unwrap_or("long_sleep");
    if !matches!(kind, "long_sleep" | "sleep" | "late_nap") {
        return Err(fail(&format!("type {kind:?} is no sleep")));
    }
    let instant = |key: &str| sleep.get(key).and_then(Value::as_str).and_then(parse_instant);
    let start = instant("bedtime_start").ok_or_else(|| fail("no valid bedtime_start"))?;
    let end = instant("bedtime_end").ok_or_else(|| fail("no valid bedtime_end"))?;
    end_after(&start, end - start, MAX_SLEEP_SECONDS).map_err(|e| fail(&e.0))?;
    let period = FhirPeriod::between(&start, &end);
    let observed = Observed {
        identifier_system: SLEEP_SYSTEM,
        identifier_prefix: &id,
        period: &period,
        part_of: None,
        device: None,
    };
    let minutes = |key: &str| stage_seconds(sleep, key).map(seconds_to_minutes);
    let main = kind == "long_sleep";
    let vital = |key: &str| if main { number(sleep.get(key)) } else { None };
    let values: [(&Measure, Option<f64>); 6] = [
        (&SLEEP_DURATION, minutes("total_sleep_duration")),
        (&SLEEP_DEEP, minutes("deep_sleep_duration")),
        (&SLEEP_LIGHT, minutes("light_sleep_duration")),
        (&SLEEP_REM, minutes("rem_sleep_duration")),
        (&RESTING_HEART_RATE, vital("lowest_heart_rate")),
        (&HRV_RMSSD, vital("average_hrv")),
    ];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// Seconds of one stage, if it is a plausible number.
fn stage_seconds(sleep: &Value, key: &str) -> Option<f64> {
    number(sleep.get(key)).filter(|s| (0.0..=MAX_SLEEP_SECONDS as f64).contains(s))
}

/// A day's activity (`GET /v2/usercollection/daily_activity/{id}`): `steps`, `total_calories`
/// (kcal) and `equivalent_walking_distance` (m) for the `day`.
pub fn map_daily_activity(ctx: &MapContext, summary: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let (id, period) = daily(summary, "daily_activity")?;
    let observed = Observed {
        identifier_system: DAILY_ACTIVITY_SYSTEM,
        identifier_prefix: &id,
        period: &period,
        part_of: None,
        device: None,
    };
    let values: [(&Measure, Option<f64>); 3] = [
        (&DAILY_STEPS, number(summary.get("steps"))),
        (&DAILY_ENERGY, number(summary.get("total_calories"))),
        (&DAILY_DISTANCE, number(summary.get("equivalent_walking_distance"))),
    ];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// A night's SpO2 (`GET /v2/usercollection/daily_spo2/{id}`): `spo2_percentage.average` (%)
/// for the `day` (null when the ring measured none).
pub fn map_daily_spo2(ctx: &MapContext, spo2: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let (id, period) = daily(spo2, "daily_spo2")?;
    let observed = Observed {
        identifier_system: DAILY_SPO2_SYSTEM,
        identifier_prefix: &id,
        period: &period,
        part_of: None,
        device: None,
    };
    let average = number(spo2.get("spo2_percentage").and_then(|p| p.get("average")));
    Ok(quantity_observations(ctx, &observed, &[(&OXYGEN_SATURATION, average)]))
}

/// A daily document's id and day.
fn daily(document: &Value, what: &str) -> Result<(String, FhirPeriod), MapError> {
    let id = document_id(document).ok_or_else(|| MapError(format!("Oura {what} without a valid id")))?;
    let day = document
        .get("day")
        .and_then(Value::as_str)
        .and_then(day)
        .ok_or_else(|| MapError(format!("Oura {what} {id}: no valid day")))?;
    Ok((id, FhirPeriod::day(day)))
}

/// Every (resource type, id) `map` can write for the document, whatever it held (to mark a
/// deleted document `entered-in-error`).
pub fn resource_ids(ctx: &MapContext, kind: &str, document_id: &str) -> Vec<(&'static str, String)> {
    let (system, measures): (&str, &[&Measure]) = match kind {
        WORKOUT => (WORKOUT_SYSTEM, &WORKOUT_MEASURES),
        SLEEP => (SLEEP_SYSTEM, &SLEEP_MEASURES),
        DAILY_ACTIVITY => (DAILY_ACTIVITY_SYSTEM, &DAILY_ACTIVITY_MEASURES),
        DAILY_SPO2 => (DAILY_SPO2_SYSTEM, &DAILY_SPO2_MEASURES),
        _ => return Vec::new(),
    };
    let procedure = (kind == WORKOUT).then(|| ("Procedure", ctx.id_for("Procedure", system, document_id)));
    let observations = measures
        .iter()
        .map(|m| ("Observation", ctx.id_for("Observation", system, &observation_identifier(document_id, m))));
    procedure.into_iter().chain(observations).collect()
}

/// Oura's document ids: UUIDs, or shorter plain ids (the spec's `c80d026a`).
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn document_id(document: &Value) -> Option<String> {
    let id = document.get("id")?.as_str()?.trim();
    valid_id(id).then(|| id.to_string())
}

/// `YYYY-MM-DD` in a plausible year.
fn day(text: &str) -> Option<NaiveDate> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    (1970..=2999).contains(&chrono::Datelike::year(&date)).then_some(date)
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
            provider: "oura".into(),
            remote_user_id: "oura-user-123".into(),
        }
    }

    /// shared/spec/providers.md, "Samples".
    fn workout() -> Value {
        json!({"id":"8f9a5221-639e-4a85-81cb-4065ef23f979","activity":"cycling","calories":300,"day":"2021-01-01",
         "distance":13500.5,"start_datetime":"2021-01-01T00:00:00+00:00","end_datetime":"2021-01-01T01:00:00+00:00",
         "intensity":"moderate","source":"manual"})
    }

    /// The spec's sample, with the resting heart rate and HRV Oura's sleep documents carry.
    fn sleep() -> Value {
        json!({"id":"c80d026a","day":"2024-01-15","type":"long_sleep","bedtime_start":"2024-01-14T23:10:00+01:00",
         "bedtime_end":"2024-01-15T07:05:00+01:00","total_sleep_duration":25200,"deep_sleep_duration":5400,
         "light_sleep_duration":14400,"rem_sleep_duration":5400,"awake_time":3300,"average_heart_rate":54.2,
         "lowest_heart_rate":48,"average_hrv":41})
    }

    fn daily_activity() -> Value {
        json!({"id":"a2c9f3e1-5d2b-4c8e-9f1a-0b7d6e5c4a31","day":"2024-01-15","score":82,"active_calories":520,
         "total_calories":2610,"steps":9876,"equivalent_walking_distance":8120,"target_calories":500,
         "timestamp":"2024-01-15T04:00:00+01:00"})
    }

    fn daily_spo2() -> Value {
        json!({"id":"5b1e0a7c-2f4d-4e6a-8c3b-9d0e1f2a3b4c","day":"2024-01-15","spo2_percentage":{"average":96.4},
         "breathing_disturbance_index":3})
    }

    fn by_code<'a>(drafts: &'a [ResourceDraft], code: &str) -> &'a ResourceDraft {
        drafts.iter().find(|d| d.body["code"]["coding"][0]["code"] == code).unwrap_or_else(|| panic!("no {code}"))
    }

    fn value(drafts: &[ResourceDraft], code: &str) -> Value {
        by_code(drafts, code).body["valueQuantity"]["value"].clone()
    }

    fn codes(drafts: &[ResourceDraft]) -> Vec<String> {
        drafts.iter().map(|d| d.body["code"]["coding"][0]["code"].as_str().unwrap_or("-").to_string()).collect()
    }

    #[test]
    fn the_sample_workout_is_an_hour_of_cycling() {
        let drafts = map_workout(&ctx("p1"), &workout()).unwrap();
        let p = &drafts[0];
        assert_eq!(
            (p.resource_type, p.identifier_system.as_str(), p.identifier_value.as_str()),
            ("Procedure", WORKOUT_SYSTEM, "8f9a5221-639e-4a85-81cb-4065ef23f979")
        );
        assert_eq!(p.body["performedPeriod"], json!({"start": "2021-01-01T00:00:00Z", "end": "2021-01-01T01:00:00Z"}));
        assert_eq!(p.body["code"]["coding"][0]["system"], "https://wearlink.dev/fhir/CodeSystem/oura-sport");
        assert_eq!(p.body["code"]["coding"][0]["code"], "cycling");
        assert_eq!(p.body["extension"][0]["valueCoding"]["code"], "oura");
        assert_eq!(drafts.len(), 4);
        assert_eq!(value(&drafts, "55411-3"), json!(60));
        assert_eq!(by_code(&drafts, "55411-3").body["valueQuantity"]["code"], "min");
        assert_eq!(value(&drafts, "distance"), json!(13500.5));
        assert_eq!(by_code(&drafts, "distance").body["valueQuantity"]["code"], "m");
        assert_eq!(value(&drafts, "55424-6"), json!(300));
        assert_eq!(by_code(&drafts, "55424-6").body["valueQuantity"]["code"], "kcal");
        for o in &drafts[1..] {
            assert_eq!(o.body["partOf"][0]["reference"], format!("Procedure/{}", p.id));
            let code = o.body["code"]["coding"][0]["code"].as_str().unwrap();
            assert_eq!(o.identifier_value, format!("8f9a5221-639e-4a85-81cb-4065ef23f979:{code}"));
        }
    }

    #[test]
    fn workout_offsets_are_kept_and_labels_are_notes() {
        let mut w = workout();
        w["start_datetime"] = json!("2024-03-14T08:02:11-05:00");
        w["end_datetime"] = json!("2024-03-14T08:52:23-05:00");
        w["label"] = json!("Commute");
        w.as_object_mut().unwrap().remove("distance");
        let drafts = map_workout(&ctx("p1"), &w).unwrap();
        let period = &drafts[0].body["performedPeriod"];
        assert_eq!(period["start"], "2024-03-14T08:02:11-05:00");
        assert_eq!(
            parse_instant(period["start"].as_str().unwrap()).unwrap(),
            parse_instant("2024-03-14T13:02:11Z").unwrap()
        );
        assert_eq!(drafts[0].body["note"][0]["text"], "Commute");
        assert_eq!(codes(&drafts[1..]), vec!["55411-3", "55424-6"]);
        assert_eq!(value(&drafts, "55411-3"), json!(50.2));
    }

    #[test]
    fn an_unusable_workout_is_an_error() {
        for (key, bad) in [
            ("id", Value::Null),
            ("id", json!("../x")),
            ("start_datetime", json!("2021-01-01T00:00:00")),
            ("end_datetime", Value::Null),
            ("end_datetime", json!("2020-12-31T23:00:00+00:00")),
            ("end_datetime", json!("2021-01-09T00:00:00+00:00")),
        ] {
            let mut w = workout();
            w[key] = bad.clone();
            assert!(map_workout(&ctx("p1"), &w).is_err(), "{key} = {bad}");
        }
    }

    #[test]
    fn the_sample_sleep_gives_durations_in_minutes_and_the_nights_vitals() {
        let drafts = map_sleep(&ctx("p1"), &sleep()).unwrap();
        assert_eq!(codes(&drafts), vec!["93832-4", "93831-6", "93830-8", "93829-0", "40443-4", "hrv-rmssd"]);
        let total = by_code(&drafts, "93832-4");
        assert_eq!(total.identifier_system, SLEEP_SYSTEM);
        assert_eq!(total.identifier_value, "c80d026a:93832-4");
        assert_eq!(total.body["valueQuantity"], json!({"value": 420, "unit": "min", "system": UCUM, "code": "min"}));
        assert_eq!(total.body["code"]["coding"][0]["system"], LOINC);
        assert_eq!(
            total.body["effectivePeriod"],
            json!({"start": "2024-01-14T23:10:00+01:00", "end": "2024-01-15T07:05:00+01:00"})
        );
        assert_eq!(total.body["category"].as_array().unwrap().len(), 1);
        assert_eq!(value(&drafts, "93831-6"), json!(90));
        assert_eq!(value(&drafts, "93830-8"), json!(240));
        assert_eq!(value(&drafts, "93829-0"), json!(90));
        let rhr = by_code(&drafts, "40443-4");
        assert_eq!(
            rhr.body["valueQuantity"],
            json!({"value": 48, "unit": "beats/minute", "system": UCUM, "code": "/min"})
        );
        assert_eq!(rhr.body["category"][0]["coding"][0]["code"], "vital-signs");
        let hrv = by_code(&drafts, "hrv-rmssd");
        assert_eq!(hrv.body["valueQuantity"], json!({"value": 41, "unit": "ms", "system": UCUM, "code": "ms"}));
        assert_eq!(hrv.identifier_value, "c80d026a:hrv-rmssd");
    }

    #[test]
    fn naps_give_durations_only_and_non_sleeps_are_errors() {
        let mut nap = sleep();
        nap["type"] = json!("late_nap");
        let drafts = map_sleep(&ctx("p1"), &nap).unwrap();
        assert_eq!(codes(&drafts), vec!["93832-4", "93831-6", "93830-8", "93829-0"]);
        let mut absent = sleep();
        let map = absent.as_object_mut().unwrap();
        map.remove("average_hrv");
        map.remove("rem_sleep_duration");
        assert_eq!(codes(&map_sleep(&ctx("p1"), &absent).unwrap()), vec!["93832-4", "93831-6", "93830-8", "40443-4"]);
        for (key, bad) in [
            ("type", json!("deleted")),
            ("type", json!("rest")),
            ("id", Value::Null),
            ("bedtime_start", json!("2024-01-14T23:10:00")),
            ("bedtime_end", json!("2024-01-14T22:00:00+01:00")),
            ("bedtime_end", json!("2024-01-16T07:05:00+01:00")),
        ] {
            let mut s = sleep();
            s[key] = bad.clone();
            assert!(map_sleep(&ctx("p1"), &s).is_err(), "{key} = {bad}");
        }
    }

    #[test]
    fn the_daily_activity_gives_steps_total_kcal_and_distance() {
        let drafts = map_daily_activity(&ctx("p1"), &daily_activity()).unwrap();
        assert_eq!(codes(&drafts), vec!["41950-7", "41979-6", "daily-distance"]);
        let steps = by_code(&drafts, "41950-7");
        assert_eq!(steps.identifier_system, DAILY_ACTIVITY_SYSTEM);
        assert_eq!(steps.identifier_value, "a2c9f3e1-5d2b-4c8e-9f1a-0b7d6e5c4a31:41950-7");
        assert_eq!(steps.body["effectivePeriod"], json!({"start": "2024-01-15", "end": "2024-01-15"}));
        assert_eq!(value(&drafts, "41950-7"), json!(9876));
        // total_calories, not active_calories.
        assert_eq!(
            by_code(&drafts, "41979-6").body["valueQuantity"],
            json!({"value": 2610, "unit": "kcal/day", "system": UCUM, "code": "kcal/d"})
        );
        assert_eq!(
            by_code(&drafts, "daily-distance").body["valueQuantity"],
            json!({"value": 8120, "unit": "m/day", "system": UCUM, "code": "m/d"})
        );
        assert!(map_daily_activity(&ctx("p1"), &json!({"id": "x", "steps": 1})).is_err());
    }

    #[test]
    fn the_daily_spo2_is_a_vital_sign_with_both_codings() {
        let drafts = map_daily_spo2(&ctx("p1"), &daily_spo2()).unwrap();
        assert_eq!(drafts.len(), 1);
        let o = &drafts[0].body;
        assert_eq!(o["code"]["coding"][0]["code"], "2708-6");
        assert_eq!(o["code"]["coding"][1]["code"], "59408-5");
        assert_eq!(o["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(o["valueQuantity"], json!({"value": 96.4, "unit": "%", "system": UCUM, "code": "%"}));
        let mut none = daily_spo2();
        none["spo2_percentage"] = Value::Null;
        assert!(map_daily_spo2(&ctx("p1"), &none).unwrap().is_empty());
    }

    #[test]
    fn resource_ids_cover_everything_a_document_can_write() {
        for (kind, sample) in
            [(WORKOUT, workout()), (SLEEP, sleep()), (DAILY_ACTIVITY, daily_activity()), (DAILY_SPO2, daily_spo2())]
        {
            let drafts = map(&ctx("p1"), kind, &sample).unwrap();
            let ids = resource_ids(&ctx("p1"), kind, sample["id"].as_str().unwrap());
            for d in &drafts {
                assert!(ids.contains(&(d.resource_type, d.id.clone())), "{kind}: {} not listed", d.identifier_value);
            }
        }
        assert!(resource_ids(&ctx("p1"), "tag", "x").is_empty());
        assert!(map(&ctx("p1"), "tag", &json!({})).is_err());
    }

    #[test]
    fn ids_are_stable_and_scoped_to_the_project() {
        for (kind, sample) in [(WORKOUT, workout()), (SLEEP, sleep()), (DAILY_ACTIVITY, daily_activity())] {
            let a = map(&ctx("p1"), kind, &sample).unwrap();
            assert_eq!(a, map(&ctx("p1"), kind, &sample).unwrap());
            let c = map(&ctx("p2"), kind, &sample).unwrap();
            assert!(a.iter().zip(&c).all(|(x, y)| x.id != y.id));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_json_never_panics(value in arbitrary::json_value()) {
            for kind in [WORKOUT, SLEEP, DAILY_ACTIVITY, DAILY_SPO2] {
                let _ = map(&ctx("p1"), kind, &value);
            }
        }

        #[test]
        fn mutated_samples_map_or_fail_cleanly(
            w in arbitrary::mutated(workout()), s in arbitrary::mutated(sleep()), d in arbitrary::mutated(daily_activity())
        ) {
            for drafts in [map_workout(&ctx("p1"), &w), map_sleep(&ctx("p1"), &s), map_daily_activity(&ctx("p1"), &d)]
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
