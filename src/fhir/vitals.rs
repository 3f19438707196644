//! Provider-neutral builders for clinical measurements taken at one instant (a scale, a cuff, a
//! thermometer): R4 vital-sign Observations (hl7.org/fhir/R4/observation-vitalsigns.html) and
//! the few body measures that are not vital signs (body fat, category `exam`). Pure.
//!
//! Every vital sign has category `vital-signs`, a LOINC code, the subject, `effectiveDateTime`
//! and a UCUM quantity in a unit its R4 profile allows (kg, cm, /min, %, Cel, mm[Hg]); the blood
//! pressure panel carries its systolic and diastolic components and no value of its own.

use serde_json::{json, Value};

use super::activity::{ext_wearable_provider, Measure, OBSERVATION_CATEGORY, RESTING_HEART_RATE, UCUM};
use super::{provider_code_system, MapContext, ResourceDraft};

/// A vital sign measured at an instant; the rest as for the daily vitals (resting heart rate).
const fn vital_sign(
    code: &'static str,
    display: &'static str,
    unit: (&'static str, &'static str),
    range: (f64, f64),
) -> Measure {
    Measure { code, display, unit: unit.0, unit_display: unit.1, min: range.0, max: range.1, ..RESTING_HEART_RATE }
}

/// LOINC 29463-7; the R4 body-weight profile allows kg, g or [lb_av].
pub const BODY_WEIGHT: Measure = vital_sign("29463-7", "Body weight", ("kg", "kg"), (0.5, 650.0));
/// LOINC 8302-2; the R4 body-height profile allows cm or [in_i] (not m).
pub const BODY_HEIGHT: Measure = vital_sign("8302-2", "Body height", ("cm", "cm"), (20.0, 280.0));
/// LOINC 8867-4, beats per minute.
pub const HEART_RATE: Measure = vital_sign("8867-4", "Heart rate", ("/min", "beats/minute"), (20.0, 300.0));
/// LOINC 8310-5; the R4 body-temperature profile allows Cel or [degF].
pub const BODY_TEMPERATURE: Measure = vital_sign("8310-5", "Body temperature", ("Cel", "Cel"), (25.0, 45.0));
/// LOINC 85354-9, the panel; its components below (mm[Hg]).
pub const BLOOD_PRESSURE: Measure =
    vital_sign("85354-9", "Blood pressure panel with all children optional", ("mm[Hg]", "mmHg"), (0.0, 0.0));
pub const SYSTOLIC: Measure = vital_sign("8480-6", "Systolic blood pressure", ("mm[Hg]", "mmHg"), (30.0, 300.0));
pub const DIASTOLIC: Measure = vital_sign("8462-4", "Diastolic blood pressure", ("mm[Hg]", "mmHg"), (10.0, 250.0));
/// LOINC 41982-0 "Percentage of body fat Measured": a body measure, not a vital sign (category
/// `exam`).
pub const BODY_FAT: Measure =
    Measure { vital_sign: false, ..vital_sign("41982-0", "Percentage of body fat Measured", ("%", "%"), (1.0, 80.0)) };

/// What the Observations of one reading (a measure group) share.
#[derive(Clone, Copy, Debug)]
pub struct Reading<'a> {
    pub identifier_system: &'a str,
    /// Each identifier value is `<prefix>:<LOINC code>`.
    pub identifier_prefix: &'a str,
    /// When the reading was taken (a FHIR dateTime with its offset).
    pub effective: &'a str,
    /// The device's name, when the provider gives it.
    pub device: Option<&'a str>,
}

/// The identifier value of a measure's Observation in a reading.
pub fn reading_identifier(prefix: &str, measure: &Measure) -> String {
    format!("{prefix}:{}", measure.code)
}

/// One Observation (status final) of a measure at the reading's instant, or `None` when the
/// measure does not accept the value.
pub fn measurement(ctx: &MapContext, reading: &Reading<'_>, m: &Measure, value: f64) -> Option<ResourceDraft> {
    if !m.accepts(value) {
        return None;
    }
    let mut body = base(ctx, reading, m);
    body["valueQuantity"] = quantity(m, value);
    Some(ctx.draft("Observation", reading.identifier_system, &reading_identifier(reading.identifier_prefix, m), body))
}

/// The blood pressure panel with both components (the R4 profile requires both) and no value
/// of its own, or `None` when either is missing or absurd, or systolic is not above diastolic.
pub fn blood_pressure(
    ctx: &MapContext,
    reading: &Reading<'_>,
    systolic: Option<f64>,
    diastolic: Option<f64>,
) -> Option<ResourceDraft> {
    let (sys, dia) = (systolic?, diastolic?);
    if !SYSTOLIC.accepts(sys) || !DIASTOLIC.accepts(dia) || sys <= dia {
        return None;
    }
    let component = |m: &Measure, value: f64| json!({ "code": { "coding": [coding(m)], "text": m.display }, "valueQuantity": quantity(m, value) });
    let mut body = base(ctx, reading, &BLOOD_PRESSURE);
    body["component"] = json!([component(&SYSTOLIC, sys), component(&DIASTOLIC, dia)]);
    let identifier = reading_identifier(reading.identifier_prefix, &BLOOD_PRESSURE);
    Some(ctx.draft("Observation", reading.identifier_system, &identifier, body))
}

fn base(ctx: &MapContext, reading: &Reading<'_>, m: &Measure) -> Value {
    let (category, display) = if m.vital_sign { ("vital-signs", "Vital Signs") } else { ("exam", "Exam") };
    let mut codings = vec![coding(m)];
    if let Some((code, display)) = m.also_coded {
        codings.push(json!({ "system": m.system_url(), "code": code, "display": display }));
    }
    let mut body = json!({
        "extension": [{
            "url": ext_wearable_provider(),
            "valueCoding": { "system": provider_code_system(), "code": ctx.provider }
        }],
        "status": "final",
        "category": [{ "coding": [{ "system": OBSERVATION_CATEGORY, "code": category, "display": display }] }],
        "code": { "coding": codings, "text": m.display },
        "effectiveDateTime": reading.effective
    });
    if let Some(device) = reading.device {
        body["device"] = json!({ "display": device });
    }
    body
}

fn coding(m: &Measure) -> Value {
    json!({ "system": m.system_url(), "code": m.code, "display": m.display })
}

fn quantity(m: &Measure, value: f64) -> Value {
    let number = if value.fract() == 0.0 && value.abs() < 9.0e15 { json!(value as i64) } else { json!(value) };
    json!({ "value": number, "unit": m.unit_display, "system": UCUM, "code": m.unit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> MapContext {
        MapContext {
            project_id: "p1".into(),
            patient_id: "pat-1".into(),
            endpoint_id: "ep-1".into(),
            provider: "withings".into(),
            remote_user_id: "363".into(),
        }
    }

    fn reading() -> Reading<'static> {
        Reading {
            identifier_system: "sys",
            identifier_prefix: "363:42",
            effective: "2026-12-01T07:12:00Z",
            device: Some("Body+"),
        }
    }

    #[test]
    fn a_weight_is_a_vital_sign_in_kg() {
        let d = measurement(&ctx(), &reading(), &BODY_WEIGHT, 72.345).unwrap();
        let b = &d.body;
        assert_eq!(d.identifier_value, "363:42:29463-7");
        assert_eq!(b["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(b["code"]["coding"][0]["code"], "29463-7");
        assert_eq!(b["effectiveDateTime"], "2026-12-01T07:12:00Z");
        assert_eq!(b["valueQuantity"], json!({"value": 72.345, "unit": "kg", "system": UCUM, "code": "kg"}));
        assert_eq!(b["subject"]["reference"], "Patient/pat-1");
        assert!(measurement(&ctx(), &reading(), &BODY_WEIGHT, 0.0).is_none());
        assert!(measurement(&ctx(), &reading(), &BODY_WEIGHT, 9999.0).is_none());
    }

    #[test]
    fn blood_pressure_is_a_panel_of_two_components_without_a_value() {
        let d = blood_pressure(&ctx(), &reading(), Some(121.0), Some(79.0)).unwrap();
        let b = &d.body;
        assert_eq!(b["code"]["coding"][0]["code"], "85354-9");
        assert!(b.get("valueQuantity").is_none());
        assert_eq!(b["component"][0]["code"]["coding"][0]["code"], "8480-6");
        assert_eq!(b["component"][0]["valueQuantity"]["value"], 121);
        assert_eq!(b["component"][0]["valueQuantity"]["code"], "mm[Hg]");
        assert_eq!(b["component"][1]["code"]["coding"][0]["code"], "8462-4");
        assert_eq!(b["component"][1]["valueQuantity"]["value"], 79);
        assert!(blood_pressure(&ctx(), &reading(), Some(121.0), None).is_none());
        assert!(blood_pressure(&ctx(), &reading(), Some(70.0), Some(80.0)).is_none(), "systolic below diastolic");
    }

    #[test]
    fn body_fat_is_an_exam_not_a_vital_sign() {
        let d = measurement(&ctx(), &reading(), &BODY_FAT, 21.4).unwrap();
        assert_eq!(d.body["category"][0]["coding"][0]["code"], "exam");
        assert_eq!(d.body["valueQuantity"]["code"], "%");
    }
}
