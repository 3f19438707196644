//! Withings → FHIR (shared/spec/providers.md, "Withings, more" and "FHIR codes for clinical
//! measurements"). Pure.
//!
//! A measure group (`getmeas` → `body.measuregrps[]`: `{grpid, date, category, model, measures:
//! [{value, type, unit}]}`) is one reading: each measure's real value is `value × 10^unit`, and
//! the group becomes vital-sign Observations (`crate::fhir::vitals`): weight, height, heart rate,
//! SpO2, body temperature, the blood pressure panel from its systolic and diastolic measures, and
//! the body fat ratio (category `exam`). Category 2 groups are the user's objectives, never
//! measurements. Sleep summaries, daily activity and workouts use the shared activity builders.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate};
use serde_json::Value;

use crate::fhir::activity::{
    end_after, exercise_session, fhir_date_time, number, quantity_observations, seconds_to_minutes, text, FhirPeriod,
    Measure, Observed, Session, DAILY_DISTANCE, DAILY_ENERGY, DAILY_STEPS, DISTANCE, ENERGY, EXERCISE_DURATION,
    HEART_RATE_MAX, HEART_RATE_MEAN, MAX_SESSION_SECONDS, MAX_SLEEP_SECONDS, OXYGEN_SATURATION, SLEEP_DEEP,
    SLEEP_DURATION, SLEEP_LIGHT, SLEEP_REM,
};
use crate::fhir::vitals::{
    blood_pressure, measurement, Reading, BLOOD_PRESSURE, BODY_FAT, BODY_HEIGHT, BODY_TEMPERATURE, BODY_WEIGHT,
    HEART_RATE,
};
use crate::fhir::{MapContext, MapError, ResourceDraft};

/// Values `<userid>:<grpid>:<LOINC code>`.
pub const MEASURE_SYSTEM: &str = "https://wbsapi.withings.net/measure";
/// Values `<userid>:<sleep summary id>:<code>`.
pub const SLEEP_SYSTEM: &str = "https://wbsapi.withings.net/v2/sleep";
/// Values `<userid>:<date>:<code>`.
pub const ACTIVITY_SYSTEM: &str = "https://wbsapi.withings.net/v2/measure/activity";
/// Procedure value `<userid>:<workout id>`; its Observations `…:<code>`.
pub const WORKOUT_SYSTEM: &str = "https://wbsapi.withings.net/v2/measure/workouts";
pub const IDENTIFIER_SYSTEMS: &[&str] = &[MEASURE_SYSTEM, SLEEP_SYSTEM, ACTIVITY_SYSTEM, WORKOUT_SYSTEM];

/// Withings `meastype`s we write (spec ◐): 1 weight kg, 4 height m, 6 fat ratio %, 9 diastolic
/// and 10 systolic mmHg, 11 heart pulse bpm, 12 temperature °C, 54 SpO2 %, 71 body temperature °C.
/// Others (fat-free and fat mass, muscle, bone, hydration, skin temperature, pulse wave velocity)
/// have no R4 vital-sign profile and are not written.
pub const MEASURE_TYPES: &[i64] = &[1, 4, 6, 9, 10, 11, 12, 54, 71];

/// Every measure a group can write, for `resource_ids`.
const GROUP_MEASURES: &[&Measure] =
    &[&BODY_WEIGHT, &BODY_HEIGHT, &BODY_FAT, &BLOOD_PRESSURE, &HEART_RATE, &OXYGEN_SATURATION, &BODY_TEMPERATURE];

/// `value × 10^unit`, exactly where it can be: a negative exponent divides by a power of ten (so
/// `72345 × 10^-3` is the double nearest 72.345, not 72.34500000000001).
pub fn real_value(measure: &Value) -> Option<f64> {
    let value = measure.get("value")?.as_i64()?;
    let unit = measure.get("unit")?.as_i64()?;
    if !(-12..=12).contains(&unit) {
        return None;
    }
    let scale = 10f64.powi(unit.unsigned_abs() as i32);
    let real = if unit < 0 { value as f64 / scale } else { value as f64 * scale };
    real.is_finite().then_some(real)
}

fn user(ctx: &MapContext) -> Result<&str, MapError> {
    let user = ctx.remote_user_id.trim();
    if user.is_empty() || user.len() > 32 || !user.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MapError("no Withings user id for this connection".into()));
    }
    Ok(user)
}

/// A Withings id (a JSON number): digits only.
pub fn numeric_id(value: Option<&Value>) -> Option<String> {
    let id = crate::providers::id_text(value)?;
    (!id.is_empty() && id.len() <= 24 && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

/// An epoch-seconds field as an instant in UTC.
fn epoch(value: Option<&Value>) -> Option<DateTime<FixedOffset>> {
    let seconds = value?.as_i64()?;
    DateTime::from_timestamp(seconds, 0).map(|t| t.fixed_offset()).filter(|t| (1970..=2999).contains(&t.year()))
}

/// One measure group → its Observations. A group of category 2 (objectives) writes nothing.
pub fn map_measure_group(ctx: &MapContext, group: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = user(ctx)?;
    let grpid =
        numeric_id(group.get("grpid")).ok_or_else(|| MapError("Withings measure group without grpid".into()))?;
    let fail = |what: &str| MapError(format!("Withings measure group {grpid}: {what}"));
    match group.get("category").and_then(Value::as_i64) {
        Some(1) => {}
        Some(2) => return Ok(Vec::new()),
        _ => return Err(fail("no valid category")),
    }
    let at = epoch(group.get("date")).ok_or_else(|| fail("no valid date"))?;
    let effective = fhir_date_time(&at);
    let prefix = format!("{user}:{grpid}");
    let reading = Reading {
        identifier_system: MEASURE_SYSTEM,
        identifier_prefix: &prefix,
        effective: &effective,
        device: text(group.get("model"), 200),
    };
    let measures = group.get("measures").and_then(Value::as_array).ok_or_else(|| fail("no measures"))?;
    let of_type =
        |t: i64| measures.iter().find(|m| m.get("type").and_then(Value::as_i64) == Some(t)).and_then(real_value);
    let mut drafts = Vec::new();
    drafts.extend(blood_pressure(ctx, &reading, of_type(10), of_type(9)));
    let temperature = of_type(71).or_else(|| of_type(12));
    let values: [(&Measure, Option<f64>); 6] = [
        (&BODY_WEIGHT, of_type(1)),
        (&BODY_HEIGHT, of_type(4).map(|m| (m * 1000.0).round() / 10.0)),
        (&HEART_RATE, of_type(11)),
        (&OXYGEN_SATURATION, of_type(54)),
        (&BODY_TEMPERATURE, temperature),
        (&BODY_FAT, of_type(6)),
    ];
    drafts.extend(values.iter().filter_map(|(m, v)| measurement(ctx, &reading, m, (*v)?)));
    Ok(drafts)
}

/// Every resource a measure group can write: what its deletion marks.
pub fn measure_resource_ids(ctx: &MapContext, grpid: &str) -> Vec<(&'static str, String)> {
    let prefix = format!("{}:{grpid}", ctx.remote_user_id);
    GROUP_MEASURES
        .iter()
        .map(|m| ("Observation", ctx.id_for("Observation", MEASURE_SYSTEM, &format!("{prefix}:{}", m.code))))
        .collect()
}

/// A sleep summary (`POST /v2/sleep action=getsummary` → `series[]`: `{id, startdate, enddate,
/// date, data: {total_sleep_time, deepsleepduration, lightsleepduration, remsleepduration}}`,
/// seconds) → sleep duration and its stages, over the night.
pub fn map_sleep(ctx: &MapContext, summary: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = user(ctx)?;
    let id = numeric_id(summary.get("id")).ok_or_else(|| MapError("Withings sleep summary without id".into()))?;
    let fail = |what: &str| MapError(format!("Withings sleep summary {id}: {what}"));
    let start = epoch(summary.get("startdate")).ok_or_else(|| fail("no valid startdate"))?;
    let end = epoch(summary.get("enddate")).ok_or_else(|| fail("no valid enddate"))?;
    end_after(&start, end - start, MAX_SLEEP_SECONDS).map_err(|e| fail(&e.0))?;
    let period = FhirPeriod::between(&start, &end);
    let prefix = format!("{user}:{id}");
    let observed = Observed {
        identifier_system: SLEEP_SYSTEM,
        identifier_prefix: &prefix,
        period: &period,
        part_of: None,
        device: None,
    };
    let data = summary.get("data");
    let minutes = |key: &str| {
        number(data.and_then(|d| d.get(key)))
            .filter(|s| (0.0..=MAX_SLEEP_SECONDS as f64).contains(s))
            .map(seconds_to_minutes)
    };
    let values: [(&Measure, Option<f64>); 4] = [
        (&SLEEP_DURATION, minutes("total_sleep_time")),
        (&SLEEP_DEEP, minutes("deepsleepduration")),
        (&SLEEP_LIGHT, minutes("lightsleepduration")),
        (&SLEEP_REM, minutes("remsleepduration")),
    ];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// A day of activity (`POST /v2/measure action=getactivity` → `activities[]`: `{date: "YYYY-MM-DD",
/// steps, distance (m), totalcalories (kcal)}`) → daily steps, distance and energy.
pub fn map_activity(ctx: &MapContext, day: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = user(ctx)?;
    let date = day
        .get("date")
        .and_then(Value::as_str)
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .ok_or_else(|| MapError("Withings activity without a valid date".into()))?;
    let period = FhirPeriod::day(date);
    let prefix = format!("{user}:{}", date.format("%Y-%m-%d"));
    let observed = Observed {
        identifier_system: ACTIVITY_SYSTEM,
        identifier_prefix: &prefix,
        period: &period,
        part_of: None,
        device: None,
    };
    let values: [(&Measure, Option<f64>); 3] = [
        (&DAILY_STEPS, number(day.get("steps"))),
        (&DAILY_DISTANCE, number(day.get("distance"))),
        (&DAILY_ENERGY, number(day.get("totalcalories"))),
    ];
    Ok(quantity_observations(ctx, &observed, &values))
}

/// Withings workout categories (`getworkouts` `category`, spec ◐) as sport codes; others keep
/// their number.
fn sport(category: i64) -> String {
    let name = match category {
        1 => "walk",
        2 => "run",
        3 => "hiking",
        6 => "bicycling",
        7 => "swimming",
        16 => "yoga",
        17 => "pilates",
        36 => "other",
        187 => "rowing",
        188 => "zumba",
        191 => "baseball",
        272 => "multi_sport",
        306 => "indoor_walk",
        307 => "indoor_running",
        308 => "indoor_cycling",
        _ => return format!("category_{category}"),
    };
    name.to_string()
}

/// A workout (`POST /v2/measure action=getworkouts` → `series[]`: `{id, category, startdate,
/// enddate, data: {calories, distance, hr_average, hr_max}}`) → the session Procedure and its
/// measures.
pub fn map_workout(ctx: &MapContext, workout: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let user = user(ctx)?;
    let id = numeric_id(workout.get("id")).ok_or_else(|| MapError("Withings workout without id".into()))?;
    let fail = |what: &str| MapError(format!("Withings workout {id}: {what}"));
    let start = epoch(workout.get("startdate")).ok_or_else(|| fail("no valid startdate"))?;
    let end = epoch(workout.get("enddate")).ok_or_else(|| fail("no valid enddate"))?;
    end_after(&start, end - start, MAX_SESSION_SECONDS).map_err(|e| fail(&e.0))?;
    let value = format!("{user}:{id}");
    let sport = workout.get("category").and_then(Value::as_i64).map(sport);
    let session = Session {
        identifier_system: WORKOUT_SYSTEM,
        identifier_value: &value,
        sport: sport.as_deref(),
        title: None,
        period: FhirPeriod::between(&start, &end),
        device: None,
    };
    let data = workout.get("data");
    let field = |key: &str| number(data.and_then(|d| d.get(key)));
    let elapsed = (end - start).num_seconds() as f64;
    let values: [(&Measure, Option<f64>); 5] = [
        (&EXERCISE_DURATION, Some(seconds_to_minutes(elapsed))),
        (&DISTANCE, field("distance")),
        (&ENERGY, field("calories")),
        (&HEART_RATE_MEAN, field("hr_average")),
        (&HEART_RATE_MAX, field("hr_max")),
    ];
    Ok(exercise_session(ctx, &session, &values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn ctx() -> MapContext {
        MapContext {
            project_id: "p1".into(),
            patient_id: "pat-1".into(),
            endpoint_id: "ep-1".into(),
            provider: "withings".into(),
            remote_user_id: "363".into(),
        }
    }

    fn group(grpid: i64, category: i64, measures: Value) -> Value {
        json!({"grpid": grpid, "attrib": 0, "date": 1_796_000_000, "created": 1_796_000_100, "modified": 1_796_000_100,
            "category": category, "deviceid": "c405eb8e", "model": "Body+", "measures": measures})
    }

    fn by_code<'a>(drafts: &'a [ResourceDraft], code: &str) -> &'a Value {
        &drafts.iter().find(|d| d.body["code"]["coding"][0]["code"] == code).unwrap_or_else(|| panic!("no {code}")).body
    }

    #[test]
    fn values_are_scaled_by_ten_to_the_unit() {
        assert_eq!(real_value(&json!({"value": 72345, "unit": -3})), Some(72.345));
        assert_eq!(real_value(&json!({"value": 3665, "unit": -2})), Some(36.65));
        assert_eq!(real_value(&json!({"value": 7, "unit": 1})), Some(70.0));
        assert_eq!(real_value(&json!({"value": 98, "unit": 0})), Some(98.0));
        assert_eq!(real_value(&json!({"value": 98, "unit": 40})), None);
        assert_eq!(real_value(&json!({"value": "98", "unit": 0})), None);
    }

    #[test]
    fn a_scale_reading_writes_weight_and_fat_ratio() {
        let g = group(11, 1, json!([{"value": 72345, "type": 1, "unit": -3}, {"value": 214, "type": 6, "unit": -1}]));
        let drafts = map_measure_group(&ctx(), &g).unwrap();
        assert_eq!(drafts.len(), 2);
        let weight = by_code(&drafts, "29463-7");
        assert_eq!(weight["valueQuantity"]["value"], json!(72.345));
        assert_eq!(weight["valueQuantity"]["code"], "kg");
        assert_eq!(weight["effectiveDateTime"], "2026-11-30T00:53:20Z");
        assert_eq!(weight["identifier"][0]["value"], "363:11:29463-7");
        assert_eq!(weight["device"]["display"], "Body+");
        assert_eq!(by_code(&drafts, "41982-0")["valueQuantity"]["value"], json!(21.4));
    }

    #[test]
    fn a_cuff_reading_is_a_panel_and_a_heart_rate() {
        let g = group(
            12,
            1,
            json!([{"value": 79, "type": 9, "unit": 0}, {"value": 1210, "type": 10, "unit": -1}, {"value": 64, "type": 11, "unit": 0}]),
        );
        let drafts = map_measure_group(&ctx(), &g).unwrap();
        assert_eq!(drafts.len(), 2);
        let bp = by_code(&drafts, "85354-9");
        assert_eq!(bp["component"][0]["valueQuantity"]["value"], 121);
        assert_eq!(bp["component"][1]["valueQuantity"]["value"], 79);
        assert_eq!(by_code(&drafts, "8867-4")["valueQuantity"]["value"], 64);
        let ids: Vec<String> = measure_resource_ids(&ctx(), "12").into_iter().map(|(_, id)| id).collect();
        assert!(drafts.iter().all(|d| ids.contains(&d.id)), "resource_ids covers what the group writes");
    }

    #[test]
    fn objectives_and_broken_groups_write_nothing() {
        let objective = group(13, 2, json!([{"value": 70, "type": 1, "unit": 0}]));
        assert!(map_measure_group(&ctx(), &objective).unwrap().is_empty());
        let mut undated = group(14, 1, json!([]));
        undated["date"] = json!("yesterday");
        assert!(map_measure_group(&ctx(), &undated).is_err());
        let absurd = group(15, 1, json!([{"value": 9, "type": 71, "unit": 3}]));
        assert!(map_measure_group(&ctx(), &absurd).unwrap().is_empty(), "9000 °C is no temperature");
    }

    #[test]
    fn sleep_activity_and_workouts_map() {
        let sleep = json!({"id": 987654321, "timezone": "Europe/Paris", "startdate": 1589932800, "enddate": 1589961600,
            "date": "2020-05-20", "data": {"total_sleep_time": 25200, "deepsleepduration": 5400, "lightsleepduration": 10800, "remsleepduration": 7200}});
        let drafts = map_sleep(&ctx(), &sleep).unwrap();
        assert_eq!(by_code(&drafts, "93832-4")["valueQuantity"]["value"], 420);
        assert_eq!(drafts.len(), 4);
        let day = json!({"date": "2026-12-01", "steps": 8823, "distance": 6120.5, "totalcalories": 2310.2});
        let drafts = map_activity(&ctx(), &day).unwrap();
        assert_eq!(by_code(&drafts, "41950-7")["valueQuantity"]["value"], 8823);
        let workout = json!({"id": 5501, "category": 2, "startdate": 1_796_000_000, "enddate": 1_796_003_600,
            "data": {"calories": 512, "distance": 10012, "hr_average": 148, "hr_max": 171}});
        let drafts = map_workout(&ctx(), &workout).unwrap();
        assert_eq!(drafts[0].resource_type, "Procedure");
        assert_eq!(drafts[0].body["code"]["coding"][0]["code"], "run");
        assert_eq!(drafts.len(), 6);
    }

    /// The example Bundles in docs/ are this mapping's output: a weight (scale) and a blood
    /// pressure reading (cuff). `WEARLINK_WRITE_EXAMPLES=1` rewrites them after a mapping change.
    #[test]
    fn the_documented_example_bundles_are_the_mappings_output() {
        let ctx = MapContext {
            project_id: "3f0c1c5e-5b0e-4c8a-9a57-2f4c6d1e8a10".into(),
            patient_id: "b1e5c2a4-0d6f-4f43-8f3e-6b9d7c2a1e55".into(),
            endpoint_id: "6a2f4b1c-9e8d-4c7b-a5f3-1d2e3c4b5a69".into(),
            provider: "withings".into(),
            remote_user_id: "363".into(),
        };
        let weight = json!({"grpid": 4716596681_i64, "attrib": 0, "date": 1796024700, "created": 1796024712,
            "modified": 1796024712, "category": 1, "model": "Body+", "measures": [
                {"value": 72345, "type": 1, "unit": -3, "algo": 0, "fm": 1},
                {"value": 214, "type": 6, "unit": -1, "algo": 0, "fm": 1}]});
        let pressure = json!({"grpid": 4716596696_i64, "attrib": 0, "date": 1796025060, "created": 1796025101,
            "modified": 1796025101, "category": 1, "model": "BPM Connect", "measures": [
                {"value": 79, "type": 9, "unit": 0}, {"value": 121, "type": 10, "unit": 0}, {"value": 64, "type": 11, "unit": 0}]});
        for (name, group) in [("weight", weight), ("blood-pressure", pressure)] {
            let entries: Vec<Value> = map_measure_group(&ctx, &group)
                .unwrap()
                .into_iter()
                .map(|d| {
                    let mut resource = d.body;
                    resource["id"] = json!(d.id);
                    json!({"fullUrl": format!("https://wearlink.example/fhir/R4/{}/{}", d.resource_type, d.id), "resource": resource})
                })
                .collect();
            let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": entries});
            let text = serde_json::to_string_pretty(&bundle).unwrap() + "\n";
            let path = format!("{}/docs/examples/withings-{name}-bundle.json", env!("CARGO_MANIFEST_DIR"));
            if std::env::var("WEARLINK_WRITE_EXAMPLES").as_deref() == Ok("1") {
                std::fs::write(&path, &text).unwrap();
            }
            assert_eq!(
                std::fs::read_to_string(&path).unwrap_or_default(),
                text,
                "{path} is stale: WEARLINK_WRITE_EXAMPLES=1"
            );
        }
    }
}
