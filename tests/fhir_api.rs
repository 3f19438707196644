//! `/fhir/R4` as FHIR clients expect it: a CapabilityStatement that promises what is served,
//! `application/fhir+json` both ways, errors as OperationOutcomes, paged searchset Bundles, and a
//! FHIR client library written elsewhere (SMART's Python `fhirclient`) that agrees.

mod support;

on_both_backends!(
    the_capability_statement_promises_what_is_served,
    answers_are_fhir_json_and_errors_are_operation_outcomes,
    searches_page_through_searchset_bundles,
    a_fhir_client_library_reads_creates_searches_and_parses_errors,
);

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{outcome_code, problem_code, Backend, FhirPartner, TestApp};

const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A raw request, answering status, content type and the parsed body.
async fn fetch(app: &TestApp, request: reqwest::RequestBuilder) -> (StatusCode, String, Value) {
    let _ = app;
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let text = response.text().await.unwrap();
    (status, content_type, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A patient connected to Strava and Polar: answers the patient and its two Endpoint ids.
async fn patient_with_two_connections(app: &TestApp) -> (String, BTreeSet<String>) {
    app.configure("strava").await;
    app.configure("polar").await;
    let patient = app.create_patient().await;
    let mut endpoints = BTreeSet::new();
    for provider in ["strava", "polar"] {
        let (status, _, page) = app.connect_and_approve(provider, json!({"patientId": patient})).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        endpoints.insert(page["endpointId"].as_str().unwrap().to_string());
    }
    (patient, endpoints)
}

/// A value of each FHIR search parameter type, to search with.
fn sample(kind: &str, patient: &str) -> String {
    match kind {
        "reference" => format!("Patient/{patient}"),
        "token" => "http://loinc.org|8867-4".into(),
        "date" => "ge2026-01-01".into(),
        other => panic!("the statement lists a {other} parameter: give the test a sample of it"),
    }
}

async fn the_capability_statement_promises_what_is_served(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, endpoints) = patient_with_two_connections(&app).await;
    let endpoint = endpoints.iter().next().unwrap().clone();

    // Read without a token, as FHIR clients do first.
    let (status, content_type, statement) = fetch(&app, app.http.get(app.url("/fhir/R4/metadata"))).await;
    assert_eq!(status, StatusCode::OK, "{statement}");
    assert_eq!(content_type, FHIR_JSON);
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(statement["kind"], "instance");
    assert_eq!(statement["implementation"]["url"], format!("{}/fhir/R4", app.base));
    let resources = statement["rest"][0]["resource"].as_array().unwrap();
    let listed: BTreeSet<&str> = resources.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(listed, BTreeSet::from(["Patient", "Endpoint", "Observation", "Procedure", "Device"]));

    // Every interaction and search parameter it lists is answered by the handler that does it
    // (not by the unknown-route fallback).
    let existing = |kind: &str| match kind {
        "Patient" => Some(patient.clone()),
        "Endpoint" => Some(endpoint.clone()),
        _ => None, // nothing synced in this story: a read is the handler's 404 naming it
    };
    let mut served = BTreeSet::new();
    for resource in resources {
        let kind = resource["type"].as_str().unwrap();
        for interaction in resource["interaction"].as_array().unwrap() {
            let code = interaction["code"].as_str().unwrap();
            let path = match code {
                "read" => format!("/fhir/R4/{kind}/{}", existing(kind).unwrap_or("none".into())),
                "vread" => format!("/fhir/R4/{kind}/{}/_history/1", existing(kind).unwrap_or("none".into())),
                "search-type" => format!("/fhir/R4/{kind}?patient=Patient/{patient}"),
                "create" => {
                    let (status, created) = app
                        .send(
                            "POST",
                            &format!("/fhir/R4/{kind}"),
                            Some(&app.admin),
                            Some(json!({"resourceType": kind})),
                        )
                        .await;
                    assert_eq!(status, StatusCode::CREATED, "create {kind}: {created}");
                    served.insert(format!("POST /fhir/R4/{kind}"));
                    continue;
                }
                other => panic!("the statement lists {other}: teach this story to try it"),
            };
            let (status, body) = app.get(&path).await;
            match existing(kind) {
                Some(_) | None if code == "search-type" => {
                    assert_eq!(status, StatusCode::OK, "{path}: {body}");
                    assert_eq!(body["type"], "searchset");
                }
                Some(_) => assert_eq!(status, StatusCode::OK, "{path}: {body}"),
                None => {
                    assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
                    let text = body["issue"][0]["details"]["text"].as_str().unwrap();
                    assert!(text.contains(&format!("{kind}/none")), "{path} reached no handler: {body}");
                }
            }
            served.insert(format!(
                "GET {}",
                if code == "search-type" { format!("/fhir/R4/{kind}") } else { code.into() }
            ));
        }
        for param in resource["searchParam"].as_array().into_iter().flatten() {
            let (name, kind_of) = (param["name"].as_str().unwrap(), param["type"].as_str().unwrap());
            let query = format!("patient=Patient/{patient}&{name}={}", sample(kind_of, &patient));
            let (status, body) = app.get(&format!("/fhir/R4/{kind}?{query}")).await;
            assert_eq!(status, StatusCode::OK, "{kind}?{query} is listed but refused: {body}");
        }
        // What it does not list is refused, not ignored.
        if resource["searchParam"].is_array() {
            let (status, body) = app.get(&format!("/fhir/R4/{kind}?patient=Patient/{patient}&identifier=x")).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        }
    }

    // And every /fhir/R4 route of the OpenAPI document is in the statement (reads and versions
    // by their interactions, searches and creates by their type).
    let (_, doc) = app.send("GET", "/openapi.json", None, None).await;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        let Some(rest) = path.strip_prefix("/fhir/R4/") else { continue };
        for method in operations.as_object().unwrap().keys() {
            let segments: Vec<&str> = rest.split('/').collect();
            let key = match (method.as_str(), segments.as_slice()) {
                ("get", ["metadata"]) => continue,
                ("get", [kind]) => format!("GET /fhir/R4/{kind}"),
                ("post", [kind]) => format!("POST /fhir/R4/{kind}"),
                ("get", [_, "{id}"]) => "GET read".into(),
                ("get", [_, _, "_history", _]) => "GET vread".into(),
                other => panic!("a /fhir/R4 route the statement cannot describe: {other:?}"),
            };
            assert!(served.contains(&key), "{method} {path} is served but not in the CapabilityStatement");
        }
    }

    // The R4 validator agrees it is a CapabilityStatement (when installed; see tests/fhir-partner).
    if let Some(partner) = FhirPartner::start().await {
        partner.validate(&statement).await.unwrap();
    }
}

async fn answers_are_fhir_json_and_errors_are_operation_outcomes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let patient = app.create_patient().await;
    let read = app.url(&format!("/fhir/R4/Patient/{patient}"));
    let get = || app.http.get(&read).bearer_auth(&app.admin);

    // JSON however it is asked for; a client that prefers XML but takes JSON gets JSON.
    for accept in [
        None,
        Some("application/fhir+json"),
        Some("application/json"),
        Some("*/*"),
        Some("application/fhir+xml;q=1.0, application/fhir+json;q=0.9"),
    ] {
        let request = match accept {
            Some(accept) => get().header("accept", accept),
            None => get(),
        };
        let (status, content_type, body) = fetch(&app, request).await;
        assert_eq!((status, content_type.as_str()), (StatusCode::OK, FHIR_JSON), "Accept {accept:?}: {body}");
        assert_eq!(body["id"], patient.as_str());
    }
    for format in ["json", "application/fhir%2Bjson", "application/json", "application/fhir+json"] {
        let url = format!("{read}?_format={format}");
        let (status, content_type, _) = fetch(&app, app.http.get(&url).bearer_auth(&app.admin)).await;
        assert_eq!((status, content_type.as_str()), (StatusCode::OK, FHIR_JSON), "_format={format}");
    }

    // XML is not served (406) nor read (415), and says so as an OperationOutcome.
    let (status, content_type, body) =
        fetch(&app, app.http.get(format!("{read}?_format=xml")).bearer_auth(&app.admin)).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::NOT_ACCEPTABLE, FHIR_JSON));
    assert_eq!(outcome_code(&body, "not-supported"), "not_acceptable");
    let (status, _, body) = fetch(&app, get().header("accept", "application/fhir+xml")).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(outcome_code(&body, "not-supported"), "not_acceptable");
    let post = || app.http.post(app.url("/fhir/R4/Patient")).bearer_auth(&app.admin);
    let (status, _, body) = fetch(
        &app,
        post().header("content-type", "application/fhir+xml").body("<Patient xmlns=\"http://hl7.org/fhir\"/>"),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(outcome_code(&body, "not-supported"), "unsupported_media_type");
    // Who may ask is answered before how: no token and XML is still 401.
    let (status, _, body) = fetch(&app, app.http.get(format!("{read}?_format=xml"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(outcome_code(&body, "login"), "unauthorized");

    // Both JSON types are read.
    for content_type in ["application/fhir+json", "application/json"] {
        let request = post().header("content-type", content_type).body(r#"{"resourceType": "Patient"}"#);
        let (status, answered, body) = fetch(&app, request).await;
        assert_eq!((status, answered.as_str()), (StatusCode::CREATED, FHIR_JSON), "{content_type}: {body}");
    }

    // Each error, with its status of today, as an OperationOutcome with our code in `details`.
    let no_token = app.http.get(&read);
    let response = no_token.send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str, &str)> = vec![
        (app.http.get(&read), StatusCode::UNAUTHORIZED, "login", "unauthorized"),
        (app.http.get(&read).bearer_auth("wl_wrong"), StatusCode::UNAUTHORIZED, "login", "unauthorized"),
        (get_path(&app, "/fhir/R4/Patient/nobody"), StatusCode::NOT_FOUND, "not-found", "not_found"),
        (get_path(&app, "/fhir/R4/Condition"), StatusCode::NOT_FOUND, "not-found", "not_found"),
        (
            get_path(&app, "/fhir/R4/Observation?code=x"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "validation_failed",
        ),
        (post().body("{not json"), StatusCode::BAD_REQUEST, "structure", "malformed_json"),
        (
            post().json(&json!({"resourceType": "Endpoint"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "validation_failed",
        ),
        (
            post().json(&json!({"resourceType": "Patient", "note": "x".repeat(wearlink::http::MAX_BODY_BYTES)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-long",
            "payload_too_large",
        ),
        (
            app.http.delete(&read).bearer_auth(&app.admin),
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "method_not_allowed",
        ),
    ];
    for (request, status, issue_type, code) in cases {
        let (answered, content_type, body) = fetch(&app, request).await;
        assert_eq!((answered, content_type.as_str()), (status, FHIR_JSON), "{body}");
        assert_eq!(outcome_code(&body, issue_type), code);
        if let Some(partner) = FhirPartner::start().await {
            partner.validate(&body).await.unwrap();
        }
    }

    // Outside /fhir/R4 errors stay problem+json.
    let (status, content_type, body) = fetch(&app, app.http.get(app.url("/v1/nothing"))).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::NOT_FOUND, "application/problem+json"));
    assert_eq!(problem_code(&body, status), "not_found");
}

fn get_path(app: &TestApp, path: &str) -> reqwest::RequestBuilder {
    app.http.get(app.url(path)).bearer_auth(&app.admin)
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation).map(|l| l["url"].as_str().unwrap().into())
}

async fn searches_page_through_searchset_bundles(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, endpoints) = patient_with_two_connections(&app).await;

    let (status, content_type, first) = fetch(
        &app,
        get_path(&app, &format!("/fhir/R4/Endpoint?patient=Patient/{patient}&_count=1"))
            .header("accept", "application/json"),
    )
    .await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, FHIR_JSON), "{first}");
    assert_eq!(
        (&first["resourceType"], &first["type"], &first["total"]),
        (&json!("Bundle"), &json!("searchset"), &json!(2))
    );
    let entries = first["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry["search"]["mode"], "match");
    let id = entry["resource"]["id"].as_str().unwrap();
    assert_eq!(entry["fullUrl"], format!("{}/fhir/R4/Endpoint/{id}", app.base), "an absolute fullUrl");
    assert!(link(&first, "self").unwrap().starts_with(&format!("{}/fhir/R4/Endpoint?", app.base)));
    assert!(link(&first, "previous").is_none());

    // The next link is absolute and leads to the second (last) page, which links back.
    let next = link(&first, "next").expect("a next link");
    let (status, second) = app.get(next.strip_prefix(&app.base).expect("an absolute next link")).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["total"], 2);
    assert_eq!(second["entry"].as_array().unwrap().len(), 1);
    assert!(link(&second, "next").is_none(), "{second}");
    let previous = link(&second, "previous").expect("a previous link");
    let (_, back) = app.get(previous.strip_prefix(&app.base).unwrap()).await;
    assert_eq!(back["entry"], first["entry"]);
    let seen: BTreeSet<String> =
        [&first, &second].iter().map(|b| b["entry"][0]["resource"]["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(seen, endpoints, "the pages together hold every match once");

    // _count=0 answers the total alone; no matches, no entry (FHIR JSON has no empty arrays).
    let (_, counted) = app.get(&format!("/fhir/R4/Endpoint?patient=Patient/{patient}&_count=0")).await;
    assert_eq!(counted["total"], 2);
    assert!(counted.get("entry").is_none() && link(&counted, "next").is_none(), "{counted}");
    let nobody = app.create_patient().await;
    let (_, empty) = app.get(&format!("/fhir/R4/Procedure?patient=Patient/{nobody}")).await;
    assert_eq!(empty["total"], 0);
    assert!(empty.get("entry").is_none(), "{empty}");
    if let Some(partner) = FhirPartner::start().await {
        partner.validate_all(&[first, empty]).await.unwrap();
    }
}

const REQUIRE_CLIENT_ENV: &str = "WEARLINK_TEST_REQUIRE_FHIR_CLIENT";
static SKIP_NOTICE: std::sync::Once = std::sync::Once::new();

async fn a_fhir_client_library_reads_creates_searches_and_parses_errors(backend: Backend) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fhir-client");
    let python = dir.join(".venv").join("bin").join("python");
    if !python.exists() {
        let how =
            format!("python3 -m venv {0}/.venv && {0}/.venv/bin/pip install -r {0}/requirements.txt", dir.display());
        if std::env::var(REQUIRE_CLIENT_ENV).is_ok_and(|v| v == "1") {
            panic!("{REQUIRE_CLIENT_ENV}=1 but the FHIR client is not installed: {how}");
        }
        SKIP_NOTICE.call_once(|| {
            // Straight to stderr: the test harness swallows eprintln! of a passing test.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n**********************************************************************\n\
                 ** FHIR CLIENT STORY SKIPPED: {} is missing.\n\
                 ** Install it with:  {how}\n\
                 ** Set {REQUIRE_CLIENT_ENV}=1 to make this a failure.\n\
                 **********************************************************************\n",
                python.display()
            );
        });
        return;
    }
    let app = TestApp::spawn(backend).await;
    let (patient, endpoints) = patient_with_two_connections(&app).await;
    let mut command = std::process::Command::new(python);
    command
        .arg(dir.join("client.py"))
        .env("FHIR_BASE", format!("{}/fhir/R4", app.base))
        .env("FHIR_TOKEN", &app.admin)
        .env("CONNECTED_PATIENT", &patient);
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the FHIR client failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();

    // What the library parsed out of the CapabilityStatement is what the server says it serves.
    let (_, statement) = app.send("GET", "/fhir/R4/metadata", None, None).await;
    for resource in statement["rest"][0]["resource"].as_array().unwrap() {
        let parsed = &seen["capability"][resource["type"].as_str().unwrap()];
        let mut interactions: Vec<&Value> =
            resource["interaction"].as_array().unwrap().iter().map(|i| &i["code"]).collect();
        interactions.sort_by_key(|v| v.as_str().unwrap().to_string());
        assert_eq!(parsed["interactions"], json!(interactions), "{resource}");
    }
    assert_eq!(
        seen["capability"]["Observation"]["searchParams"],
        json!(["category", "code", "date", "patient", "subject"])
    );

    // Its Patient is ours; the two Endpoints came one a page; the new patient has none.
    let (status, created) = app.get(&format!("/fhir/R4/Patient/{}", seen["createdPatient"].as_str().unwrap())).await;
    assert_eq!((status, &created["name"][0]["family"]), (StatusCode::OK, &json!("Runner")));
    assert_eq!(seen["pages"], 2);
    assert_eq!(seen["endpoints"], json!(endpoints.iter().collect::<Vec<_>>()));
    assert_eq!(seen["providers"], json!(["polar", "strava"]));
    assert_eq!(seen["endpointsOfNewPatient"], json!([0]));

    // And it parsed each error as an OperationOutcome with our code.
    assert_eq!(
        seen["outcomes"],
        json!({
            "404": {"severity": "error", "code": "not-found", "ours": "not_found"},
            "406": {"severity": "error", "code": "not-supported", "ours": "not_acceptable"},
            "401": {"severity": "error", "code": "login", "ours": "unauthorized"},
        })
    );
}
