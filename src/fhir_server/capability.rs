//! Whether a FHIR server's `CapabilityStatement` (`GET {base}/metadata`) offers what Wearlink needs
//! to write into it: R4, Bundles (transaction or batch), conditional update on the resource types
//! it writes, and reads of Patients. Pure: the caller fetched the statement.
//!
//! Facts from FHIR R4 (`CapabilityStatement.rest`) and `shared/spec/fhir-server.md` ("Reads").

use serde_json::Value;

/// The resource types Wearlink writes (as conditional updates on their identifiers).
pub const WRITTEN_TYPES: &[&str] = &["Endpoint", "Observation", "Procedure"];

/// What the statement said, for the check's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qualified {
    pub fhir_version: String,
    /// `transaction` when the server takes transactions, else `batch`.
    pub bundles: &'static str,
    pub software: Option<String>,
}

/// Checks the statement; `Err` lists every shortcoming, each a sentence for the admin.
pub fn qualify(statement: &Value) -> Result<Qualified, Vec<String>> {
    let mut missing = Vec::new();
    if statement["resourceType"] != "CapabilityStatement" {
        return Err(vec!["GET /metadata did not answer a CapabilityStatement".into()]);
    }
    let fhir_version = statement["fhirVersion"].as_str().unwrap_or_default().to_string();
    if !fhir_version.starts_with("4.0.") {
        let shown = if fhir_version.is_empty() { "none" } else { &fhir_version };
        missing.push(format!("fhirVersion is {shown}; Wearlink writes FHIR R4 (4.0.x)"));
    }
    let rests = statement["rest"].as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(rest) = rests.iter().find(|r| r["mode"] == "server") else {
        missing.push("the statement has no rest entry with mode \"server\"".into());
        return Err(missing);
    };
    let system = codes(&rest["interaction"]);
    let bundles = if system.contains(&"transaction") {
        "transaction"
    } else if system.contains(&"batch") {
        "batch"
    } else {
        missing.push("the server offers neither the transaction nor the batch interaction".into());
        "none"
    };
    let resource = |kind: &str| rest["resource"].as_array().and_then(|all| all.iter().find(|r| r["type"] == kind));
    match resource("Patient") {
        Some(patient) if codes(&patient["interaction"]).contains(&"read") => {}
        Some(_) => missing.push("Patient: the read interaction is missing".into()),
        None => missing.push("Patient is not a supported resource type".into()),
    }
    for kind in WRITTEN_TYPES {
        let Some(entry) = resource(kind) else {
            missing.push(format!("{kind} is not a supported resource type"));
            continue;
        };
        let offered = codes(&entry["interaction"]);
        for needed in ["read", "update", "search-type"] {
            if !offered.contains(&needed) {
                missing.push(format!("{kind}: the {needed} interaction is missing"));
            }
        }
        if entry["conditionalUpdate"] != true {
            missing.push(format!("{kind}: conditionalUpdate is not offered"));
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    let software = statement["software"]["name"].as_str().map(str::to_string);
    Ok(Qualified { fhir_version, bundles, software })
}

fn codes(interactions: &Value) -> Vec<&str> {
    interactions.as_array().into_iter().flatten().filter_map(|i| i["code"].as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(kind: &str, interactions: &[&str], conditional_update: bool) -> Value {
        json!({
            "type": kind,
            "conditionalUpdate": conditional_update,
            "interaction": interactions.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
        })
    }

    fn statement(version: &str, system: &[&str], resources: Vec<Value>) -> Value {
        json!({
            "resourceType": "CapabilityStatement",
            "fhirVersion": version,
            "software": {"name": "a server"},
            "rest": [{
                "mode": "server",
                "interaction": system.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "resource": resources,
            }],
        })
    }

    fn full() -> Vec<Value> {
        let rw = ["read", "update", "search-type", "create"];
        vec![
            resource("Patient", &["read", "search-type"], false),
            resource("Endpoint", &rw, true),
            resource("Observation", &rw, true),
            resource("Procedure", &rw, true),
        ]
    }

    #[test]
    fn an_r4_server_with_transactions_and_conditional_updates_qualifies() {
        let ok = qualify(&statement("4.0.1", &["transaction", "batch"], full())).unwrap();
        assert_eq!(
            ok,
            Qualified { fhir_version: "4.0.1".into(), bundles: "transaction", software: Some("a server".into()) }
        );
        assert_eq!(qualify(&statement("4.0.1", &["batch"], full())).unwrap().bundles, "batch");
    }

    #[test]
    fn each_shortcoming_is_named() {
        let mut resources = full();
        resources[2] = resource("Observation", &["read", "search-type"], false);
        resources.remove(3);
        let problems = qualify(&statement("5.0.0", &[], resources)).unwrap_err();
        assert_eq!(
            problems,
            vec![
                "fhirVersion is 5.0.0; Wearlink writes FHIR R4 (4.0.x)",
                "the server offers neither the transaction nor the batch interaction",
                "Observation: the update interaction is missing",
                "Observation: conditionalUpdate is not offered",
                "Procedure is not a supported resource type",
            ]
        );
        let no_patient_read = {
            let mut r = full();
            r[0] = resource("Patient", &["search-type"], false);
            r
        };
        assert_eq!(
            qualify(&statement("4.0.1", &["transaction"], no_patient_read)).unwrap_err(),
            vec!["Patient: the read interaction is missing"]
        );
    }

    #[test]
    fn something_else_than_a_capability_statement_is_refused() {
        assert!(qualify(&json!({"resourceType": "OperationOutcome"})).is_err());
        assert!(qualify(&json!("<html>")).is_err());
        let no_server =
            json!({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [{"mode": "client"}]});
        assert_eq!(
            qualify(&no_server).unwrap_err().last().unwrap(),
            "the statement has no rest entry with mode \"server\""
        );
    }
}
