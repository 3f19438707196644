"""Wearlink's /fhir/R4 as the SMART `fhirclient` library (R4 models, strict parsing) sees it.

Run by tests/fhir_api.rs with FHIR_BASE (…/fhir/R4), FHIR_TOKEN (a Wearlink API token) and
CONNECTED_PATIENT (a patient with two connections). Any surprise raises; on success it prints
one JSON line of what it saw, for the test to compare with the server's own view.
"""

import json
import os

import requests
from fhirclient import client, server
from fhirclient.models.bundle import Bundle
from fhirclient.models.endpoint import Endpoint
from fhirclient.models.operationoutcome import OperationOutcome
from fhirclient.models.patient import Patient

base = os.environ["FHIR_BASE"]
smart = client.FHIRClient(settings={"app_id": "wearlink-test", "api_base": base})
# Wearlink's API tokens are bearer tokens; the library sends them as any other header.
smart.server.session.headers["Authorization"] = "Bearer " + os.environ["FHIR_TOKEN"]
seen = {}

# 1. The CapabilityStatement, read (without the token) and parsed into the R4 model.
anonymous = server.FHIRServer(None, base_uri=base)
statement = anonymous.capabilityStatement
assert statement.fhirVersion == "4.0.1", statement.fhirVersion
seen["capability"] = {
    r.type: {
        "interactions": sorted(i.code for i in r.interaction),
        "searchParams": sorted(p.name for p in (r.searchParam or [])),
    }
    for r in statement.rest[0].resource
}

# 2. A Patient, created and read back.
created = Patient({"name": [{"family": "Runner", "given": ["Ada"]}], "gender": "female"})
answer = Patient(created.create(smart.server))
assert answer.id and answer.meta.versionId == "1", answer.as_json()
read = Patient.read(answer.id, smart.server)
assert read.name[0].family == "Runner" and read.gender == "female", read.as_json()
seen["createdPatient"] = read.id

# 3. Endpoints by patient, one per page, following the Bundles' next links.
connected = os.environ["CONNECTED_PATIENT"]
search = Endpoint.where(struct={"patient": "Patient/" + connected, "_count": "1"})
pages = list(search.perform_iter(smart.server))
for page in pages:
    assert isinstance(page, Bundle) and page.type == "searchset" and page.total == 2, page.as_json()
    for entry in page.entry or []:
        assert entry.search.mode == "match" and entry.fullUrl.startswith(base + "/Endpoint/"), entry.as_json()
endpoints = [e.resource for page in pages for e in (page.entry or [])]
assert all(isinstance(e, Endpoint) for e in endpoints), endpoints
seen["pages"] = len(pages)
seen["endpoints"] = sorted(e.id for e in endpoints)
seen["providers"] = sorted(e.connectionType.code for e in endpoints)
nobody = Endpoint.where(struct={"patient": "Patient/" + read.id}).perform_iter(smart.server)
seen["endpointsOfNewPatient"] = [b.total for b in nobody]

# 4. Errors are OperationOutcomes: a Patient that does not exist, XML asked for, no token.
outcomes = {}
try:
    Patient.read("does-not-exist", smart.server)
    raise AssertionError("a missing Patient was found")
except server.FHIRNotFoundException as missing:
    outcomes["404"] = OperationOutcome(missing.response.json())
try:
    smart.server.request_json("Patient/" + read.id + "?_format=xml")
    raise AssertionError("XML was served")
except requests.HTTPError as refused:
    outcomes[str(refused.response.status_code)] = OperationOutcome(refused.response.json())
try:
    Patient.read(read.id, anonymous)
    raise AssertionError("read without a token")
except server.FHIRUnauthorizedException as unauthorized:
    outcomes["401"] = OperationOutcome(unauthorized.response.json())
seen["outcomes"] = {
    status: {
        "severity": o.issue[0].severity,
        "code": o.issue[0].code,
        "ours": o.issue[0].details.coding[0].code,
    }
    for status, o in outcomes.items()
}
print(json.dumps(seen))
