#!/usr/bin/env bash
# Benchmarks Wearlink's data sync on this machine (run on purpose; not part of the test suite).
#
# For each backend (SQLite in a fresh folder, then PostgreSQL on a fresh database that is dropped
# afterwards), against an instantly answering Strava stand-in (examples/bench_sync.rs stand-in:
# token endpoint, activity list and detail, no rate-limit headers):
#   seed      a project with Strava enabled, credentials, an admin token and N patients
#   phase 1   `wearlink serve` with no worker (WEARLINK_SYNC_CONCURRENCY=0 and
#             WEARLINK_OUTBOUND_CONCURRENCY=0) and no connection yet (nothing to sync): wrk on
#             POST /v1/wearables/strava/connect (warm-up, then measured) → connect alone
#   connect   the N patients get Strava connections (patient i = athlete i) → N backfill jobs queued
#   phase 2   `wearlink serve` with the sync concurrency under test: the backfill starts at once;
#             wrk on connect for BENCH_SECONDS from the server's start, then (Strava) webhook
#             deliveries for BENCH_SECONDS (examples/bench_load.rs webhooks --unknown-athlete: events
#             of an athlete without a connection, every 10th a retry: acknowledged and stored
#             `ignored`, so they add no sync work beside the backfill's), while the script polls until all N × activities are
#             synced (or BENCH_SYNC_TIMEOUT); the activities synced by the end of that load are
#             recorded (the backfill's speed under load)
#   phase 3   (Strava) on the same server once the backfill is done: webhook deliveries alone
# and records activities/s and FHIR resources/s (from the server's start to the last backfill job's
# end), the server's peak RSS (VmHWM, reset once it is ready), connect's requests/s and p99 alone and
# during the backfill. Results: bench/results/<date>-<commit>-sync.{json,md}.
#
# Settings (environment):
#   BENCH_BACKENDS         "sqlite postgres"   which backends
#   BENCH_PATIENTS         1000                connected patients (one backfill job each)
#   BENCH_ACTIVITIES       30                  activities per athlete at the stand-in (≤ 1000)
#   BENCH_SYNC_CONCURRENCY the service default (8)  WEARLINK_SYNC_CONCURRENCY in phase 2
#   BENCH_CONCURRENCY      64                  wrk connections on connect
#   BENCH_SECONDS          10                  measured seconds of connect, in each phase
#   BENCH_WARMUP           2                   unmeasured seconds before connect alone
#   BENCH_SYNC_TIMEOUT     300                 cap on the backfill's wait, seconds
#   BENCH_PORT             18090               the server's port (127.0.0.1)
#   BENCH_PIN              unset               "SERVER_CPUS LOAD_CPUS" (e.g. "1 0") pins with taskset
#   BENCH_POSTGRES_URL     postgres://postgres@127.0.0.1:5432/test   where the bench database is created
#   BENCH_RUST_LOG         the service default (info: one line per request, to a file)
#   BENCH_OUT              bench/results       where the result files go
#   BENCH_LABEL            unset               a note added to the file names (e.g. "c16")
#   BENCH_DATA_DIR         a temporary folder  where the SQLite database lives (e.g. /dev/shm: no disk I/O)
#   BENCH_NO_BUILD         unset               1: use the release binaries as they are
#   BENCH_PROVIDER         strava              dexcom: the Dexcom stand-in (an EGV every 5 minutes for
#                                              BENCH_DAYS days per user; "activities" are then readings)
#   BENCH_DAYS             30                  Dexcom: days of readings per user (288 a day)
#   BENCH_DURING           "connect webhooks"  the load during the backfill, in this order ("connect",
#                                              "webhooks": Strava only); "": the backfill alone
set -euo pipefail
cd "$(dirname "$0")/.."

BACKENDS=${BENCH_BACKENDS:-"sqlite postgres"}
PATIENTS=${BENCH_PATIENTS:-1000}
ACTIVITIES=${BENCH_ACTIVITIES:-30}
SYNC_CONCURRENCY=${BENCH_SYNC_CONCURRENCY:-}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
DURATION=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-2}
SYNC_TIMEOUT=${BENCH_SYNC_TIMEOUT:-300}
PORT=${BENCH_PORT:-18090}
PG_ADMIN_URL=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
OUT_DIR=${BENCH_OUT:-bench/results}
BASE="http://127.0.0.1:$PORT"
PROVIDER=${BENCH_PROVIDER:-strava}
DAYS=${BENCH_DAYS:-30}
EXPECTED=$((PATIENTS * ACTIVITIES))
DURING=${BENCH_DURING-connect webhooks}
if [[ ${BENCH_PROVIDER:-strava} != strava ]]; then DURING=${DURING//webhooks/}; fi
if [[ $PROVIDER == dexcom ]]; then EXPECTED=$((PATIENTS * DAYS * 288)); fi

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
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
  log "building (release; CARGO_BUILD_JOBS limits the jobs)"
  cargo build --release --quiet --bin wearlink --example bench_sync --example bench_load
fi
BIN=$TARGET/release/wearlink
HELPER=$TARGET/release/examples/bench_sync
LOAD=$TARGET/release/examples/bench_load

SERVER_PIN=() LOAD_PIN=() PINNING="not pinned: server, database, stand-in and wrk share all cores"
if [[ -n ${BENCH_PIN:-} ]]; then
  read -r server_cpus load_cpus <<<"$BENCH_PIN"
  SERVER_PIN=(taskset -c "$server_cpus") LOAD_PIN=(taskset -c "$load_cpus")
  PINNING="server pinned to CPU $server_cpus, stand-in and wrk to CPU $load_cpus"
fi

WORK=$(mktemp -d)
SERVER_PID="" STAND_IN_PID="" WRK_PID="" PG_DB="" DATA=""
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
  stop "$WRK_PID"
  stop "$SERVER_PID"
  stop "$STAND_IN_PID"
  drop_pg_db
  if [[ -n $DATA ]]; then rm -rf "$DATA"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if curl -s -o /dev/null "$BASE/healthz"; then
  log "something already listens on $BASE; set BENCH_PORT"
  exit 1
fi

# ---- the stand-in ----
"${LOAD_PIN[@]}" "$HELPER" stand-in --addr-file "$WORK/stand-in.addr" --activities "$ACTIVITIES" \
  --provider "$PROVIDER" --days "$DAYS" &
STAND_IN_PID=$!
for _ in $(seq 100); do [[ -s $WORK/stand-in.addr ]] && break; sleep 0.05; done
STAND_IN="http://$(cat "$WORK/stand-in.addr")"

RESULTS="$WORK/results"
mkdir -p "$RESULTS"

# Machine CPU counters: "busy total" jiffies; busy_cores A B gives the cores kept busy between.
cpu_counters() { awk '/^cpu / {idle = $5 + $6; total = 0; for (i = 2; i <= 9; i++) total += $i; print total - idle, total}' /proc/stat; }
busy_cores() {
  awk -v a="$1" -v b="$2" -v n="$(nproc)" 'BEGIN {split(a, x, " "); split(b, y, " "); t = y[2] - x[2];
    printf "%.2f", (t > 0 ? (y[1] - x[1]) / t * n : 0)}'
}
before=$(cpu_counters); sleep 3; BACKGROUND_BUSY=$(busy_cores "$before" "$(cpu_counters)")
log "background load before the run: $BACKGROUND_BUSY of $(nproc) cores busy"

hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status"; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$SERVER_PID/stat"; }
reset_hwm() { echo 5 >"/proc/$SERVER_PID/clear_refs" 2>/dev/null || log "cannot reset VmHWM: peaks are cumulative"; }
now_ms() { date +%s%3N; }

wrk_connect() { # seconds out-file
  BENCH_OUT=$2 BENCH_METHOD=POST BENCH_BODY=$CONNECT_BODY BENCH_TOKEN=$TOKEN \
    "${LOAD_PIN[@]}" wrk -t2 -c"$CONCURRENCY" -d"$1s" --timeout 5s -s bench/wrk.lua \
    "$BASE/v1/wearables/$PROVIDER/connect" >"$2.txt"
}

webhooks_run() { # seconds out-file
  "${LOAD_PIN[@]}" "$LOAD" webhooks --url "$BASE" --token "$TOKEN" --project "$PROJECT" --database-url "$db_url" \
    --concurrency "$CONCURRENCY" --seconds "$1" --unknown-athlete >"$2"
}

start_server() { # log-file [VAR=value ...]
  local log_file=$1
  shift
  env "$@" "${SERVER_PIN[@]}" "$BIN" serve 2>"$log_file" &
  SERVER_PID=$!
  for _ in $(seq 400); do curl -sf -o /dev/null "$BASE/readyz" && break; sleep 0.02; done
  curl -sf -o /dev/null "$BASE/readyz" || { log "server did not start"; tail -20 "$log_file" >&2; exit 1; }
}

for backend in $BACKENDS; do
  DATA="${BENCH_DATA_DIR:-$WORK}/sync-$backend-$$"
  mkdir -p "$DATA"
  case $backend in
    sqlite) db_url="sqlite://$DATA/wearlink.db" ;;
    postgres)
      PG_DB="wearlink_sync_bench_$$"
      psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE $PG_DB" >/dev/null
      db_url="${PG_ADMIN_URL%/*}/$PG_DB"
      ;;
    *) log "unknown backend $backend"; exit 1 ;;
  esac
  export WEARLINK_BIND="127.0.0.1:$PORT" WEARLINK_DATA_DIR="$DATA" WEARLINK_DATABASE_URL="$db_url"
  export WEARLINK_MASTER_KEY
  WEARLINK_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
  export WEARLINK_PROVIDER_STRAVA_AUTHORIZE_URL="$STAND_IN/oauth/authorize"
  export WEARLINK_PROVIDER_STRAVA_TOKEN_URL="$STAND_IN/oauth/token"
  export WEARLINK_PROVIDER_STRAVA_API_URL="$STAND_IN/api/v3"
  export WEARLINK_PROVIDER_STRAVA_REVOKE_URL="$STAND_IN/oauth/deauthorize"
  export WEARLINK_PROVIDER_DEXCOM_REGION_US_URL="$STAND_IN/us"
  if [[ -n ${BENCH_RUST_LOG:-} ]]; then export RUST_LOG=$BENCH_RUST_LOG; fi

  log "$backend: seeding a project and $PATIENTS patients"
  seeded=$("$HELPER" seed --patients "$PATIENTS" --patients-file "$WORK/patients.txt" --provider "$PROVIDER" \
    2>>"$WORK/$backend-helper.log")
  TOKEN=$(sed -E 's/.*"adminToken":"([^"]+)".*/\1/' <<<"$seeded")
  PROJECT=$(sed -E 's/.*"projectId":"([^"]+)".*/\1/' <<<"$seeded")
  FIRST_PATIENT=$(sed -E 's/.*"firstPatientId":"([^"]+)".*/\1/' <<<"$seeded")
  CONNECT_BODY="{\"patientId\":\"$FIRST_PATIENT\",\"redirectUri\":\"https://app.example/connected\"}"

  # Phase 1: connect alone, no worker (and no connection yet: nothing to sync in any case).
  log "$backend phase 1: connect alone (${WARMUP}s warm-up, ${DURATION}s measured)"
  start_server "$WORK/$backend-alone-server.log" WEARLINK_SYNC_CONCURRENCY=0 WEARLINK_OUTBOUND_CONCURRENCY=0
  wrk_connect "$WARMUP" "$WORK/warmup.json"
  reset_hwm
  cpu_before=$(cpu_s) machine_before=$(cpu_counters)
  wrk_connect "$DURATION" "$RESULTS/$backend-alone.json"
  printf '{"peak_rss_kib": %s, "server_cpu_s": %s, "machine_busy_cores": %s}\n' "$(hwm_kib)" \
    "$(awk -v a="$cpu_before" -v b="$(cpu_s)" 'BEGIN {printf "%.2f", b - a}')" \
    "$(busy_cores "$machine_before" "$(cpu_counters)")" >"$RESULTS/$backend-alone.server.json"
  sed 's/^/[bench]   /' "$RESULTS/$backend-alone.json" >&2
  stop "$SERVER_PID"
  SERVER_PID=""

  log "$backend: connecting $PATIENTS patients (one backfill job each)"
  "$HELPER" connect-patients --project "$PROJECT" --patients-file "$WORK/patients.txt" --provider "$PROVIDER" \
    2>>"$WORK/$backend-helper.log"
  calls_before=0
  if [[ $PROVIDER == dexcom ]]; then calls_before=$(curl -s "$STAND_IN/calls" | sed -E 's/[^0-9]//g'); fi
  queued=$("$HELPER" progress --project "$PROJECT" 2>>"$WORK/$backend-helper.log")
  log "  before phase 2: $queued"

  # Phase 2: the backfill, with connect at the same time for its first BENCH_SECONDS.
  log "$backend phase 2: backfill of $PATIENTS × $ACTIVITIES activities, connect for the first ${DURATION}s"
  sync_env=()
  if [[ -n $SYNC_CONCURRENCY ]]; then sync_env=(WEARLINK_SYNC_CONCURRENCY="$SYNC_CONCURRENCY"); fi
  machine_before=$(cpu_counters)
  started_ms=$(now_ms)
  start_server "$WORK/$backend-sync-server.log" "${sync_env[@]}"
  reset_hwm
  (
    for load in $DURING; do
      case $load in
        connect) wrk_connect "$DURATION" "$RESULTS/$backend-during.json" ;;
        webhooks) webhooks_run "$DURATION" "$RESULTS/$backend-webhooks-during.json" ;;
      esac
    done
    # How far the backfill got under the load (activities synced when it ended).
    if [[ -n ${DURING// /} ]]; then
      "$HELPER" progress --project "$PROJECT" 2>/dev/null \
        | sed -E "s/\}$/, \"at_ms\": $(( $(now_ms) - started_ms ))}/" >"$RESULTS/$backend-under-load.json"
    fi
  ) &
  WRK_PID=$!
  "$HELPER" progress --project "$PROJECT" --expect "$EXPECTED" --timeout-s "$SYNC_TIMEOUT" \
    --since-ms "$started_ms" >"$WORK/$backend-progress.json"
  cpu_end=$(cpu_s) machine_end=$(cpu_counters) hwm_end=$(hwm_kib)
  # The provider calls the backfill made (the Dexcom stand-in counts them; Strava's does not).
  calls=null
  if [[ $PROVIDER == dexcom ]]; then
    calls=$(( $(curl -s "$STAND_IN/calls" | sed -E 's/[^0-9]//g') - calls_before ))
  fi
  # Whether wrk had finished before the backfill did (else part of "during" ran without it).
  outlasted=true
  if kill -0 "$WRK_PID" 2>/dev/null; then outlasted=false; fi
  wait "$WRK_PID"
  WRK_PID=""
  if [[ $DURING == *webhooks* ]]; then
    # Phase 3: the webhook deliveries again once the backfill is done, on the same server.
    log "$backend phase 3: webhook deliveries alone (${DURATION}s)"
    sleep 2
    webhooks_run "$DURATION" "$RESULTS/$backend-webhooks-alone.json"
    sed 's/^/[bench]   /' "$RESULTS/$backend-webhooks-alone.json" >&2
  fi
  sed -E "s/\}$/, \"peak_rss_kib\": $hwm_end, \"server_cpu_s\": $cpu_end, \"machine_busy_cores\": $(busy_cores "$machine_before" "$machine_end"), \"backfill_outlasted_wrk\": $outlasted, \"provider_calls\": $calls, \"sync_concurrency\": \"${SYNC_CONCURRENCY:-default}\"}/" \
    "$WORK/$backend-progress.json" >"$RESULTS/$backend-sync.json"
  for shown in "$RESULTS/$backend-during.json" "$RESULTS/$backend-webhooks-during.json" "$RESULTS/$backend-sync.json"; do
    if [[ -f $shown ]]; then sed 's/^/[bench]   /' "$shown" >&2; fi
  done
  warnings=$(grep -c ' WARN ' "$WORK/$backend-sync-server.log" || true)
  if [[ $warnings -gt 0 ]]; then
    log "  $warnings warnings in the server's log, the first:"
    grep -m 3 ' WARN ' "$WORK/$backend-sync-server.log" | cut -c1-300 >&2
  fi
  stop "$SERVER_PID"
  SERVER_PID=""
  drop_pg_db
  rm -rf "$DATA"
  DATA=""
done

stamp=$(date -u +%Y%m%d-%H%M%S)
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples Cargo.toml || echo "-dirty")
label=${BENCH_LABEL:+-$(tr -c 'A-Za-z0-9.\n' '-' <<<"$BENCH_LABEL")}
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
cat >"$RESULTS/meta.json" <<EOF
{"date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "commit": "$commit${BENCH_LABEL:+ ($BENCH_LABEL)}",
 "machine": "$(nproc) cores, ${cpu:-unknown CPU}, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)",
 "patients": $PATIENTS, "activities": $ACTIVITIES, "sync_concurrency": "${SYNC_CONCURRENCY:-default (8)}",
 "concurrency": $CONCURRENCY, "seconds": $DURATION, "warmup_seconds": $WARMUP, "sync_timeout_s": $SYNC_TIMEOUT,
 "data_dir": "${BENCH_DATA_DIR:-temporary folder}",
 "pinning": "$PINNING", "rust_log": "${BENCH_RUST_LOG:-default (info)}",
 "background_busy_cores": $BACKGROUND_BUSY,
 "load_generators": "wrk $(wrk --version 2>&1 | awk 'NR==1 {print $2}') -t2 with bench/wrk.lua; examples/bench_sync.rs stand-in"}
EOF
mkdir -p "$OUT_DIR"
name="$OUT_DIR/$stamp-$commit-sync$label"
"$HELPER" report --dir "$RESULTS" --json "$name.json" --markdown "$name.md"
log "results: $name.md"
cat "$name.md"
