#!/usr/bin/env bash
# Benchmarks Wearlink on this machine (run on purpose; not part of the test suite).
#
# For each backend (SQLite, then PostgreSQL on a fresh database that is dropped afterwards) it
# builds in release mode, seeds a project (CLI) with Strava enabled, credentials and patients
# (HTTP), starts `wearlink serve` against an instantly answering Strava stand-in, and drives, at a
# fixed concurrency for a fixed time after a short warm-up:
#   baseline  GET /healthz of the same server (wrk)
#   connect   POST /v1/wearables/strava/connect (wrk)
#   callback  connect, then GET /v1/wearables/strava/callback with that state: token exchange at
#             the stand-in, Endpoint written, 303 (examples/bench_load.rs)
#   webhooks  POST /v1/wearables/strava/webhook/<project> for the connected athletes, every 10th
#             send a retry of the sender's last event; then the inbox is counted (each new event
#             stored once) (examples/bench_load.rs)
# and records requests/s, p50/p99 latency, errors, the server's peak RSS (VmHWM, reset before each
# scenario) and CPU time. Results: bench/results/<date>-<commit>.{json,md}.
#
# Settings (environment):
#   BENCH_BACKENDS     "sqlite postgres"   which backends
#   BENCH_SQLITE_SYNCHRONOUS "full"        SQLite modes, each a run of its own ("full normal":
#                                          both; results "sqlite" and "sqlite-normal")
#   BENCH_SERVER_BIN   target/release/wearlink   another build of the server (e.g. an older commit)
#   BENCH_BUILD        1                   0: use the binaries in target/release as they are
#   BENCH_CONCURRENCY  64                  connections / concurrent flows
#   BENCH_SECONDS      10                  measured seconds per scenario
#   BENCH_WARMUP       2                   unmeasured seconds before each scenario
#   BENCH_PATIENTS     64                  patients seeded; callback worker i connects patient i mod n
#   BENCH_PORT         18080               the server's port (127.0.0.1)
#   BENCH_PIN          unset               "SERVER_CPUS LOAD_CPUS" (e.g. "1 0") pins with taskset
#   BENCH_POSTGRES_URL postgres://postgres@127.0.0.1:5432/test   where the bench database is created
#   BENCH_RUST_LOG     the service default (info: one line per request, to a file)
#   BENCH_OUT          bench/results       where the result files go
#   BENCH_LABEL        unset               a note added to the commit in the results (e.g. "before")
#   BENCH_DATA_DIR     a temporary folder  where the SQLite database lives (e.g. /dev/shm: no disk I/O)
#   BENCH_SCENARIOS    "baseline connect callback webhooks"   which scenarios, in this order
#   BENCH_ROUNDS       1                   rounds of the scenarios, alternating (baseline, connect,
#                                          baseline, connect, …; each with its warm-up); each
#                                          figure reported is the median of the rounds', every
#                                          round kept in <backend>-<scenario>.rounds.json
set -euo pipefail
cd "$(dirname "$0")/.."

BACKENDS=${BENCH_BACKENDS:-"sqlite postgres"}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
DURATION=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-2}
PATIENTS=${BENCH_PATIENTS:-64}
PORT=${BENCH_PORT:-18080}
PG_ADMIN_URL=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
OUT_DIR=${BENCH_OUT:-bench/results}
BASE="http://127.0.0.1:$PORT"

log() { printf '[bench] %s\n' "$*" >&2; }

# ---- tools ----
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk (Debian package)"
  apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi
if grep -qw postgres <<<"$BACKENDS" && ! command -v psql >/dev/null 2>&1; then
  log "installing psql (Debian package postgresql-client)"
  apt-get install -y postgresql-client >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y postgresql-client >/dev/null; }
fi
if [[ ${BENCH_BUILD:-1} == 1 ]]; then
  log "building (release)"
  cargo build --release --quiet --bin wearlink --example bench_load
fi
BIN=${BENCH_SERVER_BIN:-$PWD/target/release/wearlink}
LOAD=$PWD/target/release/examples/bench_load

SERVER_PIN=() LOAD_PIN=() PINNING="not pinned: server and load generators share both cores"
if [[ -n ${BENCH_PIN:-} ]]; then
  read -r server_cpus load_cpus <<<"$BENCH_PIN"
  SERVER_PIN=(taskset -c "$server_cpus") LOAD_PIN=(taskset -c "$load_cpus")
  PINNING="server pinned to CPU $server_cpus, load generators to CPU $load_cpus"
fi

WORK=$(mktemp -d)
SERVER_PID="" STAND_IN_PID="" PG_DB=""
stop() {
  local pid=$1
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
drop_pg_db() {
  if [[ -n $PG_DB ]]; then
    psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null || true
    PG_DB=""
  fi
}
cleanup() {
  stop "$SERVER_PID"
  stop "$STAND_IN_PID"
  drop_pg_db
  rm -rf "$WORK"
}
trap cleanup EXIT

if curl -s -o /dev/null "$BASE/healthz"; then
  log "something already listens on $BASE; set BENCH_PORT"
  exit 1
fi

# ---- the stand-in ----
"${LOAD_PIN[@]}" "$LOAD" stand-in --addr-file "$WORK/stand-in.addr" &
STAND_IN_PID=$!
for _ in $(seq 100); do [[ -s $WORK/stand-in.addr ]] && break; sleep 0.05; done
STAND_IN="http://$(cat "$WORK/stand-in.addr")"

RESULTS="$WORK/results"
mkdir -p "$RESULTS"

# Machine CPU counters: "busy total" jiffies; busy_cores A B SECONDS gives the cores kept busy between.
cpu_counters() { awk '/^cpu / {idle = $5 + $6; total = 0; for (i = 2; i <= 9; i++) total += $i; print total - idle, total}' /proc/stat; }
busy_cores() { # "busy total" before, "busy total" after
  awk -v a="$1" -v b="$2" -v n="$(nproc)" 'BEGIN {split(a, x, " "); split(b, y, " "); t = y[2] - x[2];
    printf "%.2f", (t > 0 ? (y[1] - x[1]) / t * n : 0)}'
}
# What else keeps the machine busy before we start (other builds or tests skew the figures).
before=$(cpu_counters); sleep 3; BACKGROUND_BUSY=$(busy_cores "$before" "$(cpu_counters)")
log "background load before the run: $BACKGROUND_BUSY of $(nproc) cores busy"

# Server facts: peak RSS (KiB) since the last reset, CPU seconds so far.
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status"; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$SERVER_PID/stat"; }
reset_hwm() { echo 5 >"/proc/$SERVER_PID/clear_refs" 2>/dev/null || log "cannot reset VmHWM: peaks are cumulative"; }

wrk_run() { # seconds out-file url [method body token]
  BENCH_OUT=$2 BENCH_METHOD=${4:-GET} BENCH_BODY=${5:-} BENCH_TOKEN=${6:-} \
    "${LOAD_PIN[@]}" wrk -t2 -c"$CONCURRENCY" -d"$1s" --timeout 5s -s bench/wrk.lua "$3" >"$2.txt"
}

# scenario backend name: warm-up, reset the peak, measure; the runner is "$@" after the name,
# called as runner SECONDS OUT-FILE.
scenario() {
  local backend=$1 name=$2
  shift 2
  log "$backend $name: ${WARMUP}s warm-up, ${DURATION}s measured"
  reset_hwm
  "$@" "$WARMUP" "$WORK/warmup.json"
  local cpu_before machine_before
  cpu_before=$(cpu_s) machine_before=$(cpu_counters)
  "$@" "$DURATION" "$RESULTS/$backend-$name.json"
  printf '{"peak_rss_kib": %s, "server_cpu_s": %s, "machine_busy_cores": %s}\n' "$(hwm_kib)" \
    "$(awk -v a="$cpu_before" -v b="$(cpu_s)" 'BEGIN {printf "%.2f", b - a}')" \
    "$(busy_cores "$machine_before" "$(cpu_counters)")" >"$RESULTS/$backend-$name.server.json"
  sed 's/^/[bench]   /' "$RESULTS/$backend-$name.json" >&2
}

baseline() { wrk_run "$1" "$2" "$BASE/healthz"; }
connect() { wrk_run "$1" "$2" "$BASE/v1/wearables/strava/connect" POST "$CONNECT_BODY" "$TOKEN"; }
callback() {
  "${LOAD_PIN[@]}" "$LOAD" callback --url "$BASE" --token "$TOKEN" --patients "$PATIENT_IDS" \
    --concurrency "$CONCURRENCY" --seconds "$1" >"$2"
}

webhooks() {
  "${LOAD_PIN[@]}" "$LOAD" webhooks --url "$BASE" --token "$TOKEN" --project "$PROJECT" --database-url "$db_url" \
    --concurrency "$CONCURRENCY" --seconds "$1" >"$2"
}

RUNS=()
for backend in $BACKENDS; do
  if [[ $backend == sqlite ]]; then
    for mode in ${BENCH_SQLITE_SYNCHRONOUS:-full}; do
      RUNS+=("sqlite:$mode")
    done
  else
    RUNS+=("$backend:")
  fi
done

for run in "${RUNS[@]}"; do
  backend=${run%%:*} mode=${run#*:}
  # Results are named by backend, and SQLite's non-default mode after it ("sqlite-normal").
  if [[ -n $mode && $mode != full ]]; then backend="$backend-$mode"; fi
  data="${BENCH_DATA_DIR:-$WORK}/$backend-$$"
  mkdir -p "$data"
  unset WEARLINK_SQLITE_SYNCHRONOUS
  if [[ -n $mode ]]; then export WEARLINK_SQLITE_SYNCHRONOUS=$mode; fi
  case $backend in
    sqlite*) db_url="sqlite://$data/wearlink.db" ;;
    postgres)
      PG_DB="wearlink_bench_$$"
      psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE $PG_DB" >/dev/null
      db_url="${PG_ADMIN_URL%/*}/$PG_DB"
      ;;
    *) log "unknown backend $backend"; exit 1 ;;
  esac
  export WEARLINK_BIND="127.0.0.1:$PORT" WEARLINK_DATA_DIR="$data" WEARLINK_DATABASE_URL="$db_url"
  export WEARLINK_MASTER_KEY
  WEARLINK_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
  export WEARLINK_PROVIDER_STRAVA_AUTHORIZE_URL="$STAND_IN/oauth/authorize"
  export WEARLINK_PROVIDER_STRAVA_TOKEN_URL="$STAND_IN/oauth/token"
  export WEARLINK_PROVIDER_STRAVA_API_URL="$STAND_IN/api/v3"
  if [[ -n ${BENCH_RUST_LOG:-} ]]; then export RUST_LOG=$BENCH_RUST_LOG; fi

  log "$backend: seeding"
  created=$("$BIN" project create bench 2>>"$WORK/$backend-cli.log")
  TOKEN=$(sed -E 's/.*"adminToken":"([^"]+)".*/\1/' <<<"$created")
  PROJECT=$(sed -E 's/.*"projectId":"([^"]+)".*/\1/' <<<"$created")
  "${SERVER_PIN[@]}" "$BIN" serve 2>"$WORK/$backend-server.log" &
  SERVER_PID=$!
  for _ in $(seq 200); do curl -sf -o /dev/null "$BASE/readyz" && break; sleep 0.05; done
  curl -sf -o /dev/null "$BASE/readyz" || { log "server did not start"; cat "$WORK/$backend-server.log" >&2; exit 1; }
  PATIENT_IDS=$("$LOAD" seed --url "$BASE" --token "$TOKEN" --patients "$PATIENTS")
  CONNECT_BODY="{\"patientId\":\"${PATIENT_IDS%%,*}\",\"redirectUri\":\"https://app.example/connected\"}"
  printf '{"startup_and_seed_peak_rss_kib": %s}\n' "$(hwm_kib)" >"$RESULTS/$backend-server.json"

  ROUNDS=${BENCH_ROUNDS:-1}
  for round in $(seq "$ROUNDS"); do
    for name in ${BENCH_SCENARIOS:-baseline connect callback webhooks}; do
      scenario "$backend" "$name" "$name"
      if [[ $ROUNDS -gt 1 ]]; then
        mv "$RESULTS/$backend-$name.json" "$WORK/$backend-$name.r$round.json"
        mv "$RESULTS/$backend-$name.server.json" "$WORK/$backend-$name.r$round.server.json"
      fi
    done
  done
  if [[ $ROUNDS -gt 1 ]]; then
    # The median of each figure over the rounds (rps, p50, p99 separately; errors summed).
    python3 - "$WORK" "$RESULTS" "$backend" "$ROUNDS" ${BENCH_SCENARIOS:-baseline connect callback webhooks} <<'PY'
import json, statistics, sys
work, results, backend, rounds, names = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
for name in names:
    runs = [json.load(open(f"{work}/{backend}-{name}.r{r}.json")) for r in range(1, rounds + 1)]
    servers = [json.load(open(f"{work}/{backend}-{name}.r{r}.server.json")) for r in range(1, rounds + 1)]
    median = dict(runs[0])
    for key in ("rps", "p50_ms", "p99_ms", "max_ms", "requests", "seconds"):
        if all(key in r for r in runs):
            median[key] = statistics.median(r[key] for r in runs)
    median["errors"] = sum(r.get("errors", 0) for r in runs)
    median["rounds"] = rounds
    json.dump(median, open(f"{results}/{backend}-{name}.json", "w"))
    server = {k: statistics.median(s[k] for s in servers) for k in servers[0]}
    json.dump(server, open(f"{results}/{backend}-{name}.server.json", "w"))
    json.dump({"rounds": runs, "servers": servers}, open(f"{results}/{backend}-{name}.rounds.json", "w"))
if "baseline" in names and "connect" in names:
    ratios = []
    for r in range(1, rounds + 1):
        b = json.load(open(f"{work}/{backend}-baseline.r{r}.json"))
        c = json.load(open(f"{work}/{backend}-connect.r{r}.json"))
        ratios.append({"rps": c["rps"] / b["rps"], "p99": c["p99_ms"] / b["p99_ms"]})
    summary = {"connect_rps_over_baseline": [round(x["rps"], 3) for x in ratios],
               "connect_p99_over_baseline": [round(x["p99"], 2) for x in ratios],
               "median_rps_ratio": round(statistics.median(x["rps"] for x in ratios), 3),
               "median_p99_ratio": round(statistics.median(x["p99"] for x in ratios), 2)}
    json.dump(summary, open(f"{results}/{backend}-rounds-summary.json", "w"))
    print(f"[bench] {backend} connect / baseline per round: {summary}", file=sys.stderr)
PY
  fi

  stop "$SERVER_PID"
  SERVER_PID=""
  drop_pg_db
  rm -rf "$data"
done

stamp=$(date -u +%Y%m%d-%H%M%S)
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples Cargo.toml || echo "-dirty")
label=${BENCH_LABEL:+-$(tr -c 'A-Za-z0-9.\n' '-' <<<"$BENCH_LABEL")}
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
cat >"$RESULTS/meta.json" <<EOF
{"date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "commit": "$commit${BENCH_LABEL:+ ($BENCH_LABEL)}",
 "machine": "$(nproc) cores, ${cpu:-unknown CPU}, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)",
 "concurrency": $CONCURRENCY, "seconds": $DURATION, "warmup_seconds": $WARMUP, "patients": $PATIENTS,
 "pinning": "$PINNING", "rust_log": "${BENCH_RUST_LOG:-default (info)}",
 "server": "${BENCH_SERVER_BIN:-this commit}", "sqlite_synchronous": "${BENCH_SQLITE_SYNCHRONOUS:-full}",
 "background_busy_cores": $BACKGROUND_BUSY,
 "load_generators": "wrk $(wrk --version 2>&1 | awk 'NR==1 {print $2}') -t2 for baseline and connect; examples/bench_load.rs for callback and webhooks"}
EOF
mkdir -p "$OUT_DIR"
name="$OUT_DIR/$stamp-$commit$label"
"$LOAD" report --dir "$RESULTS" --json "$name.json" --markdown "$name.md"
log "results: $name.md"
cat "$name.md"
