#!/usr/bin/env bash
# Counts the instructions the server spends per request (valgrind's callgrind: repeatable on a
# noisy machine, unlike wall-clock figures): `wearlink serve` (release build, SQLite in a fresh
# folder) runs under callgrind with instrumentation off; a sequential keep-alive client sends
# BENCH_WARMUP requests of each kind unmeasured, then BENCH_REQUESTS measured, one dump each:
#   healthz   GET /healthz
#   connect   POST /v1/wearables/strava/connect (a state stored per request)
# and prints instructions per request of each and their ratio. Run on purpose, not by cargo test.
#
# Settings: BENCH_REQUESTS (2000), BENCH_WARMUP (200), BENCH_PORT (18095), BENCH_NO_BUILD,
# BENCH_OUT (a folder to keep the callgrind files in; default: a temporary one, removed).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${BENCH_REQUESTS:-2000}
WARMUP=${BENCH_WARMUP:-200}
PORT=${BENCH_PORT:-18095}
BASE="http://127.0.0.1:$PORT"
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
  cargo build --release --quiet --bin wearlink --example bench_load
fi
BIN=${BENCH_SERVER_BIN:-$TARGET/release/wearlink}
LOAD=$TARGET/release/examples/bench_load
WORK=$(mktemp -d)
OUT=${BENCH_OUT:-$WORK/out}
mkdir -p "$OUT"
SERVER_PID="" STAND_IN_PID=""
cleanup() {
  for pid in $SERVER_PID $STAND_IN_PID; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

"$LOAD" stand-in --addr-file "$WORK/stand-in.addr" &
STAND_IN_PID=$!
for _ in $(seq 100); do [[ -s $WORK/stand-in.addr ]] && break; sleep 0.05; done
STAND_IN="http://$(cat "$WORK/stand-in.addr")"

export WEARLINK_BIND="127.0.0.1:$PORT" WEARLINK_DATA_DIR="$WORK/data" WEARLINK_DATABASE_URL="sqlite://$WORK/data/wearlink.db"
export WEARLINK_MASTER_KEY
WEARLINK_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
export WEARLINK_PROVIDER_STRAVA_TOKEN_URL="$STAND_IN/oauth/token" WEARLINK_PROVIDER_STRAVA_API_URL="$STAND_IN/api/v3"
project=$("$BIN" project create bench 2>/dev/null)
TOKEN=$(sed -E 's/.*"adminToken":"([^"]+)".*/\1/' <<<"$project")

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out.%p" \
  "$BIN" serve 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 600); do curl -sf -o /dev/null "$BASE/readyz" && break; sleep 0.1; done
patients=$("$LOAD" seed --url "$BASE" --token "$TOKEN" --patients 1)
PATIENT=$(cut -d, -f1 <<<"$patients")

python3 - "$BASE" "$TOKEN" "$PATIENT" "$REQUESTS" "$WARMUP" "$SERVER_PID" <<'PY'
import http.client, json, subprocess, sys
base, token, patient, n, warmup, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
host, port = base.split("//")[1].split(":")
conn = http.client.HTTPConnection(host, int(port))
body = json.dumps({"patientId": patient, "redirectUri": "https://app.example/connected"})
def send(kind):
    if kind == "healthz":
        conn.request("GET", "/healthz")
    else:
        conn.request("POST", "/v1/wearables/strava/connect", body,
                     {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    r = conn.getresponse(); r.read()
    assert r.status == 200, (kind, r.status)
def ctl(*args):
    subprocess.run(["callgrind_control", *args, pid], check=True, stdout=subprocess.DEVNULL)
totals = {}
for kind in ["healthz", "connect"]:
    for _ in range(warmup): send(kind)
    ctl("-i", "on"); ctl("-z")
    for _ in range(n): send(kind)
    ctl("-d", kind); ctl("-i", "off")
PY
sleep 1
for kind in healthz connect; do
  f=$(grep -l "^desc: Trigger: .*$kind" "$OUT"/callgrind.out.* | head -1)
  ir=$(awk '/^summary:/ {print $2}' "$f")
  echo "$kind $ir $((ir / REQUESTS))"
done | awk -v n="$REQUESTS" '{ir[$1] = $3; print $1 ": " $3 " instructions/request (" $2 " for " n ")"}
  END {printf "connect / healthz: %.2f\n", ir["connect"] / ir["healthz"]}'
