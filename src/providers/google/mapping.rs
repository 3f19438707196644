//! Google Health API v4 data points → FHIR (shared/spec/data-sync.md, "The mapping"). Pure.
//!
//! Field names from Google's v4 reference (developers.google.com/health/reference/rest/v4, the
//! workouts and sleep guides): a data point is `{name: "users/{user}/dataTypes/{type}/dataPoints/
//! {id}", <type in camelCase>: {...}}`. Sessions carry `interval {startTime, startUtcOffset,
//! endTime, endUtcOffset}` (instants in UTC, offsets as protobuf durations `"3600s"`), daily
//! types a civil `date {year, month, day}`. int64 fields arrive as JSON strings (protobuf's
//! JSON mapping), so numbers are read from numbers or numeric strings.
//!
//! A [`MapError`]: a data point without id or interval, an interval over 7 days (24 h for sleep),
//! a daily point without a valid date, no user id on the connection. A missing or absurd measure
//! only drops its Observation.

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde_json::Value;

use crate::fhir::activity::{
    end_after, exercise_session, parse_instant, quantity_observations, seconds_to_minutes, text, FhirPeriod, Measure,
    Observed, Session, DAILY_DISTANCE, DAILY_ENERGY, DAILY_STEPS, DISTANCE, ENERGY, EXERCISE_DURATION, HEART_RATE_MEAN,
    HRV_RMSSD, MAX_SESSION_SECONDS, MAX_SLEEP_SECONDS, OXYGEN_SATURATION, RESTING_HEART_RATE, SLEEP_DEEP,
    SLEEP_DURATION, SLEEP_LIGHT, SLEEP_REM,
};
use crate::fhir::{MapContext, MapError, ResourceDraft};

/// Procedure value `<healthUserId>:<data point id>`; its Observations `…:<measure code>`.
pub const EXERCISE_SYSTEM: &str = "https://health.googleapis.com/v4/dataTypes/exercise/dataPoints";
/// Values `<healthUserId>:<data point id>:<measure code>`.
pub const SLEEP_SYSTEM: &str = "https://health.googleapis.com/v4/dataTypes/sleep/dataPoints";
/// Daily vitals: values `<healthUserId>:<date>:<measure code>`.
pub const DAILY_SYSTEM: &str = "https://health.googleapis.com/v4/dataTypes/daily";
pub const IDENTIFIER_SYSTEMS: &[&str] = &[EXERCISE_SYSTEM, SLEEP_SYSTEM, DAILY_SYSTEM];

/// A number, or a string holding one (int64 in protobuf JSON).
fn num(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|v| v.is_finite())
}

/// The data point's id: the last segment of `name`, which must be
/// `users/{user}/dataTypes/{type}/dataPoints/{id}` with plain segments.
pub fn point_id(point: &Value) -> Option<String> {
    let name = point.get("name")?.as_str()?;
    let parts: Vec<&str> = name.split('/').collect();
    let plain = |s: &str| {
        (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let shaped = parts.len() == 6
        && (parts[0], parts[2], parts[4]) == ("users", "dataTypes", "dataPoints")
        && parts.iter().all(|p| plain(p));
    shaped.then(|| parts[5].to_string())
}

/// A protobuf duration (`"3600s"`, `"-18000s"`, `"3012.5s"`) in seconds.
pub fn duration_seconds(value: Option<&Value>) -> Option<f64> {
    let text = value?.as_str()?.trim().strip_suffix('s')?;
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `startTime` (or `endTime`) in the offset Google gives beside it, so the local time is kept;
/// an instant that carries its own offset keeps it when no offset is given.
fn instant(interval: &Value, time: &str, offset: &str) -> Option<DateTime<FixedOffset>> {
    let at = parse_instant(interval.get(time)?.as_str()?)?;
    match duration_seconds(interval.get(offset)) {
        Some(seconds) if (-50_400.0..=50_400.0).contains(&seconds) => {
            Some(at.with_timezone(&FixedOffset::east_opt(seconds as i32)?))
        }
        Some(_) => None,
        None => Some(at),
    }
}

fn interval_of(
    body: &Value,
    max_seconds: i64,
    fail: &dyn Fn(&str) -> MapError,
) -> Result<(DateTime<FixedOffset>, DateTime<FixedOffset>), MapError> {
    let interval = body.get("interval").ok_or_else(|| fail("no interval"))?;
    let start = instant(interval, "startTime", "startUtcOffset").ok_or_else(|| fail("no valid startTime"))?;
    let end = instant(interval, "endTime", "endUtcOffset").ok_or_else(|| fail("no valid endTime"))?;
    end_after(&start, end - start, max_seconds).map_err(|e| fail(&e.0))?;
    Ok((start, end))
}

fn remote_user(ctx: &MapContext) -> Result<&str, MapError> {
    let user = ctx.remote_user_id.trim();
    if user.is_empty() || user.len() > 63 {
        return Err(MapError("no Google health user id for this connection".into()));
    }
    Ok(user)
}

/// An exercise data point: the session Procedure plus duration, distance, kcal and mean heart
/// rate from `metricsSummary` (`caloriesKcal`, `distanceMillimeters` → m,
/// `averageHeartRateBeatsPerMinute`). Moving time is `activeDuration` when given, else the interval.
pub fn map_exercise(ctx: &MapContext, point: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = remote_user(ctx)?;
    let id = point_id(point).ok_or_else(|| MapError("Google exercise without a data point name".into()))?;
    let fail = |what: &str| MapError(format!("Google exercise {id}: {what}"));
    let exercise = point.get("exercise").ok_or_else(|| fail("no exercise"))?;
    let (start, end) = interval_of(exercise, MAX_SESSION_SECONDS, &fail)?;
    let value = format!("{user}:{id}");
    let session = Session {
        identifier_system: EXERCISE_SYSTEM,
        identifier_value: &value,
        sport: text(exercise.get("exerciseType"), 64),
        title: text(exercise.get("displayName"), 200),
        period: FhirPeriod::between(&start, &end),
        device: point.pointer("/dataSource/device/displayName").and_then(|v| text(Some(v), 200)),
    };
    let elapsed = (end - start).num_milliseconds() as f64 / 1000.0;
    let moving = duration_seconds(exercise.get("activeDuration")).filter(|s| *s >= 0.0).unwrap_or(elapsed);
    let summary = exercise.get("metricsSummary");
    let field = |key: &str| num(summary.and_then(|s| s.get(key)));
    let values: [(&Measure, Option<f64>); 4] = [
        (&EXERCISE_DURATION, Some(seconds_to_minutes(moving))),
        (&DISTANCE, field("distanceMillimeters").map(|mm| (mm / 10.0).round() / 100.0)),
        (&ENERGY, field("caloriesKcal")),
        (&HEART_RATE_MEAN, field("averageHeartRateBeatsPerMinute")),
    ];
    Ok(exercise_session(ctx, &session, &values))
}

/// A sleep data point: minutes asleep (`summary.minutesAsleep`, else the sum of the DEEP, LIGHT
/// and REM stages) and one Observation per stage from `summary.stagesSummary[]`, over the night.
pub fn map_sleep(ctx: &MapContext, point: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = remote_user(ctx)?;
    let id = point_id(point).ok_or_else(|| MapError("Google sleep without a data point name".into()))?;
    let fail = |what: &str| MapError(format!("Google sleep {id}: {what}"));
    let sleep = point.get("sleep").ok_or_else(|| fail("no sleep"))?;
    let (start, end) = interval_of(sleep, MAX_SLEEP_SECONDS, &fail)?;
    let summary = sleep.get("summary");
    let stage = |name: &str| {
        summary.and_then(|s| s.get("stagesSummary")).and_then(Value::as_array).and_then(|stages| {
            stages
                .iter()
                .find(|s| s.get("type").and_then(Value::as_str) == Some(name))
                .and_then(|s| num(s.get("minutes")))
        })
    };
    let (deep, light, rem) = (stage("DEEP"), stage("LIGHT"), stage("REM"));
    let staged = match (deep, light, rem) {
        (Some(d), Some(l), Some(r)) => Some(d + l + r),
        _ => None,
    };
    let asleep = num(summary.and_then(|s| s.get("minutesAsleep"))).or(staged);
    let period = FhirPeriod::between(&start, &end);
    let prefix = format!("{user}:{id}");
    let observed = Observed {
        identifier_system: SLEEP_SYSTEM,
        identifier_prefix: &prefix,
        period: &period,
        part_of: None,
        device: None,
    };
    let values: [(&Measure, Option<f64>); 4] =
        [(&SLEEP_DURATION, asleep), (&SLEEP_DEEP, deep), (&SLEEP_LIGHT, light), (&SLEEP_REM, rem)];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// Which daily vital a data type is, and where its value is (first field present wins; Google's
/// field names for HRV and SpO2 are from its v4 reference where found, ✖ otherwise).
pub struct Daily {
    pub data_type: &'static str,
    /// The data point's field holding the value object.
    pub field: &'static str,
    pub measure: &'static Measure,
    pub value_fields: &'static [&'static str],
}

pub const DAILY_TYPES: &[Daily] = &[
    Daily {
        data_type: "daily-resting-heart-rate",
        field: "dailyRestingHeartRate",
        measure: &RESTING_HEART_RATE,
        value_fields: &["beatsPerMinute"],
    },
    Daily {
        data_type: "daily-heart-rate-variability",
        field: "dailyHeartRateVariability",
        measure: &HRV_RMSSD,
        value_fields: &["averageHeartRateVariabilityMilliseconds", "rmssdMilliseconds", "dailyRmssdMilliseconds"],
    },
    Daily {
        data_type: "daily-oxygen-saturation",
        field: "dailyOxygenSaturation",
        measure: &OXYGEN_SATURATION,
        value_fields: &["averagePercentage", "percentage"],
    },
];

pub fn daily_type(data_type: &str) -> Option<&'static Daily> {
    DAILY_TYPES.iter().find(|d| d.data_type == data_type)
}

/// A civil `date {year, month, day}` (google.type.Date) in a plausible year.
pub fn civil_date(value: Option<&Value>) -> Option<NaiveDate> {
    let v = value?;
    let part = |k: &str| v.get(k).and_then(|n| num(Some(n))).map(|n| n as i64);
    let (y, m, d) = (part("year")?, part("month")?, part("day")?);
    if !(1970..=2999).contains(&y) {
        return None;
    }
    NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, u32::try_from(m).ok()?, u32::try_from(d).ok()?)
}

/// The day a daily data point is for (`YYYY-MM-DD`), as its object id.
pub fn daily_day(daily: &Daily, point: &Value) -> Option<String> {
    civil_date(point.get(daily.field)?.get("date")).map(|d| d.format("%Y-%m-%d").to_string())
}

/// A daily vital (resting heart rate, RMSSD, SpO2) for the user's civil day.
pub fn map_daily(ctx: &MapContext, daily: &Daily, point: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = remote_user(ctx)?;
    let body =
        point.get(daily.field).ok_or_else(|| MapError(format!("Google {}: no {}", daily.data_type, daily.field)))?;
    let date = civil_date(body.get("date"))
        .ok_or_else(|| MapError(format!("Google {} without a valid date", daily.data_type)))?;
    let value = daily.value_fields.iter().find_map(|k| num(body.get(*k)));
    let period = FhirPeriod::day(date);
    let prefix = format!("{user}:{}", date.format("%Y-%m-%d"));
    let observed = Observed {
        identifier_system: DAILY_SYSTEM,
        identifier_prefix: &prefix,
        period: &period,
        part_of: None,
        device: None,
    };
    Ok(quantity_observations(ctx, &observed, &[(daily.measure, value)]))
}

/// A data type Wearlink reads as daily totals through `dataPoints:dailyRollUp` (one rollup data
/// point per civil day: `{civilStartTime, civilEndTime, <type in camelCase>: {<sum>}}`).
pub struct Rollup {
    pub data_type: &'static str,
    pub field: &'static str,
    pub measure: &'static Measure,
    /// The sum's field and the factor to the measure's unit.
    pub sum: (&'static str, f64),
    /// dailyRollUp's longest range for the type (14 days for total-calories, 90 for others).
    pub max_days: i64,
}

pub const ROLLUP_TYPES: &[Rollup] = &[
    // StepsRollupValue `{countSum}` (developers.google.com/health/reference/rest/v4/StepsRollupValue).
    Rollup { data_type: "steps", field: "steps", measure: &DAILY_STEPS, sum: ("countSum", 1.0), max_days: 90 },
    // ✖ `millimetersSum` by analogy with the data point's `distanceMillimeters`: mm → m.
    Rollup {
        data_type: "distance",
        field: "distance",
        measure: &DAILY_DISTANCE,
        sum: ("millimetersSum", 0.001),
        max_days: 90,
    },
    // ✖ `kcalSum` by analogy with `caloriesKcal`.
    Rollup {
        data_type: "total-calories",
        field: "totalCalories",
        measure: &DAILY_ENERGY,
        sum: ("kcalSum", 1.0),
        max_days: 14,
    },
];

pub fn rollup_type(data_type: &str) -> Option<&'static Rollup> {
    ROLLUP_TYPES.iter().find(|r| r.data_type == data_type)
}

/// The civil day a rollup data point starts on.
pub fn rollup_day(point: &Value) -> Option<NaiveDate> {
    civil_date(point.get("civilStartTime")?.get("date"))
}

/// One day's total (steps, distance in m, kcal) for the user's civil day.
pub fn map_rollup(ctx: &MapContext, rollup: &Rollup, point: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = remote_user(ctx)?;
    let date = rollup_day(point)
        .ok_or_else(|| MapError(format!("Google {} rollup without a civil start date", rollup.data_type)))?;
    let value = num(point.get(rollup.field).and_then(|v| v.get(rollup.sum.0))).map(|v| v * rollup.sum.1);
    let value = value.map(|v| (v * 100.0).round() / 100.0);
    let period = FhirPeriod::day(date);
    let prefix = format!("{user}:{}", date.format("%Y-%m-%d"));
    let observed = Observed {
        identifier_system: DAILY_SYSTEM,
        identifier_prefix: &prefix,
        period: &period,
        part_of: None,
        device: None,
    };
    Ok(quantity_observations(ctx, &observed, &[(rollup.measure, value)]))
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
            provider: "google".into(),
            remote_user_id: "NGL8Q2".into(),
        }
    }

    pub(crate) fn exercise() -> Value {
        json!({"name": "users/NGL8Q2/dataTypes/exercise/dataPoints/7205489930186557440",
            "dataSource": {"device": {"displayName": "Pixel Watch 3"}},
            "exercise": {"interval": {"startTime": "2026-11-20T07:02:11Z", "startUtcOffset": "3600s",
                "endTime": "2026-11-20T07:52:23Z", "endUtcOffset": "3600s"},
            "exerciseType": "RUNNING", "displayName": "Morning run", "activeDuration": "2890s",
            "metricsSummary": {"caloriesKcal": 742, "distanceMillimeters": 10021400, "steps": "8944",
                "averageHeartRateBeatsPerMinute": 151}}})
    }

    fn sleep() -> Value {
        json!({"name": "users/NGL8Q2/dataTypes/sleep/dataPoints/8133", "sleep": {
            "interval": {"startTime": "2026-11-20T22:41:07Z", "startUtcOffset": "3600s",
                "endTime": "2026-11-21T06:12:37Z", "endUtcOffset": "3600s"},
            "type": "STAGES",
            "summary": {"minutesAsleep": "414", "minutesAwake": "37", "stagesSummary": [
                {"type": "AWAKE", "minutes": "37", "count": "9"}, {"type": "LIGHT", "minutes": "240", "count": "20"},
                {"type": "DEEP", "minutes": "90", "count": "4"}, {"type": "REM", "minutes": "84", "count": "5"}]}}})
    }

    fn by_code<'a>(drafts: &'a [ResourceDraft], code: &str) -> &'a ResourceDraft {
        drafts.iter().find(|d| d.body["code"]["coding"][0]["code"] == code).unwrap_or_else(|| panic!("no {code}"))
    }

    fn value(drafts: &[ResourceDraft], code: &str) -> Value {
        by_code(drafts, code).body["valueQuantity"]["value"].clone()
    }

    #[test]
    fn an_exercise_keeps_its_offset_and_reads_millimetres_as_metres() {
        let drafts = map_exercise(&ctx("p1"), &exercise()).unwrap();
        let p = &drafts[0];
        assert_eq!(p.resource_type, "Procedure");
        assert_eq!(p.identifier_system, EXERCISE_SYSTEM);
        assert_eq!(p.identifier_value, "NGL8Q2:7205489930186557440");
        assert_eq!(
            p.body["performedPeriod"],
            json!({"start": "2026-11-20T08:02:11+01:00", "end": "2026-11-20T08:52:23+01:00"})
        );
        assert_eq!(p.body["code"]["coding"][0]["system"], "https://wearlink.dev/fhir/CodeSystem/google-sport");
        assert_eq!(p.body["code"]["coding"][0]["code"], "RUNNING");
        assert_eq!(p.body["note"][0]["text"], "Morning run");
        assert_eq!(p.body["usedReference"][0]["display"], "Pixel Watch 3");
        assert_eq!(drafts.len(), 5);
        assert_eq!(value(&drafts, "55411-3"), json!(48.17));
        assert_eq!(value(&drafts, "distance"), json!(10021.4));
        assert_eq!(by_code(&drafts, "distance").body["valueQuantity"]["unit"], "m");
        assert_eq!(value(&drafts, "55424-6"), json!(742));
        assert_eq!(by_code(&drafts, "55424-6").body["valueQuantity"]["code"], "kcal");
        assert_eq!(value(&drafts, "55425-3"), json!(151));
        for o in &drafts[1..] {
            assert_eq!(o.body["partOf"][0]["reference"], format!("Procedure/{}", p.id));
            let code = o.body["code"]["coding"][0]["code"].as_str().unwrap();
            assert_eq!(o.identifier_value, format!("NGL8Q2:7205489930186557440:{code}"));
        }
    }

    #[test]
    fn an_exercise_without_offsets_or_summary_still_maps() {
        let mut e = exercise();
        let interval = e["exercise"]["interval"].as_object_mut().unwrap();
        interval.remove("startUtcOffset");
        interval.remove("endUtcOffset");
        e["exercise"].as_object_mut().unwrap().remove("metricsSummary");
        e["exercise"].as_object_mut().unwrap().remove("activeDuration");
        let drafts = map_exercise(&ctx("p1"), &e).unwrap();
        assert_eq!(drafts[0].body["performedPeriod"]["start"], "2026-11-20T07:02:11Z");
        assert_eq!(drafts.len(), 2);
        assert_eq!(value(&drafts, "55411-3"), json!(50.2));
    }

    #[test]
    fn unusable_exercises_are_errors() {
        for (path, bad) in [
            ("/name", Value::Null),
            ("/name", json!("users/x/dataTypes/exercise/dataPoints/../x")),
            ("/exercise/interval/startTime", json!("yesterday")),
            ("/exercise/interval/endTime", json!("2026-11-20T06:00:00Z")),
            ("/exercise/interval/endTime", json!("2026-12-20T06:00:00Z")),
            ("/exercise/interval/startUtcOffset", json!("999999s")),
        ] {
            let mut e = exercise();
            *e.pointer_mut(path).unwrap() = bad.clone();
            assert!(map_exercise(&ctx("p1"), &e).is_err(), "{path} = {bad}");
        }
        let mut no_user = ctx("p1");
        no_user.remote_user_id = String::new();
        assert!(map_exercise(&no_user, &exercise()).is_err());
    }

    #[test]
    fn a_night_gives_minutes_asleep_and_its_stages() {
        let drafts = map_sleep(&ctx("p1"), &sleep()).unwrap();
        assert_eq!(drafts.len(), 4);
        let total = by_code(&drafts, "93832-4");
        assert_eq!(total.identifier_system, SLEEP_SYSTEM);
        assert_eq!(total.identifier_value, "NGL8Q2:8133:93832-4");
        assert_eq!(total.body["valueQuantity"], json!({"value": 414, "unit": "min", "system": UCUM, "code": "min"}));
        assert_eq!(total.body["code"]["coding"][0]["system"], LOINC);
        assert_eq!(
            total.body["effectivePeriod"],
            json!({"start": "2026-11-20T23:41:07+01:00", "end": "2026-11-21T07:12:37+01:00"})
        );
        assert_eq!(value(&drafts, "93831-6"), json!(90));
        assert_eq!(value(&drafts, "93830-8"), json!(240));
        assert_eq!(value(&drafts, "93829-0"), json!(84));
        // Without minutesAsleep the stages add up.
        let mut s = sleep();
        s["sleep"]["summary"].as_object_mut().unwrap().remove("minutesAsleep");
        assert_eq!(value(&map_sleep(&ctx("p1"), &s).unwrap(), "93832-4"), json!(414));
        let mut long = sleep();
        long["sleep"]["interval"]["endTime"] = json!("2026-11-22T06:12:37Z");
        assert!(map_sleep(&ctx("p1"), &long).is_err());
    }

    #[test]
    fn daily_vitals_are_vital_signs_of_the_day() {
        let rhr = json!({"name": "users/NGL8Q2/dataTypes/daily-resting-heart-rate/dataPoints/20261120",
            "dailyRestingHeartRate": {"date": {"year": 2026, "month": 11, "day": 20}, "beatsPerMinute": "58"}});
        let daily = daily_type("daily-resting-heart-rate").unwrap();
        assert_eq!(daily_day(daily, &rhr).as_deref(), Some("2026-11-20"));
        let drafts = map_daily(&ctx("p1"), daily, &rhr).unwrap();
        assert_eq!(drafts.len(), 1);
        let o = &drafts[0];
        assert_eq!(o.identifier_system, DAILY_SYSTEM);
        assert_eq!(o.identifier_value, "NGL8Q2:2026-11-20:40443-4");
        assert_eq!(o.body["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(
            o.body["valueQuantity"],
            json!({"value": 58, "unit": "beats/minute", "system": UCUM, "code": "/min"})
        );
        assert_eq!(o.body["effectivePeriod"], json!({"start": "2026-11-20", "end": "2026-11-20"}));

        let spo2 = json!({"name": "users/NGL8Q2/dataTypes/daily-oxygen-saturation/dataPoints/1",
            "dailyOxygenSaturation": {"date": {"year": 2026, "month": 11, "day": 20}, "averagePercentage": 96.4}});
        let drafts = map_daily(&ctx("p1"), daily_type("daily-oxygen-saturation").unwrap(), &spo2).unwrap();
        assert_eq!(drafts[0].body["code"]["coding"][0]["code"], "2708-6");
        assert_eq!(drafts[0].body["code"]["coding"][1]["code"], "59408-5");
        assert_eq!(drafts[0].body["valueQuantity"]["value"], json!(96.4));

        let hrv = json!({"dailyHeartRateVariability": {"date": {"year": 2026, "month": 11, "day": 20},
            "averageHeartRateVariabilityMilliseconds": 41.5}});
        let drafts = map_daily(&ctx("p1"), daily_type("daily-heart-rate-variability").unwrap(), &hrv).unwrap();
        assert_eq!(drafts[0].body["code"]["coding"][0]["code"], "hrv-rmssd");
        assert_eq!(drafts[0].body["valueQuantity"]["unit"], "ms");

        let absurd =
            json!({"dailyRestingHeartRate": {"date": {"year": 2026, "month": 11, "day": 20}, "beatsPerMinute": 900}});
        assert!(map_daily(&ctx("p1"), daily, &absurd).unwrap().is_empty());
        let no_date = json!({"dailyRestingHeartRate": {"beatsPerMinute": 58}});
        assert!(map_daily(&ctx("p1"), daily, &no_date).is_err());
    }

    #[test]
    fn daily_rollups_are_totals_of_the_day() {
        let day = json!({"year": 2026, "month": 11, "day": 20});
        let point = |field: &str, value: Value| json!({"civilStartTime": {"date": day}, "civilEndTime": {"date": {"year": 2026, "month": 11, "day": 21}}, field: value});
        let steps = map_rollup(&ctx("p1"), rollup_type("steps").unwrap(), &point("steps", json!({"countSum": "8500"})))
            .unwrap();
        assert_eq!(steps[0].identifier_value, "NGL8Q2:2026-11-20:41950-7");
        assert_eq!(
            steps[0].body["valueQuantity"],
            json!({"value": 8500, "unit": "steps/day", "system": UCUM, "code": "/d"})
        );
        assert_eq!(steps[0].body["effectivePeriod"], json!({"start": "2026-11-20", "end": "2026-11-20"}));
        let distance = map_rollup(
            &ctx("p1"),
            rollup_type("distance").unwrap(),
            &point("distance", json!({"millimetersSum": "6123456"})),
        )
        .unwrap();
        assert_eq!(distance[0].body["valueQuantity"]["value"], json!(6123.46));
        assert_eq!(distance[0].body["valueQuantity"]["code"], "m/d");
        let kcal = map_rollup(
            &ctx("p1"),
            rollup_type("total-calories").unwrap(),
            &point("totalCalories", json!({"kcalSum": 2150.4})),
        )
        .unwrap();
        assert_eq!(kcal[0].body["code"]["coding"][0]["code"], "41979-6");
        assert_eq!(kcal[0].body["valueQuantity"]["value"], json!(2150.4));
        assert!(map_rollup(&ctx("p1"), rollup_type("steps").unwrap(), &json!({"steps": {"countSum": "1"}})).is_err());
    }

    #[test]
    fn ids_are_stable_and_scoped_to_project_and_user() {
        let a = map_exercise(&ctx("p1"), &exercise()).unwrap();
        assert_eq!(a, map_exercise(&ctx("p1"), &exercise()).unwrap());
        let other_project = map_exercise(&ctx("p2"), &exercise()).unwrap();
        assert!(a.iter().zip(&other_project).all(|(x, y)| x.id != y.id));
        let other_user = map_exercise(&MapContext { remote_user_id: "Z9".into(), ..ctx("p1") }, &exercise()).unwrap();
        assert!(a.iter().zip(&other_user).all(|(x, y)| x.id != y.id));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_json_never_panics(value in arbitrary::json_value()) {
            let _ = map_exercise(&ctx("p1"), &value);
            let _ = map_sleep(&ctx("p1"), &value);
            for daily in DAILY_TYPES {
                let _ = map_daily(&ctx("p1"), daily, &value);
            }
            for rollup in ROLLUP_TYPES {
                let _ = map_rollup(&ctx("p1"), rollup, &value);
            }
        }

        #[test]
        fn mutated_samples_map_or_fail_cleanly(e in arbitrary::mutated(exercise()), s in arbitrary::mutated(sleep())) {
            for drafts in [map_exercise(&ctx("p1"), &e), map_sleep(&ctx("p1"), &s)].into_iter().flatten() {
                for o in drafts.iter().filter(|d| d.resource_type == "Observation") {
                    let v = o.body["valueQuantity"]["value"].as_f64().unwrap();
                    prop_assert!(v.is_finite() && v >= 0.0);
                }
            }
        }
    }
}
