//! Strava activity (detailed, `GET /activities/{id}`) → one Procedure plus its summary
//! Observations (shared/spec/data-sync.md, "The mapping"). Pure: no I/O.
//!
//! Missing `id`, `start_date` or `elapsed_time`, or an elapsed time outside 0..=7 days, is a
//! [`MapError`]; a missing or absurd measure only drops its Observation.

use serde_json::Value;

use crate::fhir::activity::{
    end_after, exercise_session, number, observation_identifier, parse_instant, seconds, seconds_to_minutes, text,
    FhirPeriod, Measure, Session, DISTANCE, ENERGY, EXERCISE_DURATION, HEART_RATE_MAX, HEART_RATE_MEAN,
    MAX_SESSION_SECONDS,
};
use crate::fhir::{MapContext, MapError, ResourceDraft};

/// Identifier system of the Procedure (value: the activity id) and of its Observations
/// (value: `<id>:<measure code>`).
pub const ACTIVITY_SYSTEM: &str = "https://www.strava.com/activities";
/// Every identifier system this mapper writes.
pub const IDENTIFIER_SYSTEMS: &[&str] = &[ACTIVITY_SYSTEM];

/// The measures an activity can yield, in output order; [`activity_resource_ids`] lists the same.
const MEASURES: [&Measure; 5] = [&EXERCISE_DURATION, &DISTANCE, &ENERGY, &HEART_RATE_MEAN, &HEART_RATE_MAX];

/// Maps a detailed activity; a summary activity (no `calories`, no `device_name`) maps too, with
/// fewer Observations.
pub fn map_activity(ctx: &MapContext, activity: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let id = activity_id(activity.get("id")).ok_or_else(|| MapError("Strava activity without a numeric id".into()))?;
    let start = activity
        .get("start_date")
        .and_then(Value::as_str)
        .and_then(parse_instant)
        .ok_or_else(|| MapError(format!("Strava activity {id}: no valid start_date")))?;
    let elapsed = number(activity.get("elapsed_time"))
        .and_then(seconds)
        .ok_or_else(|| MapError(format!("Strava activity {id}: no elapsed_time")))?;
    let end = end_after(&start, elapsed, MAX_SESSION_SECONDS)
        .map_err(|e| MapError(format!("Strava activity {id}: elapsed_time: {}", e.0)))?;
    let session = Session {
        identifier_system: ACTIVITY_SYSTEM,
        identifier_value: &id,
        sport: text(activity.get("sport_type"), 64).or_else(|| text(activity.get("type"), 64)),
        title: text(activity.get("name"), 500),
        period: FhirPeriod::between(&start, &end),
        device: text(activity.get("device_name"), 200),
    };
    Ok(exercise_session(ctx, &session, &measures(activity)))
}

/// The values of [`MEASURES`], in order; `None` where Strava gave none.
fn measures(activity: &Value) -> [(&'static Measure, Option<f64>); 5] {
    let has_heartrate = activity.get("has_heartrate") == Some(&Value::Bool(true));
    let heart = |key: &str| if has_heartrate { number(activity.get(key)) } else { None };
    [
        (MEASURES[0], number(activity.get("moving_time")).map(seconds_to_minutes)),
        (MEASURES[1], number(activity.get("distance"))),
        // kcal from `calories` only: `kilojoules` is a ride's mechanical work, not energy burned.
        (MEASURES[2], number(activity.get("calories"))),
        (MEASURES[3], heart("average_heartrate")),
        (MEASURES[4], heart("max_heartrate")),
    ]
}

/// Every (resource type, id) [`map_activity`] can write for this activity, whatever the payload
/// held (to mark a deleted activity `entered-in-error`).
pub fn activity_resource_ids(ctx: &MapContext, activity_id: &str) -> Vec<(&'static str, String)> {
    let id = canonical_id(activity_id);
    let procedure = ("Procedure", ctx.id_for("Procedure", ACTIVITY_SYSTEM, &id));
    let observations = MEASURES
        .iter()
        .map(|m| ("Observation", ctx.id_for("Observation", ACTIVITY_SYSTEM, &observation_identifier(&id, m))));
    std::iter::once(procedure).chain(observations).collect()
}

/// The 64-bit id as decimal text; a numeric string is accepted (and normalised), nothing else.
fn activity_id(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        Value::String(s) => s.trim().parse::<u64>().ok().map(|n| n.to_string()),
        _ => None,
    }
}

fn canonical_id(activity_id: &str) -> String {
    activity_id.trim().parse::<u64>().map(|n| n.to_string()).unwrap_or_else(|_| activity_id.to_string())
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
            provider: "strava".into(),
            remote_user_id: "134815".into(),
        }
    }

    /// The spec's sample detailed activity, plus fields that must never be read as numbers we use.
    fn sample() -> Value {
        json!({"id":17234567890u64,"resource_state":3,"external_id":"polar_9f2c.fit","upload_id_str":"18345678901",
         "upload_id": 18345678901234567890123.0,
         "athlete":{"id":134815,"resource_state":1},"name":"Morning Run","distance":10021.4,"moving_time":2890,
         "elapsed_time":3012,"total_elevation_gain":86.0,"type":"Run","sport_type":"Run","workout_type":0,
         "start_date":"2026-03-14T07:02:11Z","start_date_local":"2026-03-14T08:02:11Z",
         "timezone":"(GMT+01:00) Europe/Berlin","utc_offset":3600.0,"trainer":false,"commute":false,
         "manual":false,"private":false,"average_speed":3.468,"max_speed":5.1,"has_heartrate":true,
         "average_heartrate":151.2,"max_heartrate":178.0,"calories":742.0,"device_name":"Polar Pacer Pro",
         "kilojoules": 901.5})
    }

    fn by_code<'a>(drafts: &'a [ResourceDraft], code: &str) -> Option<&'a ResourceDraft> {
        drafts.iter().find(|d| d.body["code"]["coding"][0]["code"] == code)
    }

    fn quantity(drafts: &[ResourceDraft], code: &str) -> Value {
        by_code(drafts, code).map(|d| d.body["valueQuantity"].clone()).unwrap_or(Value::Null)
    }

    #[test]
    fn the_sample_activity_becomes_a_procedure_and_five_observations() {
        let drafts = map_activity(&ctx("p1"), &sample()).unwrap();
        assert_eq!(drafts.len(), 6);
        let p = &drafts[0];
        assert_eq!((p.resource_type, p.identifier_system.as_str()), ("Procedure", ACTIVITY_SYSTEM));
        assert_eq!(p.identifier_value, "17234567890");
        assert_eq!(p.body["status"], "completed");
        assert_eq!(p.body["performedPeriod"], json!({"start": "2026-03-14T07:02:11Z", "end": "2026-03-14T07:52:23Z"}));
        assert_eq!(p.body["code"]["coding"][0]["system"], "https://wearlink.dev/fhir/CodeSystem/strava-sport");
        assert_eq!(p.body["code"]["coding"][0]["code"], "Run");
        assert_eq!(p.body["code"]["text"], "Run");
        assert_eq!(p.body["category"]["coding"][0]["code"], "exercise-session");
        assert_eq!(p.body["usedReference"][0]["display"], "Polar Pacer Pro");
        assert_eq!(p.body["note"][0]["text"], "Morning Run");
        assert_eq!(p.body["subject"]["reference"], "Patient/pat-1");
        assert_eq!(p.body["extension"][0]["valueCoding"]["code"], "strava");

        assert_eq!(quantity(&drafts, "55411-3"), json!({"value": 48.17, "unit": "min", "system": UCUM, "code": "min"}));
        assert_eq!(quantity(&drafts, "distance"), json!({"value": 10021.4, "unit": "m", "system": UCUM, "code": "m"}));
        assert_eq!(quantity(&drafts, "55424-6"), json!({"value": 742, "unit": "kcal", "system": UCUM, "code": "kcal"}));
        assert_eq!(quantity(&drafts, "55425-3")["value"], json!(151.2));
        assert_eq!(quantity(&drafts, "55425-3")["code"], "/min");
        assert_eq!(quantity(&drafts, "55426-1")["value"], json!(178));
        for o in &drafts[1..] {
            assert_eq!(o.resource_type, "Observation");
            assert_eq!(o.body["partOf"][0]["reference"], format!("Procedure/{}", p.id));
            assert_eq!(o.body["effectivePeriod"], p.body["performedPeriod"]);
            assert_eq!(o.body["device"]["display"], "Polar Pacer Pro");
            let code = o.body["code"]["coding"][0]["code"].as_str().unwrap();
            assert_eq!(o.identifier_value, format!("17234567890:{code}"));
        }
        assert_eq!(by_code(&drafts, "55426-1").unwrap().body["code"]["coding"][0]["system"], LOINC);
        assert_eq!(
            by_code(&drafts, "distance").unwrap().body["code"]["coding"][0]["system"],
            "https://wearlink.dev/fhir/CodeSystem/activity-measure"
        );
    }

    #[test]
    fn kilojoules_are_never_read_as_kcal() {
        let mut ride = sample();
        ride.as_object_mut().unwrap().remove("calories");
        let drafts = map_activity(&ctx("p1"), &ride).unwrap();
        assert!(by_code(&drafts, "55424-6").is_none());
        assert!(drafts.iter().all(|d| d.body["valueQuantity"]["value"] != json!(901.5)));
    }

    #[test]
    fn heart_rate_needs_has_heartrate() {
        let mut a = sample();
        a["has_heartrate"] = json!(false);
        let drafts = map_activity(&ctx("p1"), &a).unwrap();
        assert!(by_code(&drafts, "55425-3").is_none() && by_code(&drafts, "55426-1").is_none());
        assert_eq!(drafts.len(), 4);
    }

    #[test]
    fn missing_or_absurd_measures_drop_only_their_observation() {
        let mut a = sample();
        a["distance"] = json!(0.0); // a gym session
        a["max_heartrate"] = json!(480);
        a["moving_time"] = json!("2890");
        a.as_object_mut().unwrap().remove("device_name");
        let drafts = map_activity(&ctx("p1"), &a).unwrap();
        let codes: Vec<_> = drafts[1..].iter().map(|d| d.body["code"]["coding"][0]["code"].clone()).collect();
        assert_eq!(codes, vec![json!("55424-6"), json!("55425-3")]);
        assert!(drafts[0].body.get("usedReference").is_none());
    }

    #[test]
    fn sport_falls_back_to_type() {
        let mut a = sample();
        a.as_object_mut().unwrap().remove("sport_type");
        a["type"] = json!("VirtualRide");
        let p = &map_activity(&ctx("p1"), &a).unwrap()[0];
        assert_eq!(p.body["code"]["coding"][0]["code"], "VirtualRide");
        assert_eq!(p.body["code"]["text"], "Virtual Ride");
    }

    #[test]
    fn an_activity_without_id_start_or_elapsed_time_is_an_error() {
        for (key, value) in [
            ("id", Value::Null),
            ("id", json!(-5)),
            ("id", json!(1.5)),
            ("id", json!("12a")),
            ("start_date", Value::Null),
            ("start_date", json!("2026-03-14T07:02:11")),
            ("elapsed_time", Value::Null),
            ("elapsed_time", json!(-1)),
            ("elapsed_time", json!(8 * 86_400)),
        ] {
            let mut a = sample();
            a[key] = value.clone();
            assert!(map_activity(&ctx("p1"), &a).is_err(), "{key} = {value}");
        }
        assert!(map_activity(&ctx("p1"), &json!([])).is_err());
    }

    #[test]
    fn a_numeric_string_id_names_the_same_resources() {
        let mut a = sample();
        a["id"] = json!("17234567890");
        assert_eq!(map_activity(&ctx("p1"), &a).unwrap(), map_activity(&ctx("p1"), &sample()).unwrap());
        let big = json!(u64::MAX);
        a["id"] = big;
        assert_eq!(map_activity(&ctx("p1"), &a).unwrap()[0].identifier_value, u64::MAX.to_string());
    }

    #[test]
    fn ids_are_stable_and_scoped_to_the_project() {
        let first = map_activity(&ctx("p1"), &sample()).unwrap();
        let again = map_activity(&ctx("p1"), &sample()).unwrap();
        let other = map_activity(&ctx("p2"), &sample()).unwrap();
        assert_eq!(first, again);
        for (a, b) in first.iter().zip(&other) {
            assert_ne!(a.id, b.id);
        }
        let ids: std::collections::HashSet<_> = first.iter().map(|d| &d.id).collect();
        assert_eq!(ids.len(), first.len());
    }

    #[test]
    fn resource_ids_cover_everything_the_mapper_writes() {
        let listed = activity_resource_ids(&ctx("p1"), "17234567890");
        assert_eq!(listed.len(), 6);
        for d in map_activity(&ctx("p1"), &sample()).unwrap() {
            assert!(listed.contains(&(d.resource_type, d.id.clone())), "{} {}", d.resource_type, d.identifier_value);
        }
        assert_eq!(activity_resource_ids(&ctx("p1"), " 017234567890"), listed);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_json_never_panics(value in arbitrary::json_value()) {
            let _ = map_activity(&ctx("p1"), &value);
        }

        #[test]
        fn mutated_samples_map_or_fail_cleanly(value in arbitrary::mutated(sample())) {
            if let Ok(drafts) = map_activity(&ctx("p1"), &value) {
                prop_assert_eq!(drafts[0].resource_type, "Procedure");
                for o in &drafts[1..] {
                    let v = o.body["valueQuantity"]["value"].as_f64().unwrap();
                    prop_assert!(v.is_finite() && v >= 0.0);
                }
            }
        }
    }
}
