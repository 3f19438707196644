#!/usr/bin/env bash
# Benchmarks Wearlink's outbound event deliveries on this machine (run on purpose; not part of the
# test suite).
#
# For each backend (SQLite in a fresh folder, then PostgreSQL on a fresh database that is dropped
# afterwards), with an instant receiver on 127.0.0.1 (examples/bench_deliveries.rs receiver: 204 to
# every request, counted):
#   seed      a project with Strava enabled, credentials, an admin token and patients, and
#             BENCH_ENDPOINTS endpoints at the receiver; no events yet
#   phase 1   `wearlink serve` with WEARLINK_SYNC_CONCURRENCY=0 and WEARLINK_OUTBOUND_CONCURRENCY=0
#             (no background jobs) and nothing
#             pending: wrk on GET /healthz, then on POST /v1/wearables/strava/connect (each after a
#             warm-up) → the same server's reference figures, and connect alone
#   phase 2   (BENCH_DRAIN=1, the default) BENCH_EVENTS events emitted, then `wearlink serve` with
#             the sync concurrency under test and no other load, until all are delivered (the
#             receiver's count is polled, then the database read once the receiver has them all)
#             → deliveries/s alone
#   phase 3   BENCH_EVENTS more events; the control: `wearlink serve` with no worker, wrk on connect
#             for BENCH_SECONDS from the server's start (so the cold start, the pending rows and the
#             states table are those of the next run); then `wearlink serve` with the worker: wrk
#             on connect for BENCH_SECONDS from the server's start while the script polls until all
#             are delivered → deliveries/s while connect runs, connect's req/s and p99 during the
#             deliveries, and its drop against the control (and against phase 1)
#   Before each connect run the OAuth states the runs before stored are deleted (examples/
#   bench_deliveries.rs clear-states): a table grown by the earlier runs alone made a later run
#   ~10 % slower on PostgreSQL.
# and records deliveries/s, connect's requests/s and p99 alone and during, /healthz requests/s, the
# server's peak RSS (VmHWM, reset once it is ready), its CPU seconds per thread, and on PostgreSQL
# the table statistics of the bench database. Results:
# bench/results/<date>-<commit>-deliveries.{json,md}.
#
# Settings (environment):
#   BENCH_BACKENDS         "sqlite postgres"   which backends
#   BENCH_EVENTS           20000               events emitted per delivery phase
#   BENCH_ENDPOINTS        1                   endpoints (each event is delivered to every one)
#   BENCH_SYNC_CONCURRENCY the service default (8)  WEARLINK_SYNC_CONCURRENCY in phases 2 and 3
#   BENCH_OUTBOUND_CONCURRENCY the service default (32)  WEARLINK_OUTBOUND_CONCURRENCY (the delivery
#                          lane) in phases 2 and 3
#   BENCH_DRAIN            1                   0 skips phase 2
#   BENCH_CONCURRENCY      64                  wrk connections
#   BENCH_SECONDS          10                  measured seconds of each wrk run
#   BENCH_WARMUP           2                   unmeasured seconds before each wrk run of phase 1
#   BENCH_TIMEOUT          300                 cap on each wait for the deliveries, seconds
#   BENCH_PORT             18100               the server's port (127.0.0.1)
#   BENCH_PIN              unset               "SERVER_CPUS LOAD_CPUS" (e.g. "1 0") pins with taskset
#   BENCH_POSTGRES_URL     postgres://postgres@127.0.0.1:5432/test   where the bench database is created
#   BENCH_RUST_LOG         the service default (info: one line per request, to a file)
#   BENCH_OUT              bench/results       where the result files go
#   BENCH_LABEL            unset               a note added to the file names (e.g. "c16")
#   BENCH_DATA_DIR         a temporary folder  where the SQLite database lives (e.g. /dev/shm: no disk I/O)
#   BENCH_NO_BUILD         unset               1: use the release binaries as they are
set -euo pipefail
cd "$(dirname "$0")/.."

BACKENDS=${BENCH_BACKENDS:-"sqlite postgres"}
EVENTS=${BENCH_EVENTS:-20000}
ENDPOINTS=${BENCH_ENDPOINTS:-1}
SYNC_CONCURRENCY=${BENCH_SYNC_CONCURRENCY:-}
OUTBOUND_CONCURRENCY=${BENCH_OUTBOUND_CONCURRENCY:-}
DRAIN=${BENCH_DRAIN:-1}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
DURATION=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-2}
TIMEOUT=${BENCH_TIMEOUT:-300}
PORT=${BENCH_PORT:-18100}
PG_ADMIN_URL=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
OUT_DIR=${BENCH_OUT:-bench/results}
BASE="http://127.0.0.1:$PORT"
EXPECTED=$((EVENTS * ENDPOINTS))

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
  cargo build --release --quiet --bin wearlink --example bench_deliveries
fi
BIN=$TARGET/release/wearlink
HELPER=$TARGET/release/examples/bench_deliveries

SERVER_PIN=() LOAD_PIN=() PINNING="not pinned: server, database, receiver and wrk share all cores"
if [[ -n ${BENCH_PIN:-} ]]; then
  read -r server_cpus load_cpus <<<"$BENCH_PIN"
  SERVER_PIN=(taskset -c "$server_cpus") LOAD_PIN=(taskset -c "$load_cpus")
  PINNING="server pinned to CPU $server_cpus, receiver and wrk to CPU $load_cpus"
fi

WORK=$(mktemp -d)
SERVER_PID="" RECEIVER_PID="" WRK_PID="" PG_DB="" DATA=""
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
  stop "$RECEIVER_PID"
  drop_pg_db
  if [[ -n $DATA ]]; then rm -rf "$DATA"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if curl -s -o /dev/null "$BASE/healthz"; then
  log "something already listens on $BASE; set BENCH_PORT"
  exit 1
fi

# ---- the receiver ----
"${LOAD_PIN[@]}" "$HELPER" receiver --addr-file "$WORK/receiver.addr" &
RECEIVER_PID=$!
for _ in $(seq 100); do [[ -s $WORK/receiver.addr ]] && break; sleep 0.05; done
RECEIVER="http://$(cat "$WORK/receiver.addr")"
received() { curl -sf "$RECEIVER/count" | sed -E 's/.*"received":([0-9]+).*/\1/'; }

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
# The server's CPU seconds (user + system) per thread name, as a JSON object; threads that ended
# (tokio's blocking pool) are not counted.
threads_cpu() {
  local hz t name
  hz=$(getconf CLK_TCK)
  for t in /proc/"$SERVER_PID"/task/*; do
    name=$(cat "$t/comm" 2>/dev/null) || continue
    # Fields after the ")" that closes the name: utime and stime are the 12th and 13th.
    printf '%s\t%s\n' "$name" "$(sed -E 's/.*\) //' "$t/stat" 2>/dev/null | awk '{print $12 + $13}')"
  done | awk -F'\t' -v hz="$hz" '{s[$1] += $2} END {
    printf "{"; n = 0; for (k in s) {printf "%s\"%s\": %.2f", (n++ ? ", " : ""), k, s[k] / hz}; printf "}"}'
}

wrk_run() { # seconds out-file url [method body token]
  BENCH_OUT=$2 BENCH_METHOD=${4:-GET} BENCH_BODY=${5:-} BENCH_TOKEN=${6:-} \
    "${LOAD_PIN[@]}" wrk -t2 -c"$CONCURRENCY" -d"$1s" --timeout 5s -s bench/wrk.lua "$3" >"$2.txt"
}
wrk_healthz() { wrk_run "$1" "$2" "$BASE/healthz"; }
wrk_connect() { wrk_run "$1" "$2" "$BASE/v1/wearables/strava/connect" POST "$CONNECT_BODY" "$TOKEN"; }

start_server() { # log-file [VAR=value ...]
  local log_file=$1
  shift
  env "$@" "${SERVER_PIN[@]}" "$BIN" serve 2>"$log_file" &
  SERVER_PID=$!
  for _ in $(seq 400); do curl -sf -o /dev/null "$BASE/readyz" && break; sleep 0.02; done
  curl -sf -o /dev/null "$BASE/readyz" || { log "server did not start"; tail -20 "$log_file" >&2; exit 1; }
}

# measure backend name runner: warm-up, then measured, with the server's facts beside.
measure_alone() {
  local backend=$1 name=$2 runner=$3
  log "$backend phase 1: $name alone (${WARMUP}s warm-up, ${DURATION}s measured)"
  "$runner" "$WARMUP" "$WORK/warmup.json"
  reset_hwm
  local cpu_before machine_before
  cpu_before=$(cpu_s) machine_before=$(cpu_counters)
  "$runner" "$DURATION" "$RESULTS/$backend-$name.json"
  printf '{"peak_rss_kib": %s, "server_cpu_s": %s, "machine_busy_cores": %s}\n' "$(hwm_kib)" \
    "$(awk -v a="$cpu_before" -v b="$(cpu_s)" 'BEGIN {printf "%.2f", b - a}')" \
    "$(busy_cores "$machine_before" "$(cpu_counters)")" >"$RESULTS/$backend-$name.server.json"
  sed 's/^/[bench]   /' "$RESULTS/$backend-$name.json" >&2
}

emit_events() { # backend phase: emits BENCH_EVENTS events; sets EMITTED_MS (before the first)
  EMITTED_MS=$(now_ms)
  log "$1 $2: emitting $EVENTS events ($EXPECTED deliveries)"
  "$HELPER" emit --project "$PROJECT" --events "$EVENTS" 2>>"$WORK/$1-helper.log" | sed 's/^/[bench]   emitted: /' >&2
}

# Extra facts merged into a progress JSON: peak RSS, CPU, busy cores, per-thread CPU, the receiver.
finish_progress() { # progress-file out-file machine-before received-before [extra JSON fields]
  local cpu_end machine_end hwm_end threads got
  cpu_end=$(cpu_s) machine_end=$(cpu_counters) hwm_end=$(hwm_kib) threads=$(threads_cpu)
  got=$(($(received) - $4))
  sed -E "s/\}$/, \"peak_rss_kib\": $hwm_end, \"server_cpu_s\": $cpu_end, \"machine_busy_cores\": $(busy_cores "$3" "$machine_end"), \"receiver_requests\": $got, \"threads_cpu_s\": $threads, \"sync_concurrency\": \"${SYNC_CONCURRENCY:-default}\"${5:-}}/" \
    "$1" >"$2"
}

warnings_of() { # log-file
  local warnings
  warnings=$(grep -c ' WARN ' "$1" || true)
  if [[ $warnings -gt 0 ]]; then
    log "  $warnings warnings in the server's log, the first:"
    grep -m 3 ' WARN ' "$1" | cut -c1-300 >&2
  fi
}

sync_env=()
if [[ -n $SYNC_CONCURRENCY ]]; then sync_env=(WEARLINK_SYNC_CONCURRENCY="$SYNC_CONCURRENCY"); fi
if [[ -n $OUTBOUND_CONCURRENCY ]]; then sync_env+=(WEARLINK_OUTBOUND_CONCURRENCY="$OUTBOUND_CONCURRENCY"); fi

for backend in $BACKENDS; do
  DATA="${BENCH_DATA_DIR:-$WORK}/deliveries-$backend-$$"
  mkdir -p "$DATA"
  case $backend in
    sqlite) db_url="sqlite://$DATA/wearlink.db" ;;
    postgres)
      PG_DB="wearlink_deliveries_bench_$$"
      psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE $PG_DB" >/dev/null
      db_url="${PG_ADMIN_URL%/*}/$PG_DB"
      ;;
    *) log "unknown backend $backend"; exit 1 ;;
  esac
  export WEARLINK_BIND="127.0.0.1:$PORT" WEARLINK_DATA_DIR="$DATA" WEARLINK_DATABASE_URL="$db_url"
  export WEARLINK_MASTER_KEY WEARLINK_ALLOW_LOOPBACK_TARGETS=1
  WEARLINK_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
  # Connect only builds the authorization URL: nothing is called at these addresses.
  export WEARLINK_PROVIDER_STRAVA_AUTHORIZE_URL="http://127.0.0.1:9/oauth/authorize"
  export WEARLINK_PROVIDER_STRAVA_TOKEN_URL="http://127.0.0.1:9/oauth/token"
  export WEARLINK_PROVIDER_STRAVA_API_URL="http://127.0.0.1:9/api/v3"
  if [[ -n ${BENCH_RUST_LOG:-} ]]; then export RUST_LOG=$BENCH_RUST_LOG; fi

  log "$backend: seeding a project and $ENDPOINTS endpoint(s) at $RECEIVER"
  seeded=$("$HELPER" seed --receiver "$RECEIVER" --endpoints "$ENDPOINTS" --events 0 2>>"$WORK/$backend-helper.log")
  TOKEN=$(sed -E 's/.*"adminToken":"([^"]+)".*/\1/' <<<"$seeded")
  PROJECT=$(sed -E 's/.*"projectId":"([^"]+)".*/\1/' <<<"$seeded")
  FIRST_PATIENT=$(sed -E 's/.*"firstPatientId":"([^"]+)".*/\1/' <<<"$seeded")
  CONNECT_BODY="{\"patientId\":\"$FIRST_PATIENT\",\"redirectUri\":\"https://app.example/connected\"}"

  # Phase 1: the reference figures, nothing pending and no background jobs.
  start_server "$WORK/$backend-alone-server.log" WEARLINK_SYNC_CONCURRENCY=0 WEARLINK_OUTBOUND_CONCURRENCY=0
  measure_alone "$backend" healthz wrk_healthz
  "$HELPER" clear-states
  measure_alone "$backend" alone wrk_connect
  stop "$SERVER_PID"
  SERVER_PID=""

  # Phase 2: the deliveries with no other load.
  if [[ $DRAIN == 1 ]]; then
    emit_events "$backend" "phase 2"
    log "$backend phase 2: delivering $EXPECTED with no other load"
    received_before=$(received) machine_before=$(cpu_counters) started_ms=$(now_ms)
    start_server "$WORK/$backend-drain-server.log" "${sync_env[@]}"
    reset_hwm
    "$HELPER" progress --project "$PROJECT" --after-ms "$EMITTED_MS" --expect "$EXPECTED" --timeout-s "$TIMEOUT" \
      --receiver "$RECEIVER" --received-before "$received_before" --since-ms "$started_ms" \
      >"$WORK/$backend-drain-progress.json"
    finish_progress "$WORK/$backend-drain-progress.json" "$RESULTS/$backend-drain.json" "$machine_before" "$received_before"
    sed 's/^/[bench]   /' "$RESULTS/$backend-drain.json" >&2
    warnings_of "$WORK/$backend-drain-server.log"
    stop "$SERVER_PID"
    SERVER_PID=""
  fi

  # Phase 3: the deliveries, with connect at the same time for its first BENCH_SECONDS; first the
  # control: the same events pending, the same cold start and the same states table, no worker.
  emit_events "$backend" "phase 3"
  log "$backend phase 3 control: connect for ${DURATION}s from the server's start, $EXPECTED pending, no worker"
  "$HELPER" clear-states
  start_server "$WORK/$backend-control-server.log" WEARLINK_SYNC_CONCURRENCY=0 WEARLINK_OUTBOUND_CONCURRENCY=0
  wrk_connect "$DURATION" "$RESULTS/$backend-control.json"
  sed 's/^/[bench]   /' "$RESULTS/$backend-control.json" >&2
  stop "$SERVER_PID"
  SERVER_PID=""
  "$HELPER" clear-states
  log "$backend phase 3: delivering $EXPECTED, connect for the first ${DURATION}s"
  received_before=$(received) machine_before=$(cpu_counters) started_ms=$(now_ms)
  start_server "$WORK/$backend-during-server.log" "${sync_env[@]}"
  reset_hwm
  wrk_started_ms=$(now_ms)
  wrk_connect "$DURATION" "$RESULTS/$backend-during.json" &
  WRK_PID=$!
  "$HELPER" progress --project "$PROJECT" --after-ms "$EMITTED_MS" --expect "$EXPECTED" --timeout-s "$TIMEOUT" \
    --receiver "$RECEIVER" --received-before "$received_before" --since-ms "$started_ms" \
    --window-start-ms "$wrk_started_ms" --window-s "$DURATION" \
    >"$WORK/$backend-during-progress.json"
  table_stats=""
  if [[ $backend == postgres ]]; then
    # Which tables were scanned how (a sequential scan per claim shows up here).
    table_stats=$(psql -qAt "$db_url" -c "SELECT COALESCE(json_object_agg(relname, json_build_object(
        'seq_scan', seq_scan, 'seq_tup_read', seq_tup_read, 'idx_scan', idx_scan, 'idx_tup_fetch', idx_tup_fetch,
        'n_tup_ins', n_tup_ins, 'n_tup_upd', n_tup_upd, 'n_tup_del', n_tup_del)), '{}')
      FROM pg_stat_user_tables WHERE relname IN ('jobs', 'webhook_deliveries', 'outbound_events', 'webhook_endpoints', 'oauth_states')" \
      | tr -d '\n' || echo '{}')
    table_stats=", \"pg_table_stats\": $table_stats"
  fi
  finish_progress "$WORK/$backend-during-progress.json" "$RESULTS/$backend-deliveries.json" "$machine_before" \
    "$received_before" "$table_stats"
  wait "$WRK_PID"
  WRK_PID=""
  sed 's/^/[bench]   /' "$RESULTS/$backend-during.json" "$RESULTS/$backend-deliveries.json" >&2
  warnings_of "$WORK/$backend-during-server.log"
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
 "events": $EVENTS, "endpoints": $ENDPOINTS, "sync_concurrency": "${SYNC_CONCURRENCY:-default (8)}",
 "outbound_concurrency": "${OUTBOUND_CONCURRENCY:-default (32)}", "busy_rate": "${WEARLINK_SYNC_BUSY_RATE:-default (25)}/s",
 "concurrency": $CONCURRENCY, "seconds": $DURATION, "warmup_seconds": $WARMUP, "timeout_s": $TIMEOUT,
 "data_dir": "${BENCH_DATA_DIR:-temporary folder}",
 "pinning": "$PINNING", "rust_log": "${BENCH_RUST_LOG:-default (info)}",
 "background_busy_cores": $BACKGROUND_BUSY,
 "load_generators": "wrk $(wrk --version 2>&1 | awk 'NR==1 {print $2}') -t2 with bench/wrk.lua; examples/bench_deliveries.rs receiver"}
EOF
mkdir -p "$OUT_DIR"
name="$OUT_DIR/$stamp-$commit-deliveries$label"
"$HELPER" report --dir "$RESULTS" --json "$name.json" --markdown "$name.md"
log "results: $name.md"
cat "$name.md"
