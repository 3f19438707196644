//! The FHIR R4 resources Wearlink writes and serves: Patient (as given), Endpoint (one per
//! connection), searchset Bundles, OperationOutcomes and the CapabilityStatement. A thin
//! serde_json layer: the R4 crates are young or huge, and we only build a few shapes.

use serde_json::{json, Value};

use crate::store::StoredResource;

pub mod activity;
pub mod capability;
pub mod cgm;
pub mod draft;
mod resources;
pub mod search;
pub mod vitals;

pub use draft::{MapContext, MapError, ResourceDraft};
pub use resources::{create_patient, read, read_version, search};

/// Base of our code systems, identifier systems and extension URLs.
pub const BASE: &str = "https://wearlink.dev/fhir";

pub fn ext_patient() -> String {
    format!("{BASE}/StructureDefinition/endpoint-patient")
}
pub fn ext_scope() -> String {
    format!("{BASE}/StructureDefinition/endpoint-granted-scope")
}
pub fn ext_token_expires() -> String {
    format!("{BASE}/StructureDefinition/endpoint-token-expires-at")
}
pub fn ext_status_reason() -> String {
    format!("{BASE}/StructureDefinition/endpoint-status-reason")
}
pub fn provider_code_system() -> String {
    format!("{BASE}/CodeSystem/wearable-provider")
}

/// What the Endpoint says about a connection. Token material is never part of it.
pub struct EndpointFacts<'a> {
    pub patient_id: &'a str,
    pub provider_slug: &'a str,
    pub provider_name: &'a str,
    pub api_base: &'a str,
    pub identifier_system: &'a str,
    pub remote_user_id: &'a str,
    pub scopes: &'a [String],
    pub token_expires_at: Option<i64>,
    pub status: &'a str,
    /// Why the connection is not active (`invalid_grant: …`, `disconnected`).
    pub status_reason: Option<&'a str>,
}

/// The Endpoint body (without `id` and `meta`, which the store sets).
pub fn endpoint(f: &EndpointFacts<'_>) -> Value {
    let mut extension = vec![json!({
        "url": ext_patient(),
        "valueReference": { "reference": format!("Patient/{}", f.patient_id) }
    })];
    extension.extend(f.scopes.iter().map(|s| json!({ "url": ext_scope(), "valueString": s })));
    if let Some(expires) = f.token_expires_at {
        extension.push(json!({ "url": ext_token_expires(), "valueInstant": crate::time::to_rfc3339(expires) }));
    }
    if let Some(reason) = f.status_reason {
        extension.push(json!({ "url": ext_status_reason(), "valueString": reason }));
    }
    json!({
        "resourceType": "Endpoint",
        "extension": extension,
        "identifier": [{ "system": f.identifier_system, "value": f.remote_user_id }],
        "status": f.status,
        "connectionType": {
            "system": provider_code_system(),
            "code": f.provider_slug,
            "display": f.provider_name
        },
        "name": format!("{} connection", f.provider_name),
        "payloadType": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                "code": "any",
                "display": "Any"
            }],
            "text": format!("{} API data", f.provider_name)
        }],
        "address": f.api_base
    })
}

/// The Patient id an Endpoint's patient extension references, if any.
pub fn patient_reference(body: &Value) -> Option<String> {
    let url = ext_patient();
    body.get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url.as_str()))?
        .pointer("/valueReference/reference")?
        .as_str()?
        .strip_prefix("Patient/")
        .map(String::from)
}

/// Checks what we accept as a new Patient: a JSON object with `resourceType: "Patient"`.
/// Server-assigned fields (`id`, `meta`) are replaced, not trusted.
pub fn validate_new_patient(mut body: Value) -> Result<Value, String> {
    let map = body.as_object_mut().ok_or("a Patient must be a JSON object")?;
    match map.get("resourceType").and_then(Value::as_str) {
        Some("Patient") => {}
        Some(other) => return Err(format!("resourceType must be Patient, not {other}")),
        None => return Err("resourceType is required".into()),
    }
    map.remove("id");
    map.remove("meta");
    Ok(body)
}

/// A searchset Bundle of one page of `total` matches. `links` are `(relation, url)`: `self`
/// first, then `next` and `previous` where there are such pages; `fhir_base` is the public
/// `…/fhir/R4` the entries' `fullUrl`s start with.
pub fn searchset(links: &[(&str, String)], fhir_base: &str, total: i64, resources: &[StoredResource]) -> Value {
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links.iter().map(|(relation, url)| json!({ "relation": relation, "url": url })).collect::<Vec<_>>(),
    });
    // FHIR JSON has no empty arrays: a page without matches has no `entry`.
    if !resources.is_empty() {
        bundle["entry"] = resources
            .iter()
            .map(|r| {
                let kind = r.body.get("resourceType").and_then(Value::as_str).unwrap_or_default();
                json!({
                    "fullUrl": format!("{fhir_base}/{kind}/{}", r.id),
                    "resource": r.body,
                    "search": { "mode": "match" }
                })
            })
            .collect();
    }
    bundle
}

/// The code system of our stable error codes (the `code` of problem+json): `<system>/<code>` is
/// the problem's `type` URI.
pub const PROBLEM_SYSTEM: &str = "https://wearlink.dev/problems";

/// An `OperationOutcome` for a failed request: one `error` issue of FHIR issue type `issue_type`
/// (`http://hl7.org/fhir/issue-type`), our stable `code` in `details.coding`, what happened in
/// `details.text`.
pub fn operation_outcome(issue_type: &str, code: &str, title: &str, detail: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": issue_type,
            "details": {
                "coding": [{ "system": PROBLEM_SYSTEM, "code": code, "display": title }],
                "text": detail
            }
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_references_its_patient() {
        let scopes = vec!["read".to_string()];
        let body = endpoint(&EndpointFacts {
            patient_id: "p-1",
            provider_slug: "strava",
            provider_name: "Strava",
            api_base: "https://www.strava.com/api/v3",
            identifier_system: "sys",
            remote_user_id: "42",
            scopes: &scopes,
            token_expires_at: Some(0),
            status: "active",
            status_reason: None,
        });
        assert_eq!(patient_reference(&body).as_deref(), Some("p-1"));
        assert_eq!(body["connectionType"]["code"], "strava");
        assert_eq!(body["extension"][2]["valueInstant"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_patient_must_say_it_is_one() {
        assert!(validate_new_patient(json!({"resourceType": "Observation"})).is_err());
        assert!(validate_new_patient(json!([])).is_err());
        let p = validate_new_patient(json!({"resourceType": "Patient", "id": "mine"})).unwrap();
        assert!(p.get("id").is_none());
    }
}
