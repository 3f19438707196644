//! What this FHIR server supports, as one table: reads and searches check it, and the
//! `CapabilityStatement` is written from it, so the statement cannot promise what is not served.

use serde_json::{json, Value};

/// The FHIR restful interactions we serve (codes of `http://hl7.org/fhir/restful-interaction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interaction {
    Read,
    Vread,
    Create,
    SearchType,
}

impl Interaction {
    pub fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
        }
    }
}

/// One search parameter of a resource type; `kind` is its FHIR search parameter type.
#[derive(Clone, Copy, Debug)]
pub struct SearchParam {
    pub name: &'static str,
    pub kind: &'static str,
    pub documentation: &'static str,
}

pub struct ResourceSupport {
    pub resource_type: &'static str,
    pub interactions: &'static [Interaction],
    pub search_params: &'static [SearchParam],
}

const PATIENT: SearchParam =
    SearchParam { name: "patient", kind: "reference", documentation: "Patient/<id> (or a bare id); required" };
const SUBJECT: SearchParam = SearchParam { name: "subject", kind: "reference", documentation: "the same as patient" };
const CODE: SearchParam = SearchParam {
    name: "code",
    kind: "token",
    documentation: "system|code or code; commas for alternatives; repeatable (all must match)",
};
const DATE: SearchParam = SearchParam {
    name: "date",
    kind: "date",
    documentation: "a FHIR date or dateTime with an optional eq, ge, le, gt or lt prefix; repeatable",
};
const CATEGORY: SearchParam =
    SearchParam { name: "category", kind: "token", documentation: "system|code or code; commas for alternatives" };

use Interaction::{Create, Read, SearchType, Vread};

/// Every resource type served under `/fhir/R4`, what can be done with it and how it is searched.
pub const RESOURCES: &[ResourceSupport] = &[
    ResourceSupport { resource_type: "Patient", interactions: &[Read, Vread, Create], search_params: &[] },
    ResourceSupport {
        resource_type: "Endpoint",
        interactions: &[Read, Vread, SearchType],
        search_params: &[SearchParam {
            name: "patient",
            kind: "reference",
            documentation: "Patient/<id> (or a bare id): the patient whose connections these are; required",
        }],
    },
    ResourceSupport {
        resource_type: "Observation",
        interactions: &[Read, Vread, SearchType],
        search_params: &[PATIENT, SUBJECT, CODE, CATEGORY, DATE],
    },
    // CGM transmitters (Dexcom), which sensor readings reference in `device`.
    ResourceSupport { resource_type: "Device", interactions: &[Read, Vread], search_params: &[] },
    ResourceSupport {
        resource_type: "Procedure",
        interactions: &[Read, Vread, SearchType],
        search_params: &[PATIENT, SUBJECT, CODE, DATE],
    },
];

/// Parameters every search takes besides its search parameters (paging, order, format).
pub const RESULT_PARAMS: &[&str] = &["_count", "_offset", "_sort", "_format"];

/// The media types (and `_format` shorthands) we read and write; XML and RDF are not served.
pub const FORMATS: &[&str] = &["json", "application/fhir+json", "application/json"];

pub const FHIR_VERSION: &str = "4.0.1";

pub fn support_of(resource_type: &str) -> Option<&'static ResourceSupport> {
    RESOURCES.iter().find(|r| r.resource_type == resource_type)
}

pub fn supports(resource_type: &str, interaction: Interaction) -> bool {
    support_of(resource_type).is_some_and(|r| r.interactions.contains(&interaction))
}

/// The search parameter `name` of `resource_type`, if that type can be searched by it.
pub fn search_param(resource_type: &str, name: &str) -> Option<&'static SearchParam> {
    support_of(resource_type)
        .filter(|r| r.interactions.contains(&SearchType))?
        .search_params
        .iter()
        .find(|p| p.name == name)
}

/// The `CapabilityStatement` (`GET /fhir/R4/metadata`); `fhir_base` is the public `…/fhir/R4`.
pub fn capability_statement(fhir_base: &str, date: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|r| {
            let mut resource = json!({
                "type": r.resource_type,
                "interaction": r.interactions.iter().map(|i| json!({ "code": i.code() })).collect::<Vec<_>>(),
                "versioning": "versioned",
                "readHistory": r.interactions.contains(&Vread),
                "updateCreate": false,
            });
            if !r.search_params.is_empty() {
                resource["searchParam"] = r
                    .search_params
                    .iter()
                    .map(|p| json!({ "name": p.name, "type": p.kind, "documentation": p.documentation }))
                    .collect();
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "Wearlink",
        "kind": "instance",
        "software": { "name": "Wearlink", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Wearlink: wearable connections and their data as FHIR R4", "url": fhir_base },
        "fhirVersion": FHIR_VERSION,
        "format": FORMATS,
        "rest": [{
            "mode": "server",
            "documentation": "Searches also take _count (at most 1000), _offset and, on Observation and Procedure, _sort=date|-date. A project that writes into its own FHIR server (POST /v1/project/fhir-store) is served there, not here: every interaction below answers it 409 with an OperationOutcome (code fhir_data_on_server) naming that server.",
            "security": {
                "cors": false,
                "description": "A Wearlink API token (wl_…, member or admin) as Authorization: Bearer; metadata needs none."
            },
            "resource": resources
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_lists_the_table() {
        let statement = capability_statement("https://w.example/fhir/R4", "2026-11-26T00:00:00.000Z");
        let listed = statement["rest"][0]["resource"].as_array().unwrap();
        assert_eq!(listed.len(), RESOURCES.len());
        let observation = listed.iter().find(|r| r["type"] == "Observation").unwrap();
        let names: Vec<_> = observation["searchParam"].as_array().unwrap().iter().map(|p| &p["name"]).collect();
        assert!(names.iter().any(|n| *n == "category"));
        assert!(search_param("Procedure", "category").is_none());
        assert!(search_param("Patient", "patient").is_none(), "Patient has no search");
        assert!(supports("Patient", Create) && !supports("Endpoint", Create));
    }
}
