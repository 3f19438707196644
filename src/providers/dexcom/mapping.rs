//! Dexcom API v3 records → FHIR (field names from https://developer.dexcom.com/docs and
//! shared/spec/providers.md). Pure: no I/O.
//!
//! - EGV → a CGM IG sensor reading (`crate::fhir::cgm`): 99504-3 in mg/dL, 105272-9 when the
//!   record's `unit` is mmol/L. `effectiveDateTime` is `systemTime` (UTC, the sensor's clock
//!   corrected by Dexcom), written with `displayTime`'s offset where `displayTime` carries one,
//!   else in UTC. `status` high / low without a `value` → `dataAbsentReason` plus the
//!   interpretation `>` / `<`.
//! - Trend: a **component** (our code `trend`, the value Dexcom's own trend code) with the
//!   `trendRate` as a second component (`trend-rate`, mg/dL/min). Components rather than an
//!   extension: the trend is measured by the same device at the same instant, which is what
//!   R4 components are for, the IG's sensor-reading profile leaves `component` open, and any R4
//!   reader (and validator) understands a component without an extension definition.
//! - The transmitter → one Device per user and `transmitterId` (identifier
//!   `<userId>/<transmitterId>`, `serialNumber` the transmitter), its `modelNumber` the
//!   `transmitterGeneration`; readings reference it in `device`.
//! - Events: carbs → 9059-7 (g), a fingerstick blood glucose → 2339-0 / 15074-8, exercise →
//!   55411-3 (min); insulin, health and notes are not written (see `map_event`). An event Dexcom
//!   marks `deleted` becomes `entered-in-error`.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde_json::{json, Value};

use crate::fhir::activity::{fhir_date_time, number, text};
use crate::fhir::cgm::{self, GlucoseUnit, OffScale, SensorReading, LOINC};
use crate::fhir::{MapContext, MapError, ResourceDraft, BASE};

/// Values `<userId>/<recordId>`.
pub const EGV_SYSTEM: &str = "https://api.dexcom.com/v3/users/self/egvs";
/// Values `<userId>/<recordId>`.
pub const EVENT_SYSTEM: &str = "https://api.dexcom.com/v3/users/self/events";
/// Values: `<userId>/<transmitterId>` (the transmitter itself is the Device's `serialNumber`).
pub const DEVICE_SYSTEM: &str = "https://api.dexcom.com/v3/users/self/devices/transmitterId";
const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// Our codes of a reading's components (`trend`, `trend-rate`).
pub fn cgm_component_system() -> String {
    format!("{BASE}/CodeSystem/cgm-component")
}

/// Dexcom's trend codes, kept as given (`flat`, `fortyFiveUp`, `doubleDown`, …).
pub fn trend_system() -> String {
    format!("{BASE}/CodeSystem/dexcom-trend")
}

/// A record's id, scoped to the user (sandbox users share data): `<userId>/<recordId>`.
pub fn keyed(ctx: &MapContext, record_id: &str) -> String {
    format!("{}/{record_id}", ctx.remote_user_id)
}

pub fn record_id(record: &Value) -> Option<String> {
    text(record.get("recordId"), 128).map(String::from)
}

pub fn transmitter_id(record: &Value) -> Option<&str> {
    text(record.get("transmitterId"), 128)
}

/// `systemTime`: UTC, written without a zone (`2025-02-06T09:12:35`), or with one.
pub fn system_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%S%.f").ok().map(|n| n.and_utc())
}

/// When the record was taken: `systemTime`, in `displayTime`'s offset when it has one.
fn effective(record: &Value) -> Result<DateTime<FixedOffset>, MapError> {
    let at = record
        .get("systemTime")
        .and_then(Value::as_str)
        .and_then(system_time)
        .filter(|t| (1970..=2999).contains(&chrono::Datelike::year(t)))
        .ok_or_else(|| MapError("a Dexcom record without a valid systemTime".into()))?;
    let offset = record
        .get("displayTime")
        .and_then(Value::as_str)
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map(|d| *d.offset())
        .unwrap_or_else(|| FixedOffset::east_opt(0).expect("UTC"));
    Ok(at.with_timezone(&offset))
}

/// The FHIR id of the Device of a transmitter.
pub fn device_id(ctx: &MapContext, transmitter: &str) -> String {
    ctx.id_for("Device", DEVICE_SYSTEM, &keyed(ctx, transmitter))
}

/// One EGV → a sensor reading.
pub fn map_egv(ctx: &MapContext, record: &Value) -> Result<ResourceDraft, MapError> {
    let id = record_id(record).ok_or_else(|| MapError("an EGV without recordId".into()))?;
    let at = effective(record)?;
    let unit = match record.get("unit").and_then(Value::as_str) {
        None => GlucoseUnit::MgDl,
        Some(unit) => GlucoseUnit::parse(unit).ok_or_else(|| MapError(format!("unknown glucose unit {unit:?}")))?,
    };
    let value = number(record.get("value")).filter(|v| *v > 0.0 && *v < 2000.0);
    let off_scale = match (value, record.get("status").and_then(Value::as_str)) {
        (None, Some("high")) => Some(OffScale::High),
        (None, Some("low")) => Some(OffScale::Low),
        _ => None,
    };
    let mut components = Vec::new();
    if let Some(trend) = text(record.get("trend"), 40) {
        components.push(json!({
            "code": { "coding": [{ "system": cgm_component_system(), "code": "trend", "display": "Glucose trend" }] },
            "valueCodeableConcept": { "coding": [{ "system": trend_system(), "code": trend }], "text": trend }
        }));
    }
    if let Some(rate) = number(record.get("trendRate")) {
        let rate_unit = match unit {
            GlucoseUnit::MgDl => "mg/dL/min",
            GlucoseUnit::MmolL => "mmol/L/min",
        };
        components.push(json!({
            "code": { "coding": [{ "system": cgm_component_system(), "code": "trend-rate", "display": "Glucose rate of change" }] },
            "valueQuantity": cgm::quantity(rate, rate_unit)
        }));
    }
    let body = cgm::sensor_reading(&SensorReading {
        effective: fhir_date_time(&at),
        value,
        unit,
        off_scale,
        device_id: transmitter_id(record).map(|t| device_id(ctx, t)),
        components,
    });
    Ok(ctx.draft("Observation", EGV_SYSTEM, &keyed(ctx, &id), body))
}

/// The transmitter of a record → its Device (identifier = `transmitterId`).
pub fn map_device(ctx: &MapContext, record: &Value) -> Result<ResourceDraft, MapError> {
    let transmitter = transmitter_id(record).ok_or_else(|| MapError("a record without transmitterId".into()))?;
    let generation = text(record.get("transmitterGeneration"), 40);
    let mut body = json!({
        "status": "active",
        "manufacturer": "Dexcom",
        "type": { "text": "Continuous glucose monitoring transmitter" },
        "serialNumber": transmitter,
    });
    if let Some(generation) = generation {
        body["modelNumber"] = json!(generation);
        body["deviceName"] =
            json!([{ "name": format!("Dexcom {}", generation.to_ascii_uppercase()), "type": "model-name" }]);
    }
    // Keyed by the user as readings are: a Device names its patient, and two accounts may report
    // the same transmitter (Dexcom's sandbox users share one), which must not share a Device.
    let mut draft = ctx.draft("Device", DEVICE_SYSTEM, &keyed(ctx, transmitter), body);
    // A Device names its patient in `patient` (R4 has no `Device.subject`).
    if let Value::Object(map) = &mut draft.body {
        if let Some(subject) = map.remove("subject") {
            map.insert("patient".into(), subject);
        }
    }
    Ok(draft)
}

/// A number Dexcom may send as text (`"25"`).
fn loose_number(value: Option<&Value>) -> Option<f64> {
    number(value).or_else(|| value?.as_str()?.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
}

/// One event → the closest standard Observation, or nothing (with the reason, logged):
/// insulin is a medication given (a MedicationAdministration, and the record does not say which
/// insulin), health events and notes are free text without a standard code.
pub fn map_event(ctx: &MapContext, record: &Value) -> Result<Vec<ResourceDraft>, MapError> {
    let id = record_id(record).ok_or_else(|| MapError("an event without recordId".into()))?;
    let event_type = record.get("eventType").and_then(Value::as_str).unwrap_or_default();
    let unit_text = record.get("unit").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    let (category, code, display, ucum) = match event_type {
        "carbs" => ("survey", "9059-7", "Carbohydrate intake Estimated", "g"),
        "bloodGlucose" if unit_text == "mmol/l" => {
            ("laboratory", "15074-8", "Glucose [Moles/volume] in Blood", "mmol/L")
        }
        "bloodGlucose" => ("laboratory", "2339-0", "Glucose [Mass/volume] in Blood", "mg/dL"),
        "exercise" => ("activity", "55411-3", "Exercise duration", "min"),
        other => {
            let reason = match other {
                "insulin" => "an insulin dose is a MedicationAdministration, not an Observation",
                "health" | "notes" => "free-text events have no standard code",
                _ => "an event type Wearlink does not know",
            };
            tracing::debug!(event_type = other, reason, "Dexcom event not written");
            return Ok(Vec::new());
        }
    };
    let at = effective(record)?;
    let deleted = record.get("eventStatus").and_then(Value::as_str) == Some("deleted");
    let mut body = json!({
        "status": if deleted { "entered-in-error" } else { "final" },
        "category": [{ "coding": [{ "system": OBSERVATION_CATEGORY, "code": category }] }],
        "code": { "coding": [{ "system": LOINC, "code": code, "display": display }], "text": display },
        "effectiveDateTime": fhir_date_time(&at),
    });
    match loose_number(record.get("value")).filter(|v| *v >= 0.0) {
        Some(value) => body["valueQuantity"] = cgm::quantity(value, ucum),
        None => {
            body["dataAbsentReason"] = json!({ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown" }] })
        }
    }
    Ok(vec![ctx.draft("Observation", EVENT_SYSTEM, &keyed(ctx, &id), body)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> MapContext {
        MapContext {
            project_id: "p".into(),
            patient_id: "pat".into(),
            endpoint_id: "e".into(),
            provider: "dexcom".into(),
            remote_user_id: "u-1".into(),
        }
    }

    #[test]
    fn two_accounts_reporting_one_transmitter_get_a_device_each() {
        let other = MapContext { patient_id: "pat-2".into(), remote_user_id: "u-2".into(), ..ctx() };
        assert_ne!(device_id(&ctx(), "80AB12"), device_id(&other, "80AB12"));
        let record = json!({"transmitterId": "80AB12", "transmitterGeneration": "g7"});
        let (a, b) = (map_device(&ctx(), &record).unwrap(), map_device(&other, &record).unwrap());
        assert_ne!(a.id, b.id);
        assert_eq!((a.id.clone(), b.id.clone()), (device_id(&ctx(), "80AB12"), device_id(&other, "80AB12")));
        assert_eq!(a.body["serialNumber"], "80AB12");
    }

    fn egv(extra: Value) -> Value {
        let mut record = json!({
            "recordId": "3c8fb3e5-1b1e-4b8a-8b5e-1c7e0d0a0001",
            "systemTime": "2025-02-06T09:12:35",
            "displayTime": "2025-02-06T01:12:35-08:00",
            "transmitterId": "80AB12",
            "transmitterTicks": 5796,
            "value": 112,
            "status": "ok",
            "trend": "flat",
            "trendRate": -0.3,
            "unit": "mg/dL",
            "rateUnit": "mg/dL/min",
            "displayDevice": "iOS",
            "transmitterGeneration": "g7"
        });
        if let (Value::Object(r), Value::Object(e)) = (&mut record, extra) {
            r.extend(e);
        }
        record
    }

    #[test]
    fn an_egv_is_a_sensor_reading_in_the_display_offset() {
        let draft = map_egv(&ctx(), &egv(json!({}))).unwrap();
        let b = &draft.body;
        assert_eq!(b["code"]["coding"][0]["code"], "99504-3");
        assert_eq!(b["category"][0]["coding"][0]["code"], "laboratory");
        assert_eq!(b["effectiveDateTime"], "2025-02-06T01:12:35-08:00");
        assert_eq!(b["valueQuantity"], json!({"value": 112.0, "unit": "mg/dL", "system": cgm::UCUM, "code": "mg/dL"}));
        assert_eq!(b["component"][0]["valueCodeableConcept"]["coding"][0]["code"], "flat");
        assert_eq!(b["component"][1]["valueQuantity"]["code"], "mg/dL/min");
        assert_eq!(b["device"]["reference"], format!("Device/{}", device_id(&ctx(), "80AB12")));
        assert_eq!(draft.identifier_value, "u-1/3c8fb3e5-1b1e-4b8a-8b5e-1c7e0d0a0001");
        // Without an offset in displayTime: UTC.
        let utc = map_egv(&ctx(), &egv(json!({"displayTime": "2025-02-06T01:12:35"}))).unwrap();
        assert_eq!(utc.body["effectiveDateTime"], "2025-02-06T09:12:35Z");
    }

    #[test]
    fn molar_units_high_and_low() {
        let molar = map_egv(&ctx(), &egv(json!({"unit": "mmol/L", "value": 6.2, "trendRate": 0.1}))).unwrap();
        assert_eq!(molar.body["code"]["coding"][0]["code"], "105272-9");
        assert_eq!(molar.body["valueQuantity"]["code"], "mmol/L");
        let high = map_egv(&ctx(), &egv(json!({"value": null, "status": "high"}))).unwrap();
        assert!(high.body.get("valueQuantity").is_none());
        assert_eq!(high.body["interpretation"][0]["coding"][0]["code"], ">");
        assert!(high.body.get("dataAbsentReason").is_some());
        let low = map_egv(&ctx(), &egv(json!({"value": null, "status": "low"}))).unwrap();
        assert_eq!(low.body["interpretation"][0]["coding"][0]["code"], "<");
        assert!(map_egv(&ctx(), &egv(json!({"systemTime": "yesterday"}))).is_err());
        assert!(map_egv(&ctx(), &egv(json!({"unit": "mg"}))).is_err());
    }

    #[test]
    fn the_transmitter_is_a_device_of_the_patient() {
        let device = map_device(&ctx(), &egv(json!({}))).unwrap();
        assert_eq!(device.resource_type, "Device");
        assert_eq!(device.id, device_id(&ctx(), "80AB12"));
        assert_eq!(device.body["patient"]["reference"], "Patient/pat");
        assert!(device.body.get("subject").is_none());
        assert_eq!(device.body["modelNumber"], "g7");
    }

    #[test]
    fn events_map_to_the_closest_observation_or_nothing() {
        let event = |t: &str, value: Value, unit: &str, status: &str| {
            json!({"recordId": "ev-1", "systemTime": "2025-02-06T09:00:00", "displayTime": "2025-02-06T10:00:00+01:00",
                   "eventStatus": status, "eventType": t, "value": value, "unit": unit})
        };
        let carbs = map_event(&ctx(), &event("carbs", json!("45"), "grams", "created")).unwrap();
        assert_eq!(carbs[0].body["code"]["coding"][0]["code"], "9059-7");
        assert_eq!(carbs[0].body["valueQuantity"]["value"], 45.0);
        assert_eq!(carbs[0].body["effectiveDateTime"], "2025-02-06T10:00:00+01:00");
        let bg = map_event(&ctx(), &event("bloodGlucose", json!(5.4), "mmol/L", "created")).unwrap();
        assert_eq!(bg[0].body["code"]["coding"][0]["code"], "15074-8");
        let deleted = map_event(&ctx(), &event("exercise", json!(30), "minutes", "deleted")).unwrap();
        assert_eq!(deleted[0].body["status"], "entered-in-error");
        assert!(map_event(&ctx(), &event("insulin", json!(4), "units", "created")).unwrap().is_empty());
        assert!(map_event(&ctx(), &event("notes", json!(null), "", "created")).unwrap().is_empty());
    }

    /// `docs/examples/dexcom-glucose-day-bundle.json` is this mapping's output for a day of
    /// readings (every 5 minutes; a few shown) with its transmitter and the day's summary
    /// computed from all 288: regenerated with `WEARLINK_WRITE_EXAMPLES=1`, else compared.
    #[test]
    fn the_documented_example_bundle_is_what_the_mapping_writes() {
        let ctx = MapContext { project_id: "example".into(), ..ctx() };
        let day = 1_773_446_400_000_i64; // 2026-03-14T00:00:00Z
        let readings: Vec<ResourceDraft> = (0..288)
            .map(|i| {
                let at = day + i * 300_000;
                let value = match i {
                    144 => json!(null),
                    i if i < 72 => json!(190 - (i % 12) * 2),
                    i => json!(95 + (i % 24)),
                };
                let system = chrono::DateTime::from_timestamp_millis(at).unwrap();
                let display = system.with_timezone(&FixedOffset::east_opt(3600).unwrap());
                let record = egv(json!({"recordId": format!("egv-{i:03}"),
                    "systemTime": system.format("%Y-%m-%dT%H:%M:%S").to_string(),
                    "displayTime": display.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                    "value": value, "status": if value.is_null() { "high" } else { "ok" }}));
                map_egv(&ctx, &record).unwrap()
            })
            .collect();
        let counted: Vec<cgm::Counted> = readings.iter().filter_map(|d| cgm::counted(&d.body)).collect();
        let summary = cgm::summarize(&counted).unwrap();
        let mut shown = vec![map_device(&ctx, &egv(json!({}))).unwrap()];
        shown.extend([&readings[0], &readings[1], &readings[144]].into_iter().cloned());
        shown.extend(cgm::summary_drafts(&ctx, "2026-03-14", "2026-03-14T00:00:00Z", "2026-03-14T23:59:59Z", &summary));
        let entries: Vec<Value> = shown
            .into_iter()
            .map(|d| {
                let mut resource = d.body;
                resource["id"] = json!(d.id);
                json!({ "fullUrl": format!("https://wearlink.example/fhir/R4/{}/{}", d.resource_type, d.id), "resource": resource })
            })
            .collect();
        let bundle = json!({ "resourceType": "Bundle", "type": "collection", "entry": entries });
        let text = serde_json::to_string_pretty(&bundle).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/dexcom-glucose-day-bundle.json");
        if std::env::var("WEARLINK_WRITE_EXAMPLES").is_ok_and(|v| v == "1") {
            std::fs::write(path, &text).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(path).unwrap_or_default(),
            text,
            "regenerate with WEARLINK_WRITE_EXAMPLES=1"
        );
    }
}
