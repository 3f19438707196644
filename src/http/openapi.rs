//! What every operation of the OpenAPI document shares, added from what the operation declares so
//! that no annotation has to repeat it and none can forget it:
//!
//! - errors are `application/problem+json` (src/http/error.rs), whatever status they carry (FHIR
//!   `OperationOutcome`s under `/fhir/R4` when the document describes that schema);
//! - the errors an operation can answer by its kind: 401 when it takes a bearer token, 403 when it
//!   needs the admin role (`security(("bearer" = ["admin"]))`), 400 when it has path or query
//!   parameters or a body, 413 with a body, 500 when it reads the store, 503 always (the request
//!   time limit, an unavailable database);
//! - the links between operations (a Patient's id into connect, an endpoint's id into its
//!   operations, …), for clients and for schemathesis' stateful phase.
//!
//! Statuses an operation answers for its own reasons (404, 409, 422, 502, …) stay in its annotation.

use serde_json::{json, Value};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Content, OpenApi, PathItem, Ref, RefOr, Response};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The role an admin-only operation names in its security requirement.
pub const ADMIN_ROLE: &str = "admin";

/// How errors are answered: problem+json, and under `/fhir/R4` a FHIR `OperationOutcome` once the
/// document has that schema (the FHIR routes answer their errors as FHIR clients expect).
#[derive(Clone, Copy)]
struct Errors {
    fhir_outcome: bool,
}

impl Errors {
    /// The media type and schema of the errors answered on `path`.
    fn content(self, path: &str) -> (&'static str, Content) {
        if self.fhir_outcome && path.starts_with("/fhir/R4") {
            return ("application/fhir+json", Content::new(Some(Ref::from_schema_name(OPERATION_OUTCOME))));
        }
        (PROBLEM_JSON, Content::new(Some(Ref::from_schema_name("Problem"))))
    }
}

const OPERATION_OUTCOME: &str = "OperationOutcome";

/// Completes the document built from the annotations (see the module's doc); the links come in `to_json`.
pub fn complete(doc: &mut OpenApi) {
    let fhir_outcome = doc.components.as_ref().is_some_and(|c| c.schemas.contains_key(OPERATION_OUTCOME));
    let errors = Errors { fhir_outcome };
    for (path, item) in doc.paths.paths.iter_mut() {
        for operation in operations_mut(item) {
            problem_media_types(errors, path, operation);
            shared_errors(errors, path, operation);
        }
    }
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head, &mut item.options]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// Whether the operation takes a bearer token, and whether only with the admin role.
fn security(operation: &Operation) -> (bool, bool) {
    let requirements = operation.security.as_ref().map(|s| serde_json::to_value(s).unwrap_or_default());
    let Some(Value::Array(requirements)) = requirements else { return (false, false) };
    let schemes: Vec<&Value> = requirements.iter().filter_map(|r| r.get("bearer")).collect();
    let admin = schemes.iter().any(|roles| roles.as_array().is_some_and(|r| r.iter().any(|r| r == ADMIN_ROLE)));
    (!schemes.is_empty(), admin)
}

/// Annotations write `body = Problem`, which utoipa files under `application/json`; the server
/// sends it as `application/problem+json`.
fn problem_media_types(errors: Errors, path: &str, operation: &mut Operation) {
    for response in operation.responses.responses.values_mut() {
        let RefOr::T(response) = response else { continue };
        let is_problem = response
            .content
            .get("application/json")
            .is_some_and(|c| matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem")));
        if is_problem {
            response.content.shift_remove("application/json");
            let (media_type, content) = errors.content(path);
            response.content.insert(media_type.to_string(), content);
        }
    }
}

fn shared_errors(errors: Errors, path: &str, operation: &mut Operation) {
    let (bearer, admin) = security(operation);
    let has_params =
        operation.parameters.iter().flatten().any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query));
    let has_body = operation.request_body.is_some();
    let health = operation.tags.iter().flatten().any(|t| t == "health");

    let mut add = |status: &str, description: &str| {
        let responses = &mut operation.responses.responses;
        if !responses.contains_key(status) {
            let (media_type, content) = errors.content(path);
            let mut response = Response::new(description);
            response.content.insert(media_type.to_string(), content);
            if status == "401" {
                let header = HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some("`Bearer`"))
                    .build();
                response.headers.insert("WWW-Authenticate".into(), header);
            }
            responses.insert(status.to_string(), RefOr::T(response));
        }
    };
    if has_params || has_body {
        add("400", "A path, query or body that cannot be read (`bad_request`, `malformed_json`)");
    }
    if bearer {
        add("401", "No valid bearer token (`unauthorized`); checked before anything else of the request");
    }
    if admin {
        add("403", "The token's role may not call this operation (`forbidden`); checked before the body is read");
    }
    if has_body {
        add("413", "The body is larger than 1 MiB (`payload_too_large`)");
    }
    if !health {
        add("500", "An internal error (`internal`); details go to the server's log only");
    }
    add(
        "503",
        "The request took longer than the time limit (`timeout`) or the database is unavailable (`unavailable`)",
    );
}

/// `(from operation, status, link name, to operation, parameters, request body)`.
type LinkSpec = (&'static str, &'static str, &'static str, &'static str, Value, Option<Value>);

fn link_specs() -> Vec<LinkSpec> {
    let patient_id = "$response.body#/id";
    let endpoint_id = "$response.body#/id";
    let mut links: Vec<LinkSpec> = vec![
        ("create_patient", "201", "ReadPatient", "read_patient", json!({"id": patient_id}), None),
        (
            "create_patient",
            "201",
            "ConnectStrava",
            "connect",
            json!({"provider": "strava"}),
            Some(json!({"patientId": patient_id})),
        ),
        (
            "create_patient",
            "201",
            "ConnectPolar",
            "connect",
            json!({"provider": "polar"}),
            Some(json!({"patientId": patient_id})),
        ),
        (
            "create_patient",
            "201",
            "SearchEndpoints",
            "search_endpoints",
            json!({"patient": "Patient/{$response.body#/id}"}),
            None,
        ),
        (
            "create_patient",
            "201",
            "SearchObservations",
            "search_observations",
            json!({"patient": "Patient/{$response.body#/id}"}),
            None,
        ),
        (
            "create_patient",
            "201",
            "SearchProcedures",
            "search_procedures",
            json!({"patient": "Patient/{$response.body#/id}"}),
            None,
        ),
        ("create_patient", "201", "ListConnections", "list_connections", json!({"patientId": patient_id}), None),
        (
            "create_patient",
            "201",
            "Disconnect",
            "disconnect",
            json!({"provider": "strava", "patientId": patient_id}),
            None,
        ),
        (
            "connect",
            "200",
            "Callback",
            "callback",
            json!({"provider": "$request.path.provider", "state": "$response.body#/state"}),
            None,
        ),
        (
            "list_connections",
            "200",
            "AccessToken",
            "access_token",
            json!({"endpointId": "$response.body#/connections/0/id"}),
            None,
        ),
        (
            "list_connections",
            "200",
            "Resync",
            "resync",
            json!({"endpointId": "$response.body#/connections/0/id"}),
            None,
        ),
        (
            "list_connections",
            "200",
            "ReadEndpoint",
            "read_endpoint",
            json!({"id": "$response.body#/connections/0/id"}),
            None,
        ),
        ("list_events", "200", "Replay", "replay", json!({"eventId": "$response.body#/events/0/id"}), None),
        ("put_secret", "200", "DeleteSecret", "delete_secret", json!({"key": "$response.body#/key"}), None),
        ("list_endpoints", "200", "GetEndpoint", "get_endpoint", json!({"id": "$response.body#/endpoints/0/id"}), None),
        ("list_deliveries", "200", "Retry", "retry_delivery", json!({"id": "$response.body#/deliveries/0/id"}), None),
        ("test_endpoint", "202", "ListDeliveries", "list_deliveries", json!({"id": "$request.path.id"}), None),
    ];
    for (name, target) in
        [("GetCredentials", "get_credentials"), ("DeleteCredentials", "delete_credentials"), ("Subscribe", "subscribe")]
    {
        links.push(("put_credentials", "200", name, target, json!({"provider": "$request.path.provider"}), None));
    }
    for (name, target) in [
        ("GetEndpoint", "get_endpoint"),
        ("UpdateEndpoint", "update_endpoint"),
        ("DeleteEndpoint", "delete_endpoint"),
        ("RotateSecret", "rotate_secret"),
        ("Test", "test_endpoint"),
        ("ListDeliveries", "list_deliveries"),
    ] {
        links.push(("create_endpoint", "201", name, target, json!({"id": endpoint_id}), None));
    }
    links
}

/// The document as served: utoipa's, with the links added to the JSON (utoipa 5.5 writes a
/// link's fields in snake case, `operation_id`, which no client reads).
pub fn to_json(doc: &OpenApi) -> Value {
    let mut json = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    add_links(&mut json);
    list_providers(&mut json);
    json
}

/// Every `{provider}` path parameter names the registered providers, so a client (and the fuzz
/// run) sees which slugs exist; the list comes from the registry's, not from each handler.
fn list_providers(doc: &mut Value) {
    let slugs: Vec<Value> = crate::providers::SLUGS.iter().map(|s| Value::from(*s)).collect();
    for item in doc["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut()) {
        for op in item.as_object_mut().into_iter().flat_map(|methods| methods.values_mut()) {
            for param in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                if param["in"] == "path" && param["name"] == "provider" {
                    param["schema"] = json!({ "type": "string", "enum": slugs });
                }
            }
        }
    }
}

fn add_links(doc: &mut Value) {
    let mut operations: Vec<&mut Value> = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .flat_map(|item| item.as_object_mut().into_iter().flat_map(|methods| methods.values_mut()))
        .filter(|op| op.get("operationId").is_some())
        .collect();
    let known: Vec<String> =
        operations.iter().filter_map(|op| op["operationId"].as_str().map(str::to_string)).collect();
    for (from, status, name, to, parameters, body) in link_specs() {
        // A link naming an operation the document does not have is a bug in the table above.
        assert!(known.iter().any(|k| k == to), "link target {to} is not an operation");
        let source = operations.iter_mut().find(|op| op["operationId"] == from);
        let source = source.unwrap_or_else(|| panic!("link source {from} is not an operation"));
        let Some(response) = source["responses"].get_mut(status) else {
            panic!("{from} has no {status} response to link from")
        };
        let mut link = json!({"operationId": to, "parameters": parameters});
        if let Some(body) = body {
            link["requestBody"] = body;
        }
        response["links"][name] = link;
    }
}
