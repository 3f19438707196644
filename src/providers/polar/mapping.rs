//! Polar AccessLink v3 data → FHIR (shared/spec/data-sync.md, "The mapping"; field names from
//! Polar's OpenAPI: exercises, sleep, daily activity). Pure: no I/O.
//!
//! What makes a payload unusable (a [`MapError`]): an exercise without id, start, offset or a
//! duration within 0..=7 days; a sleep without date or a start/end pair at most 24 h apart; a
//! daily summary without a day; a context without the Polar user id (every sleep and daily
//! identifier carries it). A missing or absurd measure only drops its Observation.

use chrono::NaiveDate;
use serde_json::Value;

use crate::fhir::activity::{
    end_after, exercise_session, local_with_offset, number, parse_instant, parse_iso_duration, quantity_observations,
    seconds_to_minutes, text, FhirPeriod, Measure, Observed, Session, DAILY_ENERGY, DAILY_STEPS, DISTANCE, ENERGY,
    EXERCISE_DURATION, HEART_RATE_MAX, HEART_RATE_MEAN, MAX_SESSION_SECONDS, MAX_SLEEP_SECONDS, SLEEP_DEEP,
    SLEEP_DURATION, SLEEP_LIGHT, SLEEP_REM,
};
use crate::fhir::{MapContext, MapError, ResourceDraft};

/// Procedure value: the hashed exercise id; its Observations: `<id>:<measure code>`.
pub const EXERCISE_SYSTEM: &str = "https://www.polaraccesslink.com/v3/exercises";
/// Values `<user id>:<date>:<measure code>`.
pub const SLEEP_SYSTEM: &str = "https://www.polaraccesslink.com/v3/users/sleep";
/// Values `<user id>:<date>:<measure code>`.
pub const DAILY_ACTIVITY_SYSTEM: &str = "https://www.polaraccesslink.com/v3/users/activities";
/// Every identifier system this mapper writes.
pub const IDENTIFIER_SYSTEMS: &[&str] = &[EXERCISE_SYSTEM, SLEEP_SYSTEM, DAILY_ACTIVITY_SYSTEM];

/// An exercise (`GET /v3/exercises/{id}`): the session Procedure plus its summary Observations.
/// `start_time` is local wall time; `start_time_utc_offset` minutes east of UTC place it.
pub fn map_exercise(ctx: &MapContext, exercise: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let id = exercise_id(exercise.get("id")).ok_or_else(|| MapError("Polar exercise without id".into()))?;
    let fail = |what: &str| MapError(format!("Polar exercise {id}: {what}"));
    let offset = exercise.get("start_time_utc_offset").and_then(Value::as_i64).ok_or_else(|| fail("no offset"))?;
    let start = exercise
        .get("start_time")
        .and_then(Value::as_str)
        .and_then(|local| local_with_offset(local, offset))
        .ok_or_else(|| fail("no valid start_time"))?;
    let duration = exercise
        .get("duration")
        .and_then(Value::as_str)
        .and_then(parse_iso_duration)
        .ok_or_else(|| fail("no valid duration"))?;
    let end = end_after(&start, duration, MAX_SESSION_SECONDS).map_err(|e| fail(&e.0))?;
    let session = Session {
        identifier_system: EXERCISE_SYSTEM,
        identifier_value: &id,
        sport: text(exercise.get("detailed_sport_info"), 64).or_else(|| text(exercise.get("sport"), 64)),
        title: None,
        period: FhirPeriod::between(&start, &end),
        device: text(exercise.get("device"), 200),
    };
    let seconds = duration.num_milliseconds() as f64 / 1000.0;
    let heart = exercise.get("heart_rate");
    let values: [(&Measure, Option<f64>); 5] = [
        (&EXERCISE_DURATION, Some(seconds_to_minutes(seconds))),
        (&DISTANCE, number(exercise.get("distance"))),
        (&ENERGY, number(exercise.get("calories"))),
        (&HEART_RATE_MEAN, number(heart.and_then(|h| h.get("average")))),
        (&HEART_RATE_MAX, number(heart.and_then(|h| h.get("maximum")))),
    ];
    Ok(exercise_session(ctx, &session, &values))
}

/// A night (`GET /v3/users/sleep/{date}`): total sleep (light + deep + REM + unrecognised) and
/// one Observation per stage, over `sleep_start_time`..`sleep_end_time` with Polar's offsets.
pub fn map_sleep(ctx: &MapContext, sleep: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = remote_user(ctx)?;
    let date = sleep
        .get("date")
        .and_then(Value::as_str)
        .and_then(day)
        .ok_or_else(|| MapError("Polar sleep without a valid date".into()))?;
    let fail = |what: &str| MapError(format!("Polar sleep {date}: {what}"));
    let instant = |key: &str| sleep.get(key).and_then(Value::as_str).and_then(parse_instant);
    let start = instant("sleep_start_time").ok_or_else(|| fail("no valid sleep_start_time"))?;
    let end = instant("sleep_end_time").ok_or_else(|| fail("no valid sleep_end_time"))?;
    end_after(&start, end - start, MAX_SLEEP_SECONDS).map_err(|e| fail(&e.0))?;
    let period = FhirPeriod::between(&start, &end);
    let prefix = format!("{user}:{date}");
    let observed = Observed {
        identifier_system: SLEEP_SYSTEM,
        identifier_prefix: &prefix,
        period: &period,
        part_of: None,
        device: None,
    };
    let minutes = |key: &str| stage_seconds(sleep, key).map(seconds_to_minutes);
    let values: [(&Measure, Option<f64>); 4] = [
        (&SLEEP_DURATION, total_sleep_seconds(sleep).map(seconds_to_minutes)),
        (&SLEEP_DEEP, minutes("deep_sleep")),
        (&SLEEP_LIGHT, minutes("light_sleep")),
        (&SLEEP_REM, minutes("rem_sleep")),
    ];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// Seconds of one stage, if it is a plausible number.
fn stage_seconds(sleep: &Value, key: &str) -> Option<f64> {
    number(sleep.get(key)).filter(|s| (0.0..=MAX_SLEEP_SECONDS as f64).contains(s))
}

/// Light + deep + REM (all required) + unrecognised (0 when absent). Interruptions are wake time.
fn total_sleep_seconds(sleep: &Value) -> Option<f64> {
    let unrecognized = match sleep.get("unrecognized_sleep_stage") {
        None | Some(Value::Null) => 0.0,
        Some(_) => stage_seconds(sleep, "unrecognized_sleep_stage")?,
    };
    let stages = ["light_sleep", "deep_sleep", "rem_sleep"].map(|key| stage_seconds(sleep, key));
    stages.into_iter().sum::<Option<f64>>().map(|s| s + unrecognized)
}

/// A daily activity summary (`GET /v3/users/activities/{date}`): steps and kcal for the day.
/// The non-transactional summary has no `date`, only local `start_time`/`end_time` of the day
/// (`2026-06-10T00:00`), so the day comes from `date` when present, else from `start_time`.
pub fn map_daily_activity(ctx: &MapContext, summary: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = remote_user(ctx)?;
    let text_of = |key: &str| summary.get(key).and_then(Value::as_str);
    let date = text_of("date")
        .and_then(day)
        .or_else(|| text_of("start_time").and_then(|s| s.get(..10)).and_then(day))
        .ok_or_else(|| MapError("Polar daily activity without a valid date or start_time".into()))?;
    let period = FhirPeriod::day(date);
    let prefix = format!("{user}:{date}");
    let observed = Observed {
        identifier_system: DAILY_ACTIVITY_SYSTEM,
        identifier_prefix: &prefix,
        period: &period,
        part_of: None,
        device: None,
    };
    let values: [(&Measure, Option<f64>); 2] =
        [(&DAILY_STEPS, number(summary.get("steps"))), (&DAILY_ENERGY, number(summary.get("calories")))];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// Polar's hashed id (`2AC312F`); a number is accepted as its decimal text.
fn exercise_id(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => {
            let s = s.trim();
            let plain =
                (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            plain.then(|| s.to_string())
        }
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        _ => None,
    }
}

/// `YYYY-MM-DD` in a plausible year.
fn day(text: &str) -> Option<NaiveDate> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    (1970..=2999).contains(&chrono::Datelike::year(&date)).then_some(date)
}

fn remote_user(ctx: &MapContext) -> Result<&str, MapError> {
    let user = ctx.remote_user_id.trim();
    if user.is_empty() || user.len() > 64 {
        return Err(MapError("no Polar user id for this connection".into()));
    }
    Ok(user)
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
            provider: "polar".into(),
            remote_user_id: "64323403".into(),
        }
    }

    fn exercise() -> Value {
        json!({"id":"2AC312F","upload_time":"2026-03-14T09:10:05.000Z","device":"Polar Pacer Pro",
         "start_time":"2026-03-14T08:02:11","start_time_utc_offset":60,"duration":"PT50M12S","calories":742,
         "distance":10021.4,"heart_rate":{"average":151,"maximum":178},"sport":"RUNNING",
         "detailed_sport_info":"RUNNING","has_route":true})
    }

    fn sleep() -> Value {
        json!({"date":"2026-03-15","sleep_start_time":"2026-03-14T23:41:07+01:00",
         "sleep_end_time":"2026-03-15T07:12:37+01:00","light_sleep":14400,"deep_sleep":5400,"rem_sleep":5040,
         "unrecognized_sleep_stage":360,"total_interruption_duration":1890,"sleep_score":78})
    }

    /// The non-transactional summary as Polar's OpenAPI describes it (no `date`).
    fn daily() -> Value {
        json!({"start_time":"2026-06-10T00:00","end_time":"2026-06-10T23:59:59","active_duration":"PT8H19M",
         "inactive_duration":"PT7H12M30S","daily_activity":164.44,"calories":2100,"active_calories":400,
         "steps":8500,"inactivity_alert_count":1,"distance_from_steps":5877.54})
    }

    fn by_code<'a>(drafts: &'a [ResourceDraft], code: &str) -> &'a ResourceDraft {
        drafts.iter().find(|d| d.body["code"]["coding"][0]["code"] == code).unwrap_or_else(|| panic!("no {code}"))
    }

    fn value(drafts: &[ResourceDraft], code: &str) -> Value {
        by_code(drafts, code).body["valueQuantity"]["value"].clone()
    }

    #[test]
    fn the_sample_exercise_starts_at_0702_utc_with_its_offset_kept() {
        let drafts = map_exercise(&ctx("p1"), &exercise()).unwrap();
        let p = &drafts[0];
        assert_eq!(
            (p.resource_type, p.identifier_system.as_str(), p.identifier_value.as_str()),
            ("Procedure", EXERCISE_SYSTEM, "2AC312F")
        );
        let period = &p.body["performedPeriod"];
        assert_eq!(period["start"], "2026-03-14T08:02:11+01:00");
        assert_eq!(period["end"], "2026-03-14T08:52:23+01:00");
        let start = parse_instant(period["start"].as_str().unwrap()).unwrap();
        assert_eq!(start, parse_instant("2026-03-14T07:02:11Z").unwrap());
        assert_eq!(p.body["code"]["coding"][0]["system"], "https://wearlink.dev/fhir/CodeSystem/polar-sport");
        assert_eq!(p.body["code"]["coding"][0]["code"], "RUNNING");
        assert_eq!(p.body["code"]["text"], "Running");
        assert_eq!(p.body["usedReference"][0]["display"], "Polar Pacer Pro");
        assert_eq!(p.body["extension"][0]["valueCoding"]["code"], "polar");

        assert_eq!(drafts.len(), 6);
        assert_eq!(value(&drafts, "55411-3"), json!(50.2));
        assert_eq!(value(&drafts, "distance"), json!(10021.4));
        assert_eq!(value(&drafts, "55424-6"), json!(742));
        assert_eq!(value(&drafts, "55425-3"), json!(151));
        assert_eq!(value(&drafts, "55426-1"), json!(178));
        for o in &drafts[1..] {
            assert_eq!(o.body["partOf"][0]["reference"], format!("Procedure/{}", p.id));
            let code = o.body["code"]["coding"][0]["code"].as_str().unwrap();
            assert_eq!(o.identifier_value, format!("2AC312F:{code}"));
            assert_eq!(o.body["category"].as_array().unwrap().len(), 2);
        }
    }

    #[test]
    fn the_offset_is_subtracted_not_added() {
        let mut e = exercise();
        e["start_time_utc_offset"] = json!(-300);
        let p = &map_exercise(&ctx("p1"), &e).unwrap()[0];
        let start = parse_instant(p.body["performedPeriod"]["start"].as_str().unwrap()).unwrap();
        assert_eq!(start, parse_instant("2026-03-14T13:02:11Z").unwrap());
        assert_eq!(p.body["performedPeriod"]["start"], "2026-03-14T08:02:11-05:00");
    }

    #[test]
    fn fractional_durations_end_to_the_millisecond() {
        let mut e = exercise();
        e["duration"] = json!("PT210.026S");
        let drafts = map_exercise(&ctx("p1"), &e).unwrap();
        assert_eq!(drafts[0].body["performedPeriod"]["end"], "2026-03-14T08:05:41.026+01:00");
        assert_eq!(value(&drafts, "55411-3"), json!(3.5));
    }

    #[test]
    fn sport_falls_back_and_missing_measures_drop() {
        let mut e = exercise();
        let map = e.as_object_mut().unwrap();
        map.remove("detailed_sport_info");
        map.remove("distance");
        map.insert("sport".into(), json!("OTHER"));
        map.insert("heart_rate".into(), json!({"average": 0}));
        let drafts = map_exercise(&ctx("p1"), &e).unwrap();
        assert_eq!(drafts[0].body["code"]["coding"][0]["code"], "OTHER");
        let codes: Vec<_> = drafts[1..].iter().map(|d| d.body["code"]["coding"][0]["code"].clone()).collect();
        assert_eq!(codes, vec![json!("55411-3"), json!("55424-6")]);
    }

    #[test]
    fn an_unusable_exercise_is_an_error() {
        for (key, bad) in [
            ("id", Value::Null),
            ("id", json!("../x")),
            ("start_time", json!("2026-03-14T08:02:11+01:00")),
            ("start_time_utc_offset", Value::Null),
            ("start_time_utc_offset", json!(2000)),
            ("duration", json!("3012")),
            ("duration", json!("P8D")),
        ] {
            let mut e = exercise();
            e[key] = bad.clone();
            assert!(map_exercise(&ctx("p1"), &e).is_err(), "{key} = {bad}");
        }
    }

    #[test]
    fn the_sample_sleep_totals_420_minutes() {
        let drafts = map_sleep(&ctx("p1"), &sleep()).unwrap();
        assert_eq!(drafts.len(), 4);
        let total = by_code(&drafts, "93832-4");
        assert_eq!(total.identifier_system, SLEEP_SYSTEM);
        assert_eq!(total.identifier_value, "64323403:2026-03-15:93832-4");
        assert_eq!(total.body["valueQuantity"], json!({"value": 420, "unit": "min", "system": UCUM, "code": "min"}));
        assert_eq!(total.body["code"]["coding"][0]["system"], LOINC);
        assert_eq!(total.body["code"]["coding"][0]["display"], "Sleep duration");
        assert_eq!(
            total.body["effectivePeriod"],
            json!({"start": "2026-03-14T23:41:07+01:00", "end": "2026-03-15T07:12:37+01:00"})
        );
        // Sleep is not physical activity: only observation-category#activity.
        assert_eq!(total.body["category"].as_array().unwrap().len(), 1);
        assert!(total.body.get("partOf").is_none());
        assert_eq!(value(&drafts, "93831-6"), json!(90));
        assert_eq!(value(&drafts, "93830-8"), json!(240));
        assert_eq!(value(&drafts, "93829-0"), json!(84));
        assert_eq!(by_code(&drafts, "93829-0").identifier_value, "64323403:2026-03-15:93829-0");
    }

    #[test]
    fn a_sleep_without_stages_writes_no_total() {
        let mut s = sleep();
        s.as_object_mut().unwrap().remove("rem_sleep");
        s["light_sleep"] = json!(-5);
        let drafts = map_sleep(&ctx("p1"), &s).unwrap();
        let codes: Vec<_> = drafts.iter().map(|d| d.body["code"]["coding"][0]["code"].clone()).collect();
        assert_eq!(codes, vec![json!("93831-6")]);
        let mut s = sleep();
        s.as_object_mut().unwrap().remove("unrecognized_sleep_stage");
        assert_eq!(value(&map_sleep(&ctx("p1"), &s).unwrap(), "93832-4"), json!(414));
    }

    #[test]
    fn an_unusable_sleep_is_an_error() {
        for (key, bad) in [
            ("date", Value::Null),
            ("date", json!("15.03.2026")),
            ("sleep_start_time", json!("2026-03-14T23:41:07")),
            ("sleep_end_time", Value::Null),
            ("sleep_end_time", json!("2026-03-14T23:00:00+01:00")),
            ("sleep_end_time", json!("2026-03-16T07:12:37+01:00")),
        ] {
            let mut s = sleep();
            s[key] = bad.clone();
            assert!(map_sleep(&ctx("p1"), &s).is_err(), "{key} = {bad}");
        }
        let mut no_user = ctx("p1");
        no_user.remote_user_id = " ".into();
        assert!(map_sleep(&no_user, &sleep()).is_err());
        assert!(map_daily_activity(&no_user, &daily()).is_err());
    }

    #[test]
    fn the_daily_summary_gives_steps_and_kcal_for_the_day() {
        let drafts = map_daily_activity(&ctx("p1"), &daily()).unwrap();
        assert_eq!(drafts.len(), 2);
        let steps = by_code(&drafts, "41950-7");
        assert_eq!(steps.identifier_system, DAILY_ACTIVITY_SYSTEM);
        assert_eq!(steps.identifier_value, "64323403:2026-06-10:41950-7");
        assert_eq!(
            steps.body["valueQuantity"],
            json!({"value": 8500, "unit": "steps/day", "system": UCUM, "code": "/d"})
        );
        assert_eq!(steps.body["effectivePeriod"], json!({"start": "2026-06-10", "end": "2026-06-10"}));
        let kcal = by_code(&drafts, "41979-6");
        assert_eq!(
            kcal.body["valueQuantity"],
            json!({"value": 2100, "unit": "kcal/day", "system": UCUM, "code": "kcal/d"})
        );
        assert_eq!(kcal.identifier_value, "64323403:2026-06-10:41979-6");
        // `date` wins when the older summary shape carries it.
        let mut with_date = daily();
        with_date["date"] = json!("2026-06-11");
        assert_eq!(
            map_daily_activity(&ctx("p1"), &with_date).unwrap()[0].identifier_value,
            "64323403:2026-06-11:41950-7"
        );
        assert!(map_daily_activity(&ctx("p1"), &json!({"steps": 10})).is_err());
    }

    #[test]
    fn ids_are_stable_and_scoped_to_the_project() {
        for mapper in [map_exercise, map_sleep, map_daily_activity] {
            for sample in [exercise(), sleep(), daily()] {
                let (Ok(a), Ok(b), Ok(c)) =
                    (mapper(&ctx("p1"), &sample), mapper(&ctx("p1"), &sample), mapper(&ctx("p2"), &sample))
                else {
                    continue;
                };
                assert_eq!(a, b);
                assert!(a.iter().zip(&c).all(|(x, y)| x.id != y.id));
            }
        }
        let other_user = MapContext { remote_user_id: "1".into(), ..ctx("p1") };
        let mine = map_sleep(&ctx("p1"), &sleep()).unwrap();
        let theirs = map_sleep(&other_user, &sleep()).unwrap();
        assert!(mine.iter().zip(&theirs).all(|(x, y)| x.id != y.id));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_json_never_panics(value in arbitrary::json_value()) {
            let _ = map_exercise(&ctx("p1"), &value);
            let _ = map_sleep(&ctx("p1"), &value);
            let _ = map_daily_activity(&ctx("p1"), &value);
        }

        #[test]
        fn mutated_samples_map_or_fail_cleanly(
            e in arbitrary::mutated(exercise()), s in arbitrary::mutated(sleep()), d in arbitrary::mutated(daily())
        ) {
            for drafts in [map_exercise(&ctx("p1"), &e), map_sleep(&ctx("p1"), &s), map_daily_activity(&ctx("p1"), &d)]
                .into_iter()
                .flatten()
            {
                for o in drafts.iter().filter(|d| d.resource_type == "Observation") {
                    let v = o.body["valueQuantity"]["value"].as_f64().unwrap();
                    prop_assert!(v.is_finite() && v >= 0.0);
                }
            }
        }

        #[test]
        fn any_offset_places_the_start_at_local_minus_offset(
            offset in -720i64..=840, secs in 0i64..2_000_000_000, duration_s in 0u32..86_400
        ) {
            let local = chrono::DateTime::from_timestamp(secs, 0).unwrap().naive_utc();
            let mut e = exercise();
            e["start_time"] = json!(local.format("%Y-%m-%dT%H:%M:%S").to_string());
            e["start_time_utc_offset"] = json!(offset);
            e["duration"] = json!(format!("PT{duration_s}S"));
            let drafts = map_exercise(&ctx("p1"), &e).unwrap();
            let period = &drafts[0].body["performedPeriod"];
            let start = parse_instant(period["start"].as_str().unwrap()).unwrap();
            let end = parse_instant(period["end"].as_str().unwrap()).unwrap();
            prop_assert_eq!(start.naive_utc(), local - chrono::TimeDelta::minutes(offset));
            prop_assert_eq!(start.offset().local_minus_utc() as i64, offset * 60);
            prop_assert_eq!((end - start).num_seconds(), i64::from(duration_s));
        }
    }
}
