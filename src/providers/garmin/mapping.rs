//! Garmin Health API summaries (as pushed, or pushed after a backfill request) → FHIR. Pure: no I/O.
//!
//! Field names are Garmin's push payloads (shared/spec/providers.md "Garmin token / push" ◐,
//! confirmed against open-source Garmin clients): every summary has `startTimeInSeconds` (epoch
//! seconds, UTC) and `startTimeOffsetInSeconds` (seconds east of UTC of the user's local time),
//! so times are written as that instant shown at that offset.
//!
//! What makes a payload unusable (a [`MapError`]): an activity without `summaryId`, start or a
//! duration within 0..=7 days; a sleep or daily without `calendarDate` and start; a context
//! without the Garmin user id (sleep and daily identifiers carry it). A missing or absurd measure
//! only drops its Observation.

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde_json::Value;

use crate::fhir::activity::{
    end_after, exercise_session, number, quantity_observations, seconds_to_minutes, text, FhirPeriod, Measure,
    Observed, Session, DAILY_DISTANCE, DAILY_ENERGY, DAILY_STEPS, DISTANCE, ENERGY, EXERCISE_DURATION, HEART_RATE_MAX,
    HEART_RATE_MEAN, MAX_SESSION_SECONDS, MAX_SLEEP_SECONDS, RESTING_HEART_RATE, SLEEP_DEEP, SLEEP_DURATION,
    SLEEP_LIGHT, SLEEP_REM,
};
use crate::fhir::{MapContext, MapError, ResourceDraft};

/// Procedure value: the activity's `summaryId`; its Observations: `<summaryId>:<measure code>`.
pub const ACTIVITY_SYSTEM: &str = "https://apis.garmin.com/wellness-api/rest/activities";
/// Values `<user id>:<calendarDate>:<measure code>` (one night per day: a re-sent, updated
/// summary of the same night is a new version, never a second Observation).
pub const SLEEP_SYSTEM: &str = "https://apis.garmin.com/wellness-api/rest/sleeps";
/// Values `<user id>:<calendarDate>:<measure code>` (Garmin re-sends a day's summary as it grows).
pub const DAILY_SYSTEM: &str = "https://apis.garmin.com/wellness-api/rest/dailies";
pub const IDENTIFIER_SYSTEMS: &[&str] = &[ACTIVITY_SYSTEM, SLEEP_SYSTEM, DAILY_SYSTEM];

/// An activity summary: the session Procedure plus duration, distance, active kcal, mean and
/// maximum heart rate.
pub fn map_activity(ctx: &MapContext, activity: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let id = summary_id(activity).ok_or_else(|| MapError("Garmin activity without summaryId".into()))?;
    let fail = |what: &str| MapError(format!("Garmin activity {id}: {what}"));
    let start = start_of(activity).ok_or_else(|| fail("no valid startTimeInSeconds / startTimeOffsetInSeconds"))?;
    let seconds = number(activity.get("durationInSeconds")).ok_or_else(|| fail("no durationInSeconds"))?;
    let length = crate::fhir::activity::seconds(seconds).ok_or_else(|| fail("no valid durationInSeconds"))?;
    let end = end_after(&start, length, MAX_SESSION_SECONDS).map_err(|e| fail(&e.0))?;
    let session = Session {
        identifier_system: ACTIVITY_SYSTEM,
        identifier_value: &id,
        sport: text(activity.get("activityType"), 64),
        title: text(activity.get("activityName"), 200),
        period: FhirPeriod::between(&start, &end),
        device: text(activity.get("deviceName"), 200),
    };
    let values: [(&Measure, Option<f64>); 5] = [
        (&EXERCISE_DURATION, Some(seconds_to_minutes(seconds))),
        (&DISTANCE, number(activity.get("distanceInMeters"))),
        // Garmin's activity summary has active kcal only (no BMR share): that is the session's energy.
        (&ENERGY, number(activity.get("activeKilocalories"))),
        (&HEART_RATE_MEAN, number(activity.get("averageHeartRateInBeatsPerMinute"))),
        (&HEART_RATE_MAX, number(activity.get("maxHeartRateInBeatsPerMinute"))),
    ];
    Ok(exercise_session(ctx, &session, &values))
}

/// A sleep summary: total sleep (`durationInSeconds`) and deep, light and REM stages, over
/// start..start + duration + awake time, at the summary's offset.
pub fn map_sleep(ctx: &MapContext, sleep: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = remote_user(ctx)?;
    let date = calendar_date(sleep).ok_or_else(|| MapError("Garmin sleep without a valid calendarDate".into()))?;
    let fail = |what: &str| MapError(format!("Garmin sleep {date}: {what}"));
    let start = start_of(sleep).ok_or_else(|| fail("no valid startTimeInSeconds / startTimeOffsetInSeconds"))?;
    let asleep = stage(sleep, "durationInSeconds").ok_or_else(|| fail("no valid durationInSeconds"))?;
    // The night spans the time asleep and the time awake within it.
    let awake = stage(sleep, "awakeDurationInSeconds").unwrap_or(0.0);
    let span = crate::fhir::activity::seconds(asleep + awake).ok_or_else(|| fail("no valid duration"))?;
    let end = end_after(&start, span, MAX_SLEEP_SECONDS).map_err(|e| fail(&e.0))?;
    let period = FhirPeriod::between(&start, &end);
    let prefix = format!("{user}:{date}");
    let observed = Observed {
        identifier_system: SLEEP_SYSTEM,
        identifier_prefix: &prefix,
        period: &period,
        part_of: None,
        device: None,
    };
    let minutes = |key: &str| stage(sleep, key).map(seconds_to_minutes);
    let values: [(&Measure, Option<f64>); 4] = [
        (&SLEEP_DURATION, Some(seconds_to_minutes(asleep))),
        (&SLEEP_DEEP, minutes("deepSleepDurationInSeconds")),
        (&SLEEP_LIGHT, minutes("lightSleepDurationInSeconds")),
        // Garmin names REM `remSleepInSeconds` (not `…DurationInSeconds`); both are read.
        (&SLEEP_REM, minutes("remSleepInSeconds").or_else(|| minutes("remSleepDurationInSeconds"))),
    ];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// A daily summary: steps, distance, energy (active + BMR kcal: the day's total burn, as LOINC
/// 41979-6 "Calories burned in 24 hour" means; active alone when BMR is missing), resting heart
/// rate — for the local `calendarDate`.
pub fn map_daily(ctx: &MapContext, daily: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = remote_user(ctx)?;
    let date = calendar_date(daily).ok_or_else(|| MapError("Garmin daily without a valid calendarDate".into()))?;
    let period = FhirPeriod::day(date);
    let prefix = format!("{user}:{date}");
    let observed = Observed {
        identifier_system: DAILY_SYSTEM,
        identifier_prefix: &prefix,
        period: &period,
        part_of: None,
        device: None,
    };
    let kcal = |key: &str| number(daily.get(key)).filter(|v| *v >= 0.0);
    let energy = match (kcal("activeKilocalories"), kcal("bmrKilocalories")) {
        (Some(active), Some(bmr)) => Some(active + bmr),
        (active, bmr) => active.or(bmr),
    };
    let values: [(&Measure, Option<f64>); 4] = [
        (&DAILY_STEPS, number(daily.get("steps"))),
        (&DAILY_DISTANCE, number(daily.get("distanceInMeters"))),
        (&DAILY_ENERGY, energy),
        (&RESTING_HEART_RATE, number(daily.get("restingHeartRateInBeatsPerMinute"))),
    ];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// `startTimeInSeconds` shown at `startTimeOffsetInSeconds` (−12:00..=+14:00).
fn start_of(summary: &Value) -> Option<DateTime<FixedOffset>> {
    let start = summary.get("startTimeInSeconds")?.as_i64()?;
    let offset = summary.get("startTimeOffsetInSeconds").map_or(Some(0), Value::as_i64)?;
    if !(-12 * 3600..=14 * 3600).contains(&offset) || !(0..=32_503_680_000).contains(&start) {
        return None;
    }
    let utc = DateTime::from_timestamp(start, 0)?;
    Some(utc.with_timezone(&FixedOffset::east_opt(i32::try_from(offset).ok()?)?))
}

/// Seconds of a stage (or a total), if plausible for one night.
fn stage(summary: &Value, key: &str) -> Option<f64> {
    number(summary.get(key)).filter(|s| (0.0..=MAX_SLEEP_SECONDS as f64).contains(s))
}

/// Garmin's summary id (`x153a9f3`, `x153a9f3-5e4f2d80`).
pub fn summary_id(summary: &Value) -> Option<String> {
    let id = crate::providers::id_text(summary.get("summaryId"))?;
    let id = id.trim();
    let plain = (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    plain.then(|| id.to_string())
}

/// `calendarDate` (`YYYY-MM-DD`, the user's local day).
fn calendar_date(summary: &Value) -> Option<NaiveDate> {
    let date = NaiveDate::parse_from_str(summary.get("calendarDate")?.as_str()?, "%Y-%m-%d").ok()?;
    (1970..=2999).contains(&chrono::Datelike::year(&date)).then_some(date)
}

fn remote_user(ctx: &MapContext) -> Result<&str, MapError> {
    let user = ctx.remote_user_id.trim();
    if user.is_empty() || user.len() > 128 {
        return Err(MapError("no Garmin user id for this connection".into()));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::activity::{arbitrary, parse_instant, UCUM};
    use proptest::prelude::*;
    use serde_json::json;

    fn ctx(project: &str) -> MapContext {
        MapContext {
            project_id: project.into(),
            patient_id: "pat-1".into(),
            endpoint_id: "ep-1".into(),
            provider: "garmin".into(),
            remote_user_id: "d3315b10".into(),
        }
    }

    /// The spec's push sample (shared/spec/providers.md, "Garmin token / push").
    fn activity() -> Value {
        json!({"userId":"d3315b10","summaryId":"x153a9f3","activityType":"RUNNING","startTimeInSeconds":1763597760,
         "startTimeOffsetInSeconds":3600,"durationInSeconds":3600,"distanceInMeters":10000.0,"activeKilocalories":650,
         "averageHeartRateInBeatsPerMinute":150,"maxHeartRateInBeatsPerMinute":178})
    }

    fn sleep() -> Value {
        json!({"userId":"d3315b10","summaryId":"x153a9f3-6920b3f0","calendarDate":"2025-11-20",
         "startTimeInSeconds":1763590000,"startTimeOffsetInSeconds":3600,"durationInSeconds":27000,
         "deepSleepDurationInSeconds":5400,"lightSleepDurationInSeconds":14400,"remSleepInSeconds":7200,
         "awakeDurationInSeconds":900})
    }

    fn daily() -> Value {
        json!({"userId":"d3315b10","summaryId":"x153a9f3-6921b0f0","calendarDate":"2025-11-20",
         "startTimeInSeconds":1763593200,"startTimeOffsetInSeconds":3600,"durationInSeconds":86400,"steps":9120,
         "distanceInMeters":7021.5,"activeKilocalories":612,"bmrKilocalories":1688,"restingHeartRateInBeatsPerMinute":52})
    }

    fn by_code<'a>(drafts: &'a [ResourceDraft], code: &str) -> &'a ResourceDraft {
        drafts.iter().find(|d| d.body["code"]["coding"][0]["code"] == code).unwrap_or_else(|| panic!("no {code}"))
    }

    fn value(drafts: &[ResourceDraft], code: &str) -> Value {
        by_code(drafts, code).body["valueQuantity"]["value"].clone()
    }

    #[test]
    fn the_sample_activity_is_a_session_at_its_offset() {
        let drafts = map_activity(&ctx("p1"), &activity()).unwrap();
        let p = &drafts[0];
        assert_eq!(
            (p.resource_type, p.identifier_system.as_str(), p.identifier_value.as_str()),
            ("Procedure", ACTIVITY_SYSTEM, "x153a9f3")
        );
        // 1763597760 = 2025-11-20T00:16:00Z, shown at +01:00.
        assert_eq!(p.body["performedPeriod"]["start"], "2025-11-20T01:16:00+01:00");
        assert_eq!(p.body["performedPeriod"]["end"], "2025-11-20T02:16:00+01:00");
        let start = parse_instant(p.body["performedPeriod"]["start"].as_str().unwrap()).unwrap();
        assert_eq!(start.timestamp(), 1763597760);
        assert_eq!(p.body["code"]["coding"][0]["system"], "https://wearlink.dev/fhir/CodeSystem/garmin-sport");
        assert_eq!(p.body["code"]["coding"][0]["code"], "RUNNING");
        assert_eq!(drafts.len(), 6);
        assert_eq!(value(&drafts, "55411-3"), json!(60));
        assert_eq!(value(&drafts, "distance"), json!(10000));
        assert_eq!(value(&drafts, "55424-6"), json!(650));
        assert_eq!(value(&drafts, "55425-3"), json!(150));
        assert_eq!(value(&drafts, "55426-1"), json!(178));
        for o in &drafts[1..] {
            assert_eq!(o.body["partOf"][0]["reference"], format!("Procedure/{}", p.id));
            let code = o.body["code"]["coding"][0]["code"].as_str().unwrap();
            assert_eq!(o.identifier_value, format!("x153a9f3:{code}"));
        }
    }

    #[test]
    fn a_negative_offset_shows_the_same_instant() {
        let mut a = activity();
        a["startTimeOffsetInSeconds"] = json!(-18000);
        let p = &map_activity(&ctx("p1"), &a).unwrap()[0];
        assert_eq!(p.body["performedPeriod"]["start"], "2025-11-19T19:16:00-05:00");
    }

    #[test]
    fn an_unusable_activity_is_an_error() {
        for (key, bad) in [
            ("summaryId", Value::Null),
            ("summaryId", json!("../x")),
            ("startTimeInSeconds", Value::Null),
            ("startTimeInSeconds", json!("1763597760")),
            ("startTimeOffsetInSeconds", json!(90000)),
            ("durationInSeconds", Value::Null),
            ("durationInSeconds", json!(-1)),
            ("durationInSeconds", json!(8 * 86400)),
        ] {
            let mut a = activity();
            a[key] = bad.clone();
            assert!(map_activity(&ctx("p1"), &a).is_err(), "{key} = {bad}");
        }
    }

    #[test]
    fn missing_or_absurd_measures_drop_only_themselves() {
        let mut a = activity();
        a.as_object_mut().unwrap().remove("distanceInMeters");
        a["maxHeartRateInBeatsPerMinute"] = json!(900);
        let drafts = map_activity(&ctx("p1"), &a).unwrap();
        let codes: Vec<_> = drafts[1..].iter().map(|d| d.body["code"]["coding"][0]["code"].clone()).collect();
        assert_eq!(codes, vec![json!("55411-3"), json!("55424-6"), json!("55425-3")]);
    }

    #[test]
    fn the_sleep_totals_450_minutes_with_stages_in_minutes() {
        let drafts = map_sleep(&ctx("p1"), &sleep()).unwrap();
        assert_eq!(drafts.len(), 4);
        let total = by_code(&drafts, "93832-4");
        assert_eq!(total.identifier_system, SLEEP_SYSTEM);
        assert_eq!(total.identifier_value, "d3315b10:2025-11-20:93832-4");
        assert_eq!(total.body["valueQuantity"], json!({"value": 450, "unit": "min", "system": UCUM, "code": "min"}));
        // 1763590000 = 2025-11-19T22:06:40Z; the night spans asleep + awake (27900 s).
        assert_eq!(
            total.body["effectivePeriod"],
            json!({"start": "2025-11-19T23:06:40+01:00", "end": "2025-11-20T06:51:40+01:00"})
        );
        assert_eq!(value(&drafts, "93831-6"), json!(90));
        assert_eq!(value(&drafts, "93830-8"), json!(240));
        assert_eq!(value(&drafts, "93829-0"), json!(120));
    }

    #[test]
    fn an_unusable_sleep_is_an_error() {
        for (key, bad) in [
            ("calendarDate", Value::Null),
            ("calendarDate", json!("20.11.2025")),
            ("startTimeInSeconds", Value::Null),
            ("durationInSeconds", json!(-5)),
            ("durationInSeconds", json!(100_000)),
        ] {
            let mut s = sleep();
            s[key] = bad.clone();
            assert!(map_sleep(&ctx("p1"), &s).is_err(), "{key} = {bad}");
        }
        let no_user = MapContext { remote_user_id: " ".into(), ..ctx("p1") };
        assert!(map_sleep(&no_user, &sleep()).is_err());
        assert!(map_daily(&no_user, &daily()).is_err());
    }

    #[test]
    fn the_daily_gives_steps_distance_total_kcal_and_resting_rate() {
        let drafts = map_daily(&ctx("p1"), &daily()).unwrap();
        assert_eq!(drafts.len(), 4);
        let steps = by_code(&drafts, "41950-7");
        assert_eq!(steps.identifier_system, DAILY_SYSTEM);
        assert_eq!(steps.identifier_value, "d3315b10:2025-11-20:41950-7");
        assert_eq!(steps.body["effectivePeriod"], json!({"start": "2025-11-20", "end": "2025-11-20"}));
        assert_eq!(value(&drafts, "41950-7"), json!(9120));
        assert_eq!(value(&drafts, "daily-distance"), json!(7021.5));
        // active 612 + BMR 1688 kcal: the day's total burn.
        assert_eq!(
            by_code(&drafts, "41979-6").body["valueQuantity"],
            json!({"value": 2300, "unit": "kcal/day", "system": UCUM, "code": "kcal/d"})
        );
        let resting = by_code(&drafts, "40443-4");
        assert_eq!(resting.body["valueQuantity"]["value"], json!(52));
        assert_eq!(resting.body["category"][0]["coding"][0]["code"], "vital-signs");
        let mut active_only = daily();
        active_only.as_object_mut().unwrap().remove("bmrKilocalories");
        assert_eq!(value(&map_daily(&ctx("p1"), &active_only).unwrap(), "41979-6"), json!(612));
        assert!(map_daily(&ctx("p1"), &json!({"steps": 10})).is_err());
    }

    #[test]
    fn ids_are_stable_and_scoped_to_the_project() {
        for mapper in [map_activity, map_sleep, map_daily] {
            for sample in [activity(), sleep(), daily()] {
                let (Ok(a), Ok(b), Ok(c)) =
                    (mapper(&ctx("p1"), &sample), mapper(&ctx("p1"), &sample), mapper(&ctx("p2"), &sample))
                else {
                    continue;
                };
                assert_eq!(a, b);
                assert!(a.iter().zip(&c).all(|(x, y)| x.id != y.id));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_json_never_panics(value in arbitrary::json_value()) {
            let _ = map_activity(&ctx("p1"), &value);
            let _ = map_sleep(&ctx("p1"), &value);
            let _ = map_daily(&ctx("p1"), &value);
        }

        #[test]
        fn mutated_samples_map_or_fail_cleanly(
            a in arbitrary::mutated(activity()), s in arbitrary::mutated(sleep()), d in arbitrary::mutated(daily())
        ) {
            for drafts in [map_activity(&ctx("p1"), &a), map_sleep(&ctx("p1"), &s), map_daily(&ctx("p1"), &d)]
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
