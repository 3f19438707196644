#!/usr/bin/env bash
# Fuzzes the running server against its own OpenAPI document with schemathesis (pinned, in a
# virtualenv): every operation, every phase (examples, coverage, fuzzing, stateful through the
# document's links), checking that no answer is a 5xx and that each status, media type and body
# is the one the document describes. Any failure fails the run.
#
#   .ci/schemathesis.sh                     # builds target/debug/wearlink first
#   ST_MAX_EXAMPLES=50 .ci/schemathesis.sh  # more cases per operation (default 30)
#   ST_SEED=1234 .ci/schemathesis.sh        # replay a run (each run prints its seed)
#
# The server runs on a free loopback port with a fresh SQLite data folder; provider URLs point at
# a closed loopback port, so the calls that reach a provider fail at once (502) instead of leaving
# the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=${ST_VENV:-.ci/.venv}
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-30}

if ! command -v python3 >/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x "$VENV/bin/schemathesis" ] ||
  [ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
  rm -rf "$VENV"
  # Debian's python3 has venv without ensurepip until python3-venv is installed.
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked --quiet --bin wearlink
BIN=target/debug/wearlink

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
export WEARLINK_DATA_DIR=$WORK/data WEARLINK_BIND=127.0.0.1:$PORT WEARLINK_BASE_URL=$BASE
export WEARLINK_PROVIDER_TIMEOUT_MS=2000 RUST_LOG=${RUST_LOG:-warn}
# Webhook endpoints registered by the run point at a closed loopback port (.ci/schemathesis.toml).
export WEARLINK_ALLOW_LOOPBACK_TARGETS=1 WEARLINK_OUTBOUND_ALLOW_CIDRS=127.0.0.0/8
# Every provider, so no call of the run leaves the machine (checked against the document below).
PROVIDERS="STRAVA POLAR OURA WHOOP GARMIN GOOGLE WITHINGS DEXCOM"
for provider in $PROVIDERS; do
  for url in AUTHORIZE TOKEN API REVOKE USER; do
    export "WEARLINK_PROVIDER_${provider}_${url}_URL=http://127.0.0.1:9/${url,,}"
  done
done
# Providers whose hosts differ by region (Dexcom): every region's host too.
for region in US EU JP SANDBOX; do
  export "WEARLINK_PROVIDER_DEXCOM_REGION_${region}_URL=http://127.0.0.1:9/dexcom-${region,,}"
done

TOKEN=$("$BIN" project create schemathesis | python3 -c 'import json, sys; print(json.load(sys.stdin)["adminToken"])')
"$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
python3 - "$BASE/healthz" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("the server did not start")
PY
python3 - "$BASE/openapi.json" "$PROVIDERS" <<'PY'
import json, sys, urllib.request
doc = json.load(urllib.request.urlopen(sys.argv[1]))
listed = {s.upper() for item in doc["paths"].values() for op in item.values() if isinstance(op, dict)
          for p in op.get("parameters", []) if p.get("name") == "provider" for s in p["schema"].get("enum", [])}
missing = listed - set(sys.argv[2].split())
if missing:
    sys.exit(f"PROVIDERS in .ci/schemathesis.sh lacks {sorted(missing)}: their calls would leave the machine")
PY

status=0
"$VENV/bin/schemathesis" --config-file .ci/schemathesis.toml --no-color run "$BASE/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$MAX_EXAMPLES" \
  ${ST_SEED:+--seed "$ST_SEED"} \
  --request-timeout 10 || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis found failures; the server's log (last 50 lines):" >&2
  tail -n 50 "$WORK/server.log" >&2
fi
exit "$status"
