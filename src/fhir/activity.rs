//! Provider-neutral builders for wearable data: the exercise-session Procedure, quantity
//! Observations in the HL7 Physical Activity IG (1.0.0) shape, and the time and number helpers
//! every provider's mapper shares. Pure: JSON in, drafts out, no I/O.
//!
//! Bad numbers never become resources: a value that is not a finite number inside its
//! [`Measure`]'s range makes only that Observation disappear; a session whose id, start or
//! length is missing or absurd is a [`MapError`] (the mappers decide which).

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, TimeDelta, TimeZone};
use serde_json::{json, Value};

use super::{provider_code_system, MapContext, MapError, ResourceDraft, BASE};

pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// The PA IG's own category system (its `PhysicalActivity` code has no LOINC/SNOMED home yet).
pub const PA_TEMPORARY_CODES: &str = "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes";

/// Longest exercise session we accept; anything longer is a broken payload.
pub const MAX_SESSION_SECONDS: i64 = 7 * 86_400;
/// Longest night we accept.
pub const MAX_SLEEP_SECONDS: i64 = 86_400;

/// The extension naming the provider on every resource a mapper writes.
pub fn ext_wearable_provider() -> String {
    format!("{BASE}/StructureDefinition/wearable-provider")
}

/// Our Procedure category. SNOMED 229065009 (exercise therapy) names a prescribed therapy, not a
/// workout someone recorded on a watch, so the session gets a code of ours.
pub fn activity_category_system() -> String {
    format!("{BASE}/CodeSystem/activity-category")
}

/// Our codes for measures LOINC has no verified fitting code for (session distance).
pub fn activity_measure_system() -> String {
    format!("{BASE}/CodeSystem/activity-measure")
}

/// The provider's own sport names, kept as given (`strava-sport#TrailRun`, `polar-sport#RUNNING`).
pub fn sport_system(provider: &str) -> String {
    format!("{BASE}/CodeSystem/{provider}-sport")
}

/// Which code system a [`Measure`] is coded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasureSystem {
    Loinc,
    /// [`activity_measure_system`].
    Wearlink,
}

/// One kind of quantity Observation: its code, UCUM unit and the values we accept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measure {
    pub system: MeasureSystem,
    pub code: &'static str,
    pub display: &'static str,
    /// UCUM code.
    pub unit: &'static str,
    /// Human-readable unit (`Quantity.unit`).
    pub unit_display: &'static str,
    pub min: f64,
    pub max: f64,
    /// Providers send 0 for "not recorded" (Strava's distance of a gym session).
    pub zero_is_missing: bool,
    /// Adds the PA IG's `PhysicalActivity` category (not for sleep).
    pub physical_activity: bool,
    /// Category `vital-signs` instead of `activity` (R4 vital signs: SpO2, resting heart rate).
    pub vital_sign: bool,
    /// A second LOINC coding `(code, display)` (SpO2's 59408-5 beside 2708-6, as US Core does).
    pub also_coded: Option<(&'static str, &'static str)>,
}

impl Measure {
    pub fn system_url(&self) -> String {
        match self.system {
            MeasureSystem::Loinc => LOINC.into(),
            MeasureSystem::Wearlink => activity_measure_system(),
        }
    }

    /// Whether `value` may be written (finite, inside the range, and not a "missing" zero).
    pub fn accepts(&self, value: f64) -> bool {
        value.is_finite() && value >= self.min && value <= self.max && !(self.zero_is_missing && value == 0.0)
    }
}

const fn measure(
    code: &'static str,
    display: &'static str,
    unit: (&'static str, &'static str),
    range: (f64, f64),
) -> Measure {
    Measure {
        system: MeasureSystem::Loinc,
        code,
        display,
        unit: unit.0,
        unit_display: unit.1,
        min: range.0,
        max: range.1,
        zero_is_missing: true,
        physical_activity: true,
        vital_sign: false,
        also_coded: None,
    }
}

const MINUTES: (&str, &str) = ("min", "min");
const PER_MINUTE: (&str, &str) = ("/min", "beats/minute");
const HEART_RATE: (f64, f64) = (20.0, 300.0);
const SESSION_KCAL: (f64, f64) = (0.0, 20_000.0);

/// LOINC 55411-3, in the PA IG's activity value set.
pub const EXERCISE_DURATION: Measure =
    measure("55411-3", "Exercise duration", MINUTES, (0.0, (MAX_SESSION_SECONDS / 60) as f64));
/// Session distance in metres, a code of ours: LOINC 55430-3 could not be verified and reads as
/// "walking distance by pedometer" elsewhere, which a GPS ride or swim is not.
pub const DISTANCE: Measure = Measure {
    system: MeasureSystem::Wearlink,
    ..measure("distance", "Distance covered in the exercise session", ("m", "m"), (0.0, 1_000_000.0))
};
pub const ENERGY: Measure =
    measure("55424-6", "Calories burned in unspecified time Pedometer", ("kcal", "kcal"), SESSION_KCAL);
pub const HEART_RATE_MEAN: Measure =
    measure("55425-3", "Heart rate unspecified time mean by Pedometer", PER_MINUTE, HEART_RATE);
pub const HEART_RATE_MAX: Measure =
    measure("55426-1", "Heart rate unspecified time maximum by Pedometer", PER_MINUTE, HEART_RATE);

const NIGHT_MINUTES: (f64, f64) = (0.0, (MAX_SLEEP_SECONDS / 60) as f64);
/// A night without any sleep is no measurement; a stage of 0 minutes is.
pub const SLEEP_DURATION: Measure =
    Measure { physical_activity: false, ..measure("93832-4", "Sleep duration", MINUTES, NIGHT_MINUTES) };
pub const SLEEP_DEEP: Measure = sleep_stage("93831-6", "Deep sleep duration");
pub const SLEEP_LIGHT: Measure = sleep_stage("93830-8", "Light sleep duration");
pub const SLEEP_REM: Measure = sleep_stage("93829-0", "REM sleep duration");

const fn sleep_stage(code: &'static str, display: &'static str) -> Measure {
    Measure { physical_activity: false, zero_is_missing: false, ..measure(code, display, MINUTES, NIGHT_MINUTES) }
}

/// A day with 0 steps is a real count; a day with 0 kcal (BMR included) is not.
pub const DAILY_STEPS: Measure = Measure {
    zero_is_missing: false,
    ..measure("41950-7", "Number of steps in 24 hour Measured", ("/d", "steps/day"), (0.0, 200_000.0))
};
pub const DAILY_ENERGY: Measure =
    measure("41979-6", "Calories burned in 24 hour Calculated", ("kcal/d", "kcal/day"), (0.0, 25_000.0));

/// Distance covered in a day in metres (a code of ours, as for a session's [`DISTANCE`]).
pub const DAILY_DISTANCE: Measure = Measure {
    system: MeasureSystem::Wearlink,
    zero_is_missing: false,
    ..measure("daily-distance", "Distance covered in the day", ("m/d", "m/day"), (0.0, 1_000_000.0))
};

// Daily vital signs some wearables compute overnight.
const fn vital(
    code: &'static str,
    display: &'static str,
    unit: (&'static str, &'static str),
    range: (f64, f64),
) -> Measure {
    Measure { physical_activity: false, vital_sign: true, ..measure(code, display, unit, range) }
}
/// LOINC 40443-4 "Heart rate --resting".
pub const RESTING_HEART_RATE: Measure = vital("40443-4", "Heart rate --resting", PER_MINUTE, HEART_RATE);
/// Oxygen saturation: 2708-6 is what the R4 vital-signs profile requires; 59408-5 (by pulse
/// oximetry) beside it, as US Core does.
pub const OXYGEN_SATURATION: Measure = Measure {
    also_coded: Some(("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry")),
    ..vital("2708-6", "Oxygen saturation in Arterial blood", ("%", "%"), (50.0, 100.0))
};
/// Heart rate variability as RMSSD in ms, a code of ours: wearables report RMSSD, and the one
/// LOINC HRV code (80404-7) is the R-R interval's standard deviation (SDNN), another measure.
pub const HRV_RMSSD: Measure = Measure {
    system: MeasureSystem::Wearlink,
    physical_activity: false,
    ..measure("hrv-rmssd", "Heart rate variability (RMSSD)", ("ms", "ms"), (1.0, 500.0))
};

/// `effectivePeriod` / `performedPeriod` as FHIR dateTime strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FhirPeriod {
    pub start: String,
    pub end: String,
}

impl FhirPeriod {
    pub fn between(start: &DateTime<FixedOffset>, end: &DateTime<FixedOffset>) -> Self {
        Self { start: fhir_date_time(start), end: fhir_date_time(end) }
    }

    /// A whole day at date precision (the PA IG's time-based measures use dates, and a local
    /// day without an offset cannot be written as a dateTime with a time).
    pub fn day(date: NaiveDate) -> Self {
        let day = date.format("%Y-%m-%d").to_string();
        Self { start: day.clone(), end: day }
    }

    fn json(&self) -> Value {
        json!({ "start": self.start, "end": self.end })
    }
}

/// One exercise session as the provider described it.
#[derive(Clone, Debug)]
pub struct Session<'a> {
    pub identifier_system: &'a str,
    pub identifier_value: &'a str,
    pub sport: Option<&'a str>,
    /// The user's title ("Morning Run"); kept as a note so title updates show in new versions.
    pub title: Option<&'a str>,
    pub period: FhirPeriod,
    pub device: Option<&'a str>,
}

/// The session's Procedure followed by one Observation per accepted measure, each `partOf` it.
pub fn exercise_session(
    ctx: &MapContext,
    session: &Session<'_>,
    values: &[(&Measure, Option<f64>)],
) -> Vec<ResourceDraft> {
    let procedure = exercise_procedure(ctx, session);
    let observed = Observed {
        identifier_system: session.identifier_system,
        identifier_prefix: session.identifier_value,
        period: &session.period,
        part_of: Some(&procedure.id),
        device: session.device,
    };
    let observations = quantity_observations(ctx, &observed, values);
    std::iter::once(procedure).chain(observations).collect()
}

/// The exercise-session Procedure (status completed).
pub fn exercise_procedure(ctx: &MapContext, session: &Session<'_>) -> ResourceDraft {
    let mut body = json!({
        "extension": [provider_extension(ctx)],
        "status": "completed",
        "category": {
            "coding": [{ "system": activity_category_system(), "code": "exercise-session", "display": "Exercise session" }],
            "text": "Exercise session"
        },
        "code": sport_concept(&ctx.provider, session.sport),
        "performedPeriod": session.period.json()
    });
    if let Some(device) = session.device {
        body["usedReference"] = json!([{ "display": device }]);
    }
    if let Some(title) = session.title {
        body["note"] = json!([{ "text": title }]);
    }
    ctx.draft("Procedure", session.identifier_system, session.identifier_value, body)
}

fn sport_concept(provider: &str, sport: Option<&str>) -> Value {
    let Some(sport) = sport.filter(|s| is_code(s)) else {
        return json!({ "text": "Exercise session" });
    };
    let display = humanize(sport);
    json!({
        "coding": [{ "system": sport_system(provider), "code": sport, "display": display }],
        "text": display
    })
}

/// Provider codes we pass through as FHIR codes: short and plain.
fn is_code(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `TrailRun` → "Trail Run"; `WATERSPORTS_WATERSKI` → "Watersports waterski".
pub fn humanize(code: &str) -> String {
    if code.contains('_') || !code.bytes().any(|b| b.is_ascii_lowercase()) {
        let words = code.split('_').filter(|w| !w.is_empty()).map(str::to_ascii_lowercase);
        let text = words.collect::<Vec<_>>().join(" ");
        let mut chars = text.chars();
        return chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default();
    }
    let mut out = String::with_capacity(code.len() + 4);
    let mut previous_lower = false;
    for c in code.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            out.push(' ');
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        out.push(c);
    }
    out
}

/// What a group of quantity Observations shares.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub identifier_system: &'a str,
    /// Each identifier value is `<prefix>:<measure code>`.
    pub identifier_prefix: &'a str,
    pub period: &'a FhirPeriod,
    /// The id of the Procedure the measures belong to.
    pub part_of: Option<&'a str>,
    pub device: Option<&'a str>,
}

/// The identifier value of a measure's Observation: `<prefix>:<code>`.
pub fn observation_identifier(prefix: &str, measure: &Measure) -> String {
    format!("{prefix}:{}", measure.code)
}

/// One Observation per present value its measure accepts, in the order given.
pub fn quantity_observations(
    ctx: &MapContext,
    observed: &Observed<'_>,
    values: &[(&Measure, Option<f64>)],
) -> Vec<ResourceDraft> {
    values.iter().filter_map(|(m, value)| quantity_observation(ctx, observed, m, (*value)?)).collect()
}

/// A quantity Observation (status final), or `None` when the measure does not accept the value.
pub fn quantity_observation(
    ctx: &MapContext,
    observed: &Observed<'_>,
    m: &Measure,
    value: f64,
) -> Option<ResourceDraft> {
    if !m.accepts(value) {
        return None;
    }
    let mut body = json!({
        "extension": [provider_extension(ctx)],
        "status": "final",
        "category": categories(m),
        "code": { "coding": codings(m), "text": m.display },
        "effectivePeriod": observed.period.json(),
        "valueQuantity": { "value": json_number(value), "unit": m.unit_display, "system": UCUM, "code": m.unit }
    });
    if let Some(procedure) = observed.part_of {
        body["partOf"] = json!([{ "reference": format!("Procedure/{procedure}") }]);
    }
    if let Some(device) = observed.device {
        body["device"] = json!({ "display": device });
    }
    let identifier = observation_identifier(observed.identifier_prefix, m);
    Some(ctx.draft("Observation", observed.identifier_system, &identifier, body))
}

fn codings(m: &Measure) -> Value {
    let mut list = vec![json!({ "system": m.system_url(), "code": m.code, "display": m.display })];
    if let Some((code, display)) = m.also_coded {
        list.push(json!({ "system": LOINC, "code": code, "display": display }));
    }
    Value::Array(list)
}

/// `observation-category#activity` (or `#vital-signs`); the PA IG's `PhysicalActivity` for activity measures.
fn categories(m: &Measure) -> Value {
    let (code, display) = if m.vital_sign { ("vital-signs", "Vital Signs") } else { ("activity", "Activity") };
    let mut list = vec![json!({
        "coding": [{ "system": OBSERVATION_CATEGORY, "code": code, "display": display }]
    })];
    if m.physical_activity {
        list.push(json!({
            "coding": [{ "system": PA_TEMPORARY_CODES, "code": "PhysicalActivity", "display": "Physical Activity" }]
        }));
    }
    Value::Array(list)
}

fn provider_extension(ctx: &MapContext) -> Value {
    json!({
        "url": ext_wearable_provider(),
        "valueCoding": { "system": provider_code_system(), "code": ctx.provider }
    })
}

/// Whole numbers as JSON integers (`742`, not `742.0`).
fn json_number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

// ---- reading provider JSON ----

/// A JSON number as a finite f64 (strings are not numbers here).
pub fn number(value: Option<&Value>) -> Option<f64> {
    value?.as_f64().filter(|v| v.is_finite())
}

/// A non-blank string of at most `max` bytes, trimmed.
pub fn text(value: Option<&Value>, max: usize) -> Option<&str> {
    value?.as_str().map(str::trim).filter(|s| !s.is_empty() && s.len() <= max)
}

/// Seconds as minutes, rounded to 2 decimals (0.6 s): keeps the JSON readable.
pub fn seconds_to_minutes(seconds: f64) -> f64 {
    (seconds / 60.0 * 100.0).round() / 100.0
}

// ---- time ----

/// A timestamp with its offset (`2026-03-14T07:02:11Z`, `2026-03-14T23:41:07+01:00`).
pub fn parse_instant(text: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(text).ok().filter(plausible)
}

/// Local wall time without offset plus the offset in minutes east of UTC (Polar's
/// `start_time` / `start_time_utc_offset`): the same instant, rendered with that offset.
/// UTC = local − offset; offsets outside −12:00..=+14:00 are refused.
pub fn local_with_offset(local: &str, offset_minutes: i64) -> Option<DateTime<FixedOffset>> {
    if !(-720..=840).contains(&offset_minutes) {
        return None;
    }
    let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M"))
        .ok()?;
    let offset = FixedOffset::east_opt(i32::try_from(offset_minutes * 60).ok()?)?;
    offset.from_local_datetime(&naive).single().filter(plausible)
}

/// Wearable data lives in this era; other years are broken payloads (and keep 4-digit years).
fn plausible(t: &DateTime<FixedOffset>) -> bool {
    (1970..=2999).contains(&t.year())
}

/// RFC 3339 keeping the offset as given (`Z` for UTC), fractions only when there are some.
pub fn fhir_date_time(t: &DateTime<FixedOffset>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `start + length`, refusing negative lengths and sessions longer than `max_seconds`.
pub fn end_after(
    start: &DateTime<FixedOffset>,
    length: TimeDelta,
    max_seconds: i64,
) -> Result<DateTime<FixedOffset>, MapError> {
    if length < TimeDelta::zero() || length > TimeDelta::seconds(max_seconds) {
        return Err(MapError(format!("implausible length of {} s", length.num_seconds())));
    }
    start.checked_add_signed(length).filter(plausible).ok_or_else(|| MapError("end out of range".into()))
}

/// Seconds (a JSON number) as a duration with millisecond precision.
pub fn seconds(value: f64) -> Option<TimeDelta> {
    let ms = (value * 1000.0).round();
    (value.is_finite() && ms.abs() < 1e15).then(|| TimeDelta::try_milliseconds(ms as i64)).flatten()
}

/// An ISO 8601 duration (`PT50M12S`, `PT210.026S`, `PT1H`, `P1DT2H`, `P1W`) to millisecond
/// precision (finer digits are truncated). Years and months are refused: their length depends on
/// the calendar, and no session lasts one. Hand-written because the crates we looked at either
/// keep f32 fields (`iso8601-duration`: loses milliseconds on long sessions) or, through their
/// top-level parser, accept trailing garbage (`iso8601`: `PT1.5H` reads as zero).
pub fn parse_iso_duration(text: &str) -> Option<TimeDelta> {
    let rest = text.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((_, "")) => return None,
        Some((date, time)) => (date, Some(time)),
        None => (rest, None),
    };
    let mut state = DurationState::default();
    state.section(date, &[('W', 604_800_000), ('D', 86_400_000)])?;
    state.section(time.unwrap_or(""), &[('H', 3_600_000), ('M', 60_000), ('S', 1_000)])?;
    if state.components == 0 {
        return None;
    }
    TimeDelta::try_milliseconds(i64::try_from(state.total_ms).ok()?)
}

#[derive(Default)]
struct DurationState {
    total_ms: i128,
    components: usize,
    /// Only the last component may carry a fraction.
    had_fraction: bool,
}

impl DurationState {
    /// Reads `<number><unit>` pairs whose units appear in `units`, in that order, each once.
    fn section(&mut self, mut s: &str, units: &[(char, i128)]) -> Option<()> {
        let mut next_unit = 0;
        while !s.is_empty() {
            let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))?;
            let (number, tail) = s.split_at(end);
            let unit = tail.chars().next()?;
            let index = units[next_unit..].iter().position(|(u, _)| *u == unit)? + next_unit;
            if self.had_fraction {
                return None;
            }
            self.total_ms += self.component_ms(number, units[index].1)?;
            self.components += 1;
            next_unit = index + 1;
            s = &tail[unit.len_utf8()..];
        }
        Some(())
    }

    fn component_ms(&mut self, number: &str, unit_ms: i128) -> Option<i128> {
        let (whole, fraction) = match number.split_once(['.', ',']) {
            Some((w, f)) => (w, Some(f)),
            None => (number, None),
        };
        if whole.is_empty() || whole.len() > 12 || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut ms = whole.parse::<i128>().ok()? * unit_ms;
        if let Some(fraction) = fraction {
            if fraction.is_empty() || fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            self.had_fraction = true;
            ms += fraction.parse::<i128>().ok()? * unit_ms / 10i128.pow(fraction.len() as u32);
        }
        (self.total_ms + ms <= i128::from(i64::MAX)).then_some(ms)
    }
}

#[cfg(test)]
pub(crate) mod arbitrary {
    //! Proptest strategies for provider JSON, shared by the mappers' tests.
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// Keys the mappers read, so random objects hit real code paths.
    const KEYS: &[&str] = &[
        "id",
        "start_date",
        "elapsed_time",
        "moving_time",
        "distance",
        "calories",
        "kilojoules",
        "has_heartrate",
        "average_heartrate",
        "max_heartrate",
        "sport_type",
        "type",
        "device_name",
        "name",
        "start_time",
        "start_time_utc_offset",
        "duration",
        "heart_rate",
        "average",
        "maximum",
        "sport",
        "detailed_sport_info",
        "device",
        "date",
        "sleep_start_time",
        "sleep_end_time",
        "light_sleep",
        "deep_sleep",
        "rem_sleep",
        "unrecognized_sleep_stage",
        "steps",
        "end_time",
    ];

    pub fn key() -> impl Strategy<Value = String> {
        prop_oneof![3 => proptest::sample::select(KEYS).prop_map(String::from), 1 => "[a-z_]{1,10}"]
    }

    /// Strings shaped like the timestamps, dates and durations providers send.
    pub fn plausible_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "P([0-9]{1,3}[WD])?(T([0-9]{1,4}H)?([0-9]{1,4}M)?([0-9]{1,6}([.,][0-9]{1,4})?S)?)?",
            "(19|20|99)[0-9]{2}-[01][0-9]-[0-3][0-9](T[0-2][0-9]:[0-5][0-9](:[0-6][0-9](\\.[0-9]{1,4})?)?)?(Z|[+-][01][0-9]:[0-5][0-9])?",
            "[A-Za-z_ ]{0,20}",
            "[0-9]{1,25}",
        ]
    }

    pub fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            (-1000i64..1_000_000).prop_map(|n| json!(n)),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
            plausible_string().prop_map(Value::String),
            any::<String>().prop_map(Value::String),
        ]
    }

    /// Any JSON value, nested a few levels.
    pub fn json_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 48, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((key(), inner), 0..10).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// `sample` with up to three of its keys (or new ones) replaced by arbitrary values.
    pub fn mutated(sample: Value) -> impl Strategy<Value = Value> {
        proptest::collection::vec((key(), prop_oneof![json_value(), Just(Value::Null)], any::<bool>()), 0..4).prop_map(
            move |edits| {
                let mut v = sample.clone();
                for (k, value, remove) in edits {
                    if remove {
                        v.as_object_mut().map(|m| m.remove(&k));
                    } else {
                        v[k.as_str()] = value;
                    }
                }
                v
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(project: &str) -> MapContext {
        MapContext {
            project_id: project.into(),
            patient_id: "pat-1".into(),
            endpoint_id: "ep-1".into(),
            provider: "strava".into(),
            remote_user_id: "134815".into(),
        }
    }

    fn ms(d: Option<TimeDelta>) -> Option<i64> {
        d.map(|d| d.num_milliseconds())
    }

    #[test]
    fn iso_durations_read_as_polar_writes_them() {
        assert_eq!(ms(parse_iso_duration("PT50M12S")), Some(3_012_000));
        assert_eq!(ms(parse_iso_duration("PT210.026S")), Some(210_026));
        assert_eq!(ms(parse_iso_duration("PT14295.773S")), Some(14_295_773));
        assert_eq!(ms(parse_iso_duration("PT1H")), Some(3_600_000));
        assert_eq!(ms(parse_iso_duration("P1DT2H")), Some(93_600_000));
        assert_eq!(ms(parse_iso_duration("PT2H44M")), Some(9_840_000));
        assert_eq!(ms(parse_iso_duration("PT1.5H")), Some(5_400_000));
        assert_eq!(ms(parse_iso_duration("PT0,5S")), Some(500));
        assert_eq!(ms(parse_iso_duration("P1W")), Some(604_800_000));
        assert_eq!(ms(parse_iso_duration("PT0S")), Some(0));
    }

    #[test]
    fn malformed_iso_durations_are_refused() {
        for bad in [
            "",
            "P",
            "PT",
            "T1H",
            "PT1H ",
            "PT1.5H30M",
            "PT1M1H",
            "PT1H1H",
            "P1Y",
            "P1M",
            "PT-1S",
            "PT.5S",
            "PT1.S",
            "PTS",
            "1H",
            "pt1h",
            "PT1HX",
            "P1DT",
            "PT99999999999999999H",
        ] {
            assert_eq!(parse_iso_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn local_time_minus_offset_is_utc() {
        let start = local_with_offset("2026-03-14T08:02:11", 60).unwrap();
        assert_eq!(fhir_date_time(&start), "2026-03-14T08:02:11+01:00");
        assert_eq!(start.timestamp(), parse_instant("2026-03-14T07:02:11Z").unwrap().timestamp());
        let west = local_with_offset("2026-03-14T08:02:11", -300).unwrap();
        assert_eq!(fhir_date_time(&west.with_timezone(&chrono::Utc).fixed_offset()), "2026-03-14T13:02:11Z");
        assert_eq!(fhir_date_time(&local_with_offset("2026-06-10T00:00", 0).unwrap()), "2026-06-10T00:00:00Z");
        assert!(local_with_offset("2026-03-14T08:02:11", 900).is_none());
        assert!(local_with_offset("2026-03-14T08:02:11+01:00", 60).is_none());
    }

    #[test]
    fn instants_keep_their_offset() {
        let t = parse_instant("2026-03-14T23:41:07+01:00").unwrap();
        assert_eq!(fhir_date_time(&t), "2026-03-14T23:41:07+01:00");
        assert_eq!(fhir_date_time(&parse_instant("2026-03-14T07:02:11Z").unwrap()), "2026-03-14T07:02:11Z");
        let end = end_after(&t, parse_iso_duration("PT210.026S").unwrap(), MAX_SESSION_SECONDS).unwrap();
        assert_eq!(fhir_date_time(&end), "2026-03-14T23:44:37.026+01:00");
        assert!(parse_instant("0001-01-01T00:00:00Z").is_none());
        assert!(end_after(&t, TimeDelta::seconds(-1), MAX_SESSION_SECONDS).is_err());
        assert!(end_after(&t, TimeDelta::seconds(MAX_SESSION_SECONDS + 1), MAX_SESSION_SECONDS).is_err());
    }

    #[test]
    fn sport_names_read_as_words() {
        assert_eq!(humanize("TrailRun"), "Trail Run");
        assert_eq!(humanize("Run"), "Run");
        assert_eq!(humanize("EBikeRide"), "EBike Ride");
        assert_eq!(humanize("RUNNING"), "Running");
        assert_eq!(humanize("WATERSPORTS_WATERSKI"), "Watersports waterski");
    }

    #[test]
    fn measures_refuse_absurd_values() {
        assert!(HEART_RATE_MEAN.accepts(151.2));
        assert!(!HEART_RATE_MEAN.accepts(19.0) && !HEART_RATE_MEAN.accepts(301.0));
        assert!(!HEART_RATE_MAX.accepts(f64::NAN));
        assert!(!DISTANCE.accepts(1_000_000.1) && !DISTANCE.accepts(-1.0) && !DISTANCE.accepts(0.0));
        assert!(!EXERCISE_DURATION.accepts(7.0 * 24.0 * 60.0 + 1.0));
        assert!(SLEEP_REM.accepts(0.0) && !SLEEP_DURATION.accepts(0.0));
        assert!(DAILY_STEPS.accepts(0.0) && !DAILY_ENERGY.accepts(0.0));
    }

    #[test]
    fn a_quantity_observation_has_the_pa_ig_shape() {
        let period = FhirPeriod::day(NaiveDate::from_ymd_opt(2026, 3, 15).unwrap());
        let observed = Observed {
            identifier_system: "sys",
            identifier_prefix: "u:2026-03-15",
            period: &period,
            part_of: Some("proc-1"),
            device: Some("Polar Loop"),
        };
        let d = quantity_observation(&ctx("p1"), &observed, &DAILY_STEPS, 8823.0).unwrap();
        assert_eq!(d.resource_type, "Observation");
        assert_eq!(d.identifier_value, "u:2026-03-15:41950-7");
        let b = &d.body;
        assert_eq!(b["status"], "final");
        assert_eq!(b["category"][0]["coding"][0]["code"], "activity");
        assert_eq!(b["category"][0]["coding"][0]["system"], OBSERVATION_CATEGORY);
        assert_eq!(b["category"][1]["coding"][0]["system"], PA_TEMPORARY_CODES);
        assert_eq!(b["category"][1]["coding"][0]["code"], "PhysicalActivity");
        assert_eq!(
            b["code"]["coding"][0],
            json!({"system": LOINC, "code": "41950-7", "display": "Number of steps in 24 hour Measured"})
        );
        assert_eq!(b["valueQuantity"], json!({"value": 8823, "unit": "steps/day", "system": UCUM, "code": "/d"}));
        assert_eq!(b["effectivePeriod"], json!({"start": "2026-03-15", "end": "2026-03-15"}));
        assert_eq!(b["partOf"][0]["reference"], "Procedure/proc-1");
        assert_eq!(b["device"]["display"], "Polar Loop");
        assert_eq!(b["extension"][0]["url"], ext_wearable_provider());
        assert_eq!(b["extension"][0]["valueCoding"]["code"], "strava");
        assert_eq!(b["extension"][0]["valueCoding"]["system"], provider_code_system());
        assert_eq!(b["extension"][1]["valueReference"]["reference"], "Endpoint/ep-1");
        assert!(quantity_observation(&ctx("p1"), &observed, &DAILY_STEPS, -1.0).is_none());
        let values = [(&DAILY_STEPS, None), (&DAILY_ENERGY, Some(2500.0)), (&HEART_RATE_MAX, Some(f64::INFINITY))];
        let all = quantity_observations(&ctx("p1"), &observed, &values);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].identifier_value, "u:2026-03-15:41979-6");
    }

    #[test]
    fn our_code_systems_live_under_base() {
        assert_eq!(DISTANCE.system_url(), "https://wearlink.dev/fhir/CodeSystem/activity-measure");
        assert_eq!(sport_system("polar"), "https://wearlink.dev/fhir/CodeSystem/polar-sport");
        assert_eq!(activity_category_system(), "https://wearlink.dev/fhir/CodeSystem/activity-category");
        assert_eq!(ext_wearable_provider(), "https://wearlink.dev/fhir/StructureDefinition/wearable-provider");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn fractional_durations_parse_to_their_milliseconds(
            d in 0u32..7, h in 0u32..24, m in 0u32..60, s in 0u32..60, frac in "[0-9]{1,6}", show_zero in any::<bool>()
        ) {
            let mut text = String::from("P");
            if d > 0 || show_zero { text += &format!("{d}D"); }
            text += &format!("T{h}H{m}M{s}.{frac}S");
            let scaled: u64 = frac.parse().unwrap();
            let frac_ms = (scaled * 1000 / 10u64.pow(frac.len() as u32)) as i64;
            let expected = i64::from(((d * 24 + h) * 60 + m) * 60 + s) * 1000 + frac_ms;
            prop_assert_eq!(ms(parse_iso_duration(&text)), Some(expected), "{}", text);
        }

        #[test]
        fn utc_is_local_minus_offset(
            offset in -720i64..=840, secs in 0i64..2_000_000_000, with_seconds in any::<bool>()
        ) {
            let local = chrono::DateTime::from_timestamp(secs, 0).unwrap().naive_utc();
            let local = if with_seconds { local } else { chrono::Timelike::with_second(&local, 0).unwrap() };
            let format = if with_seconds { "%Y-%m-%dT%H:%M:%S" } else { "%Y-%m-%dT%H:%M" };
            let parsed = local_with_offset(&local.format(format).to_string(), offset).unwrap();
            prop_assert_eq!(parsed.naive_utc(), local - TimeDelta::minutes(offset));
            let again = parse_instant(&fhir_date_time(&parsed)).unwrap();
            prop_assert_eq!(again, parsed);
            prop_assert_eq!(again.offset().local_minus_utc(), (offset * 60) as i32);
        }

        #[test]
        fn arbitrary_text_never_panics_the_time_helpers(s in arbitrary::plausible_string(), any_text in ".{0,40}") {
            let _ = parse_iso_duration(&s);
            let _ = parse_iso_duration(&any_text);
            let _ = parse_instant(&s);
            let _ = local_with_offset(&s, 60);
            let _ = local_with_offset(&any_text, 0);
        }
    }
}
