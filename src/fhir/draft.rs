//! What a provider's data mapper hands the FHIR writer: resources without `id`/`meta` yet, each
//! with the identifier that makes writing it again idempotent. Mappers are pure (JSON in, drafts
//! out); the writer (`crate::sync`) decides create, new version or unchanged.

use serde_json::{json, Value};

use super::BASE;

/// One resource to write. `id` is derived from the project and the identifier (see
/// [`derived_id`]), so every instance, every re-sync and every overlap names the same resource.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceDraft {
    pub resource_type: &'static str,
    pub id: String,
    pub identifier_system: String,
    pub identifier_value: String,
    /// The resource without `id` and `meta` (the store sets them).
    pub body: Value,
}

/// Who the mapped data belongs to and where it came from.
#[derive(Clone, Debug)]
pub struct MapContext {
    pub project_id: String,
    pub patient_id: String,
    /// The Endpoint (connection) the data came through.
    pub endpoint_id: String,
    /// The provider's slug (`strava`, `polar`).
    pub provider: String,
    /// The provider's id of the user (Strava athlete id, Polar user id).
    pub remote_user_id: String,
}

impl MapContext {
    /// The id the resource with this identifier has in this project.
    pub fn id_for(&self, resource_type: &str, system: &str, value: &str) -> String {
        derived_id(&self.project_id, resource_type, system, value)
    }

    /// A draft whose id is derived from its identifier; `body` gets `identifier`, `subject` and
    /// the provenance extension added.
    pub fn draft(&self, resource_type: &'static str, system: &str, value: &str, mut body: Value) -> ResourceDraft {
        if let Value::Object(map) = &mut body {
            map.insert("resourceType".into(), json!(resource_type));
            map.insert("identifier".into(), json!([{ "system": system, "value": value }]));
            map.insert("subject".into(), json!({ "reference": format!("Patient/{}", self.patient_id) }));
            let mut extension = match map.remove("extension") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            extension.push(json!({
                "url": ext_source_endpoint(),
                "valueReference": { "reference": format!("Endpoint/{}", self.endpoint_id) }
            }));
            map.insert("extension".into(), Value::Array(extension));
        }
        ResourceDraft {
            resource_type,
            id: self.id_for(resource_type, system, value),
            identifier_system: system.into(),
            identifier_value: value.into(),
            body,
        }
    }
}

/// A stable FHIR id (32 hex characters) for (project, type, identifier).
pub fn derived_id(project_id: &str, resource_type: &str, system: &str, value: &str) -> String {
    crate::crypto::sha256_hex(&format!("{project_id}\n{resource_type}\n{system}\n{value}"))[..32].to_string()
}

/// The extension naming the Endpoint (connection) a resource was synced through.
pub fn ext_source_endpoint() -> String {
    format!("{BASE}/StructureDefinition/source-endpoint")
}

/// Why a provider's payload could not become FHIR (kept with the event or job, never a panic).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot map the provider's data: {0}")]
pub struct MapError(pub String);
