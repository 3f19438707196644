//! Continuous glucose monitoring in FHIR, provider-neutral: sensor readings and the daily summary
//! as the HL7 CGM IG (`hl7.fhir.uv.cgm` 1.0.0, STU1 on R4; github HL7/cgm `input/fsh/profiles.fsh`)
//! shapes them, and the summary's arithmetic. Pure: no I/O. The sync stage
//! (`crate::sync::cgm`) reads the stored readings of a day and writes what `summarize` answers.
//!
//! Sensor reading (`CGMSensorReadingMassPerVolume` / `…MolesPerVolume`): category `laboratory`,
//! LOINC 99504-3 in mg/dL (105272-9 in mmol/L), `effectiveDateTime`, a `valueQuantity` or, for a
//! reading the sensor only reports as above / below its range, a `dataAbsentReason` with the
//! interpretation `>` (off scale high) or `<` (off scale low).
//!
//! Daily summary: a panel 107931-8 over the day (`effectivePeriod`) whose `hasMember`s are time in
//! ranges 106793-3 (five % components), mean glucose 97507-8, GMI 97506-0, coefficient of
//! variation 104638-2 and sensor active % 104637-4 — each its own Observation, as in the IG.

use serde_json::{json, Value};

use super::{MapContext, ResourceDraft, BASE};

pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const DATA_ABSENT: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";

/// Glucose [Mass/volume] in Interstitial fluid (mg/dL).
pub const READING_MASS: &str = "99504-3";
/// Glucose [Moles/volume] in Interstitial fluid (mmol/L).
pub const READING_MOLAR: &str = "105272-9";
pub const SUMMARY_PANEL: &str = "107931-8";
pub const TIME_IN_RANGES: &str = "106793-3";
pub const MEAN_GLUCOSE_MASS: &str = "97507-8";
pub const GMI: &str = "97506-0";
pub const COEFFICIENT_OF_VARIATION: &str = "104638-2";
pub const SENSOR_ACTIVE: &str = "104637-4";

/// mg/dL per mmol/L of glucose (molar mass 180.156 g/mol).
pub const MG_DL_PER_MMOL_L: f64 = 18.0156;
/// The readings a day holds at one every 5 minutes (the sensor-active denominator).
pub const READINGS_PER_DAY: f64 = 288.0;

/// The identifier system of the daily summary's resources (values `<patient>:<date>:<code>`).
pub fn summary_system() -> String {
    format!("{BASE}/sid/cgm-daily-summary")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlucoseUnit {
    MgDl,
    MmolL,
}

impl GlucoseUnit {
    /// `mg/dL` / `mmol/L` as providers write them (any case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "mg/dl" => Some(Self::MgDl),
            "mmol/l" => Some(Self::MmolL),
            _ => None,
        }
    }

    fn ucum(self) -> &'static str {
        match self {
            Self::MgDl => "mg/dL",
            Self::MmolL => "mmol/L",
        }
    }

    fn reading_code(self) -> (&'static str, &'static str) {
        match self {
            Self::MgDl => (READING_MASS, "Glucose [Mass/volume] in Interstitial fluid"),
            Self::MmolL => (READING_MOLAR, "Glucose [Moles/volume] in Interstitial fluid"),
        }
    }
}

/// A reading the sensor reports only as beyond its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffScale {
    High,
    Low,
}

/// One sensor reading.
pub struct SensorReading {
    /// FHIR dateTime of the reading.
    pub effective: String,
    pub value: Option<f64>,
    pub unit: GlucoseUnit,
    /// Set when there is no number because the glucose was beyond the sensor's range.
    pub off_scale: Option<OffScale>,
    /// The FHIR id of the Device that measured it.
    pub device_id: Option<String>,
    /// Further components (a provider's trend).
    pub components: Vec<Value>,
}

/// The reading's Observation body (status `final`).
pub fn sensor_reading(reading: &SensorReading) -> Value {
    let (code, display) = reading.unit.reading_code();
    let mut body = json!({
        "status": "final",
        "category": [{ "coding": [{ "system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory" }] }],
        "code": { "coding": [{ "system": LOINC, "code": code, "display": display }], "text": display },
        "effectiveDateTime": reading.effective,
    });
    match (reading.value, reading.off_scale) {
        (Some(value), _) => {
            body["valueQuantity"] = quantity(value, reading.unit.ucum());
        }
        (None, off_scale) => {
            let text = match off_scale {
                Some(OffScale::High) => "above the sensor's reporting range",
                Some(OffScale::Low) => "below the sensor's reporting range",
                None => "the sensor reported no value",
            };
            let code = if off_scale.is_some() { "as-text" } else { "unknown" };
            body["dataAbsentReason"] = json!({ "coding": [{ "system": DATA_ABSENT, "code": code }], "text": text });
        }
    }
    if let Some(off_scale) = reading.off_scale {
        let (code, display) = match off_scale {
            OffScale::High => (">", "Off scale high"),
            OffScale::Low => ("<", "Off scale low"),
        };
        body["interpretation"] =
            json!([{ "coding": [{ "system": INTERPRETATION, "code": code, "display": display }] }]);
    }
    if let Some(device) = &reading.device_id {
        body["device"] = json!({ "reference": format!("Device/{device}") });
    }
    if !reading.components.is_empty() {
        body["component"] = Value::Array(reading.components.clone());
    }
    body
}

/// A UCUM quantity.
pub fn quantity(value: f64, ucum: &str) -> Value {
    json!({ "value": value, "unit": ucum, "system": UCUM, "code": ucum })
}

/// A stored reading, as the summary counts it: mg/dL, or off scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Counted {
    MgDl(f64),
    OffScale(OffScale),
}

/// Reads a stored reading back (`None`: not a reading, entered in error, or without a value).
pub fn counted(body: &Value) -> Option<Counted> {
    if body.get("status").and_then(Value::as_str) == Some("entered-in-error") {
        return None;
    }
    let code = body.pointer("/code/coding/0/code").and_then(Value::as_str)?;
    if let Some(value) = body.pointer("/valueQuantity/value").and_then(Value::as_f64) {
        return match code {
            READING_MASS => Some(Counted::MgDl(value)),
            READING_MOLAR => Some(Counted::MgDl(value * MG_DL_PER_MMOL_L)),
            _ => None,
        };
    }
    match body.pointer("/interpretation/0/coding/0/code").and_then(Value::as_str) {
        Some(">") => Some(Counted::OffScale(OffScale::High)),
        Some("<") => Some(Counted::OffScale(OffScale::Low)),
        _ => None,
    }
}

/// One day's summary; percentages and values rounded to one decimal.
#[derive(Clone, Debug, PartialEq)]
pub struct DaySummary {
    pub readings: usize,
    /// % of readings < 54 mg/dL, 54–69, 70–180, 181–250, > 250 (Battelino et al., Diabetes Care
    /// 2019, the international consensus on time in range).
    pub very_low: f64,
    pub low: f64,
    pub in_range: f64,
    pub high: f64,
    pub very_high: f64,
    pub mean_mg_dl: f64,
    /// GMI (%) = 3.31 + 0.02392 × mean glucose in mg/dL (Bergenstal et al., Diabetes Care 2018).
    pub gmi_percent: f64,
    /// Sample standard deviation ÷ mean × 100; `None` below two readings.
    pub cv_percent: Option<f64>,
    /// Readings ÷ 288 × 100, at most 100.
    pub sensor_active_percent: f64,
}

/// Off-scale readings count at the sensor's limits (Dexcom: 40 and 400 mg/dL) in the mean and
/// the variation, and in the very low / very high ranges — as Dexcom Clarity reports them.
pub const OFF_SCALE_LOW_MG_DL: f64 = 40.0;
pub const OFF_SCALE_HIGH_MG_DL: f64 = 400.0;

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// The summary of one day's readings; `None` without any.
pub fn summarize(readings: &[Counted]) -> Option<DaySummary> {
    if readings.is_empty() {
        return None;
    }
    let values: Vec<f64> = readings
        .iter()
        .map(|r| match r {
            Counted::MgDl(v) => *v,
            Counted::OffScale(OffScale::High) => OFF_SCALE_HIGH_MG_DL,
            Counted::OffScale(OffScale::Low) => OFF_SCALE_LOW_MG_DL,
        })
        .collect();
    let n = values.len() as f64;
    // The ranges are bounded in whole mg/dL, which the consensus equates with 3.0 / 3.9 / 10.0 /
    // 13.9 mmol/L: a molar reading converted exactly (10.0 → 180.16) would fall a range too high,
    // so readings are put in ranges at whole mg/dL (Dexcom's mg/dL values are whole already).
    let share = |f: &dyn Fn(f64) -> bool| round1(values.iter().filter(|v| f(v.round())).count() as f64 / n * 100.0);
    let mean = values.iter().sum::<f64>() / n;
    let cv_percent = (values.len() >= 2).then(|| {
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        round1(variance.sqrt() / mean * 100.0)
    });
    Some(DaySummary {
        readings: values.len(),
        very_low: share(&|v| v < 54.0),
        low: share(&|v| (54.0..70.0).contains(&v)),
        in_range: share(&|v| (70.0..=180.0).contains(&v)),
        high: share(&|v| v > 180.0 && v <= 250.0),
        very_high: share(&|v| v > 250.0),
        mean_mg_dl: round1(mean),
        gmi_percent: round1(3.31 + 0.02392 * mean),
        cv_percent,
        sensor_active_percent: round1((n / READINGS_PER_DAY * 100.0).min(100.0)),
    })
}

/// The summary's resources for `date` (`YYYY-MM-DD`, the UTC day `[start, end]`): the panel and
/// its members, identified by patient, day and code (a recomputation is a new version of each).
pub fn summary_drafts(ctx: &MapContext, date: &str, start: &str, end: &str, s: &DaySummary) -> Vec<ResourceDraft> {
    let system = summary_system();
    let period = json!({ "start": start, "end": end });
    let observation = |code: &str, display: &str, extra: Value| {
        let mut body = json!({
            "status": "final",
            "category": [{ "coding": [{ "system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory" }] }],
            "code": { "coding": [{ "system": LOINC, "code": code, "display": display }], "text": display },
            "effectivePeriod": period,
        });
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        ctx.draft("Observation", &system, &format!("{}:{date}:{code}", ctx.patient_id), body)
    };
    let component = |code: &str, display: &str, value: f64| json!({ "code": { "coding": [{ "system": LOINC, "code": code, "display": display }] }, "valueQuantity": quantity(value, "%") });
    let mut members = vec![
        observation(
            TIME_IN_RANGES,
            "Glucose time in ranges",
            json!({ "component": [
                component("104641-6", "Glucose [Time] in Interstitial fluid below 54 mg/dL (very low)", s.very_low),
                component("104642-4", "Glucose [Time] in Interstitial fluid from 54 to 69 mg/dL (low)", s.low),
                component("97510-2", "Glucose [Time] in Interstitial fluid from 70 to 180 mg/dL (in target)", s.in_range),
                component("104640-8", "Glucose [Time] in Interstitial fluid from 181 to 250 mg/dL (high)", s.high),
                component("104639-0", "Glucose [Time] in Interstitial fluid above 250 mg/dL (very high)", s.very_high),
            ] }),
        ),
        observation(
            MEAN_GLUCOSE_MASS,
            "Glucose [Mass/volume] mean in Interstitial fluid",
            json!({ "valueQuantity": quantity(s.mean_mg_dl, "mg/dL") }),
        ),
        observation(GMI, "Glucose management indicator", json!({ "valueQuantity": quantity(s.gmi_percent, "%") })),
        observation(
            SENSOR_ACTIVE,
            "Continuous glucose monitoring sensor active time",
            json!({ "valueQuantity": quantity(s.sensor_active_percent, "%") }),
        ),
    ];
    if let Some(cv) = s.cv_percent {
        members.push(observation(
            COEFFICIENT_OF_VARIATION,
            "Glucose coefficient of variation in Interstitial fluid",
            json!({ "valueQuantity": quantity(cv, "%") }),
        ));
    }
    let has_member: Vec<Value> =
        members.iter().map(|m| json!({ "reference": format!("Observation/{}", m.id) })).collect();
    let panel = observation(
        SUMMARY_PANEL,
        "Continuous glucose monitoring summary",
        json!({ "hasMember": has_member, "note": [{ "text": format!("{} sensor readings", s.readings) }] }),
    );
    members.push(panel);
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mg(values: &[f64]) -> Vec<Counted> {
        values.iter().map(|v| Counted::MgDl(*v)).collect()
    }

    /// Ten readings worked out by hand: 40 (off scale low), 50, 60, 70, 100, 180, 181, 250, 251,
    /// 400 (off scale high). Very low 40, 50 → 20 %; low 60 → 10 %; in range 70, 100, 180 → 30 %;
    /// high 181, 250 → 20 %; very high 251, 400 → 20 %. Sum 1582, mean 158.2; GMI 3.31 +
    /// 0.02392 × 158.2 = 7.094 → 7.1. Squared deviations sum to 122,989.6; ÷ 9 = 13,665.51;
    /// SD 116.90; CV 73.89 % → 73.9. Sensor active 10 / 288 = 3.47 % → 3.5.
    #[test]
    fn a_hand_computed_day() {
        let mut readings = vec![Counted::OffScale(OffScale::Low)];
        readings.extend(mg(&[50.0, 60.0, 70.0, 100.0, 180.0, 181.0, 250.0, 251.0]));
        readings.push(Counted::OffScale(OffScale::High));
        let s = summarize(&readings).unwrap();
        assert_eq!(s.readings, 10);
        assert_eq!((s.very_low, s.low, s.in_range, s.high, s.very_high), (20.0, 10.0, 30.0, 20.0, 20.0));
        assert_eq!(s.mean_mg_dl, 158.2);
        assert_eq!(s.gmi_percent, 7.1);
        assert_eq!(s.cv_percent, Some(73.9));
        assert_eq!(s.sensor_active_percent, 3.5);
    }

    /// A steady day: 288 readings of 120 → all in range, mean 120, GMI 3.31 + 2.8704 = 6.18 → 6.2,
    /// CV 0, sensor active 100 %.
    #[test]
    fn a_steady_full_day() {
        let s = summarize(&mg(&[120.0; 288])).unwrap();
        assert_eq!((s.in_range, s.mean_mg_dl, s.gmi_percent, s.cv_percent), (100.0, 120.0, 6.2, Some(0.0)));
        assert_eq!(s.sensor_active_percent, 100.0);
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&mg(&[99.0])).unwrap().cv_percent, None);
    }

    #[test]
    fn stored_readings_are_read_back_in_mg_dl() {
        let reading = |value, unit| {
            sensor_reading(&SensorReading {
                effective: "2026-03-14T08:00:00Z".into(),
                value,
                unit,
                off_scale: None,
                device_id: None,
                components: vec![],
            })
        };
        assert_eq!(counted(&reading(Some(100.0), GlucoseUnit::MgDl)), Some(Counted::MgDl(100.0)));
        let Some(Counted::MgDl(v)) = counted(&reading(Some(5.5), GlucoseUnit::MmolL)) else { panic!() };
        assert!((v - 99.09).abs() < 0.01, "{v}");
        let mut gone = reading(Some(100.0), GlucoseUnit::MgDl);
        gone["status"] = json!("entered-in-error");
        assert_eq!(counted(&gone), None);
        let high = sensor_reading(&SensorReading {
            effective: "2026-03-14T08:00:00Z".into(),
            value: None,
            unit: GlucoseUnit::MgDl,
            off_scale: Some(OffScale::High),
            device_id: Some("d".into()),
            components: vec![],
        });
        assert!(high.get("valueQuantity").is_none());
        assert_eq!(high["dataAbsentReason"]["coding"][0]["code"], "as-text");
        assert_eq!(high["interpretation"][0]["coding"][0]["code"], ">");
        assert_eq!(high["device"]["reference"], "Device/d");
        assert_eq!(counted(&high), Some(Counted::OffScale(OffScale::High)));
    }

    #[test]
    fn molar_readings_fall_in_the_ranges_their_mmol_l_bounds_name() {
        let mmol = |v: f64| Counted::MgDl(v * MG_DL_PER_MMOL_L);
        // 2.9 very low; 3.0 low; 3.9 and 10.0 in range; 13.9 high; 14.0 very high.
        let s = summarize(&[mmol(2.9), mmol(3.0), mmol(3.9), mmol(10.0), mmol(13.9), mmol(14.0)]).unwrap();
        let third = round1(100.0 / 6.0);
        assert_eq!(
            (s.very_low, s.low, s.in_range, s.high, s.very_high),
            (third, third, round1(200.0 / 6.0), third, third)
        );
    }
}
