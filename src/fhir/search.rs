//! FHIR search parameters (those `capability::RESOURCES` lists): parsed from the query into a
//! `store::sync::ResourceQuery`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

use super::capability::{self, Interaction};
use crate::store::sync::{DateBound, ResourceQuery, TokenParam};

pub const DEFAULT_COUNT: i64 = 50;
pub const MAX_COUNT: i64 = 1000;

/// The span a FHIR date/dateTime value stands for, `[lo, hi)` in epoch ms: a year, month or day
/// (UTC when no offset is given), or the instant itself (a 1 ms span).
pub fn date_bounds(text: &str) -> Option<(i64, i64)> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        let ms = at.timestamp_millis();
        return Some((ms, ms + 1));
    }
    if let Ok(at) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        let ms = Utc.from_utc_datetime(&at).timestamp_millis();
        return Some((ms, ms + 1));
    }
    let day =
        |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d).map(|d| d.and_hms_opt(0, 0, 0).expect("midnight"));
    let ms = |at: NaiveDateTime| Utc.from_utc_datetime(&at).timestamp_millis();
    let parts: Vec<&str> = text.split('-').collect();
    let year: i32 = parts.first()?.parse().ok().filter(|_| parts[0].len() == 4)?;
    match parts.len() {
        1 => Some((ms(day(year, 1, 1)?), ms(day(year + 1, 1, 1)?))),
        2 => {
            let month: u32 = parts[1].parse().ok()?;
            let next = if month == 12 { day(year + 1, 1, 1)? } else { day(year, month + 1, 1)? };
            Some((ms(day(year, month, 1)?), ms(next)))
        }
        3 => {
            let start = day(year, parts[1].parse().ok()?, parts[2].parse().ok()?)?;
            Some((ms(start), ms(start + chrono::Duration::days(1))))
        }
        _ => None,
    }
}

/// One `date` parameter (`ge2026-03-01`, `lt2026-04`, `2026-03-14`) as bounds on the resource's
/// range: it matches when the ranges relate as the prefix says (FHIR R4 search, 3.1.1.5.5).
pub fn date_param(raw: &str) -> Result<Vec<DateBound>, String> {
    let (prefix, value) = match raw.get(..2) {
        Some(p @ ("ge" | "le" | "gt" | "lt" | "eq")) => (p, &raw[2..]),
        _ => ("eq", raw),
    };
    let (lo, hi) = date_bounds(value).ok_or_else(|| format!("date {raw:?} is not a FHIR date"))?;
    Ok(match prefix {
        "ge" => vec![DateBound::EndsAtOrAfter(lo)],
        "gt" => vec![DateBound::EndsAtOrAfter(hi)],
        "le" => vec![DateBound::StartsBefore(hi)],
        "lt" => vec![DateBound::StartsBefore(lo)],
        _ => vec![DateBound::EndsAtOrAfter(lo), DateBound::StartsBefore(hi)],
    })
}

/// `system|code`, `|code` (no system: matched as any system here) or `code`; commas are ORs.
pub fn token_param(raw: &str) -> Result<Vec<TokenParam>, String> {
    raw.split(',')
        .map(|one| {
            let (system, code) = match one.split_once('|') {
                Some((system, code)) => ((!system.is_empty()).then(|| system.to_string()), code),
                None => (None, one),
            };
            if code.is_empty() {
                return Err(format!("token {one:?} has no code"));
            }
            Ok(TokenParam { system, code: code.to_string() })
        })
        .collect()
}

/// Builds the query from `(name, value)` pairs. Only the parameters `capability::RESOURCES` lists
/// for the type are taken; others are refused (a FHIR server that ignored them would answer more
/// than was asked).
pub fn parse(resource_type: &str, params: &[(String, String)]) -> Result<ResourceQuery, String> {
    if !capability::supports(resource_type, Interaction::SearchType) {
        return Err(format!("{resource_type} cannot be searched"));
    }
    let mut query = ResourceQuery {
        resource_type: resource_type.into(),
        patient_id: String::new(),
        codes: Vec::new(),
        categories: Vec::new(),
        dates: Vec::new(),
        newest_first: false,
        count: DEFAULT_COUNT,
        offset: 0,
    };
    let mut patient = None;
    for (name, value) in params {
        match name.as_str() {
            "_count" => {
                let count = value.parse::<i64>().ok().filter(|n| *n >= 0).ok_or("_count must be a number ≥ 0")?;
                query.count = count.min(MAX_COUNT);
                continue;
            }
            "_offset" => {
                query.offset = value.parse::<i64>().ok().filter(|n| *n >= 0).ok_or("_offset must be a number ≥ 0")?;
                continue;
            }
            "_sort" if capability::search_param(resource_type, "date").is_some() => {
                query.newest_first = match value.as_str() {
                    "date" => false,
                    "-date" => true,
                    _ => return Err("_sort supports date and -date".into()),
                };
                continue;
            }
            // Answered by the HTTP layer (406 for what it cannot write).
            "_format" => continue,
            _ => {}
        }
        let param = capability::search_param(resource_type, name)
            .ok_or_else(|| format!("unsupported search parameter {name} (see /fhir/R4/metadata)"))?;
        match param.name {
            "patient" | "subject" => {
                let id = value.strip_prefix("Patient/").unwrap_or(value);
                if !crate::connect::is_fhir_id(id) {
                    return Err(format!("{name} must be Patient/<id>"));
                }
                patient = Some(id.to_string());
            }
            "code" => query.codes.push(token_param(value)?),
            "category" => query.categories.push(token_param(value)?),
            "date" => query.dates.extend(date_param(value)?),
            other => return Err(format!("search parameter {other} is not implemented")),
        }
    }
    query.patient_id = patient.ok_or("search by patient: ?patient=Patient/<id>")?;
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_stand_for_their_precision() {
        let (lo, hi) = date_bounds("2026-03-14").unwrap();
        assert_eq!(hi - lo, 86_400_000);
        assert_eq!(date_bounds("2026-12").unwrap().1, date_bounds("2027").unwrap().0);
        let (at, _) = date_bounds("2026-03-14T08:02:11+01:00").unwrap();
        assert_eq!(at, date_bounds("2026-03-14T07:02:11Z").unwrap().0);
        assert!(date_bounds("14.03.2026").is_none());
    }

    #[test]
    fn prefixes_compare_ranges() {
        let (lo, hi) = date_bounds("2026-03-14").unwrap();
        assert_eq!(date_param("ge2026-03-14").unwrap(), vec![DateBound::EndsAtOrAfter(lo)]);
        assert_eq!(date_param("lt2026-03-14").unwrap(), vec![DateBound::StartsBefore(lo)]);
        assert_eq!(date_param("2026-03-14").unwrap(), vec![DateBound::EndsAtOrAfter(lo), DateBound::StartsBefore(hi)]);
        assert!(date_param("geyesterday").is_err());
    }

    #[test]
    fn tokens_and_unknown_parameters() {
        let t = token_param("http://loinc.org|55411-3,8867-4").unwrap();
        assert_eq!(t[0].system.as_deref(), Some("http://loinc.org"));
        assert_eq!(t[1].system, None);
        let params = vec![("patient".to_string(), "Patient/p1".to_string()), ("value-quantity".into(), "1".into())];
        assert!(parse("Observation", &params).is_err());
        assert!(parse("Observation", &params[..1]).is_ok());
    }

    /// Every parameter the CapabilityStatement lists is implemented, and nothing else is taken.
    #[test]
    fn every_listed_parameter_is_implemented() {
        for resource in capability::RESOURCES {
            let searchable = resource.interactions.contains(&Interaction::SearchType);
            let patient = vec![("patient".to_string(), "Patient/p1".to_string())];
            assert_eq!(parse(resource.resource_type, &patient).is_ok(), searchable, "{}", resource.resource_type);
            for param in resource.search_params {
                let sample = match param.kind {
                    "reference" => "Patient/p1",
                    "token" => "http://loinc.org|8867-4",
                    "date" => "ge2026-03-01",
                    other => panic!("no sample for {other}"),
                };
                let mut params = patient.clone();
                params.push((param.name.to_string(), sample.to_string()));
                assert!(parse(resource.resource_type, &params).is_ok(), "{} {}", resource.resource_type, param.name);
            }
            if searchable {
                let unknown = [patient.clone(), vec![("identifier".to_string(), "x".to_string())]].concat();
                assert!(parse(resource.resource_type, &unknown).is_err());
            }
        }
    }
}
