#!/usr/bin/env bash
# Benchmarks writing into a project's own FHIR server (issue 20) on this machine (run on purpose;
# not part of the test suite): resources/s the FHIR outbox writes into the FHIR partner
# (tests/fhir-partner: Medplum's engine and validator, over HTTP on 127.0.0.1) with one
# conditional PUT per resource (bundle size 1) against transaction Bundles (8: Medplum's cap with
# conditional entries; larger sizes as the partner without FHIR_MEDPLUM_CAPS allows), in one run
# (examples/bench_fhir_server.rs), each measurement against a fresh partner. One drain job per
# project sends one request at a time: never more than one open transaction per project, by
# construction (the job's unique key; each Bundle's answer is awaited before the next is sent).
#
# Settings (environment):
#   BENCH_RESOURCES   400        Observations written per bundle size
#   BENCH_SIZES       1,8,50     bundle sizes
#   BENCH_RTTS        "0 20 50"  round-trip times (ms) added by a TCP relay in front of the partner:
#                                0 is loopback; 20 and 50 a server across a network. Each (RTT,
#                                size) gets a fresh partner
#   BENCH_PORT        18300      the partner's port
#   BENCH_PROFILE     release    cargo profile of the example (release or dev)
#   BENCH_OUT         bench/results
set -euo pipefail
cd "$(dirname "$0")/.."

RESOURCES=${BENCH_RESOURCES:-400}
SIZES=${BENCH_SIZES:-1,8,50}
RTTS=${BENCH_RTTS:-"0 20 50"}
PORT=${BENCH_PORT:-18300}
PROFILE=${BENCH_PROFILE:-release}
OUT=${BENCH_OUT:-bench/results}
TOKEN=bench-platform-token
stamp="$(date -u +%Y%m%d-%H%M%S)-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples || echo -dirty)"

if [ "$PROFILE" = release ]; then flag=--release; dir=release; else flag=; dir=debug; fi
cargo build $flag --example bench_fhir_server
bin="target/$dir/examples/bench_fhir_server"

partner=tests/fhir-partner
[ -x "$partner/node_modules/.bin/node" ] || { echo "run (cd $partner && npm ci) first" >&2; exit 1; }
partner_pid=
trap '[ -n "$partner_pid" ] && kill $partner_pid 2>/dev/null || true' EXIT
# A fresh partner (empty, in memory) for each measurement: its conditional searches scan what it
# holds, so a partner that kept the resources of the runs before would slow the later ones.
start_partner() {
  ( cd "$partner" && PORT=$PORT HOST=127.0.0.1 FHIR_AUTH=bearer FHIR_BEARER_TOKEN=$TOKEN \
      exec node_modules/.bin/node server.mjs >"/tmp/fhir-partner-$PORT.log" 2>&1 ) &
  partner_pid=$!
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$PORT/fhir/R4/metadata" >/dev/null && return 0
    kill -0 $partner_pid 2>/dev/null || { echo "the partner did not start: $(cat /tmp/fhir-partner-$PORT.log)" >&2; exit 1; }
    sleep 0.2
  done
  echo "the partner did not answer" >&2; exit 1
}

mkdir -p "$OUT"
results=$(mktemp)
for rtt in $RTTS; do
  for size in ${SIZES//,/ }; do
    start_partner
    "$bin" --base "http://127.0.0.1:$PORT/fhir/R4" --token "$TOKEN" --resources "$RESOURCES" --sizes "$size" \
      --rtt-ms "$rtt" >>"$results"
    kill $partner_pid; wait $partner_pid 2>/dev/null || true
    partner_pid=
  done
done
lines=$(cat "$results")
echo "$lines"
json="$OUT/$stamp-fhir-server.json"
md="$OUT/$stamp-fhir-server.md"
{
  echo "{\"machine\": \"$(nproc) cores, $(uname -sr)\", \"profile\": \"$PROFILE\", \"runs\": ["
  echo "$lines" | paste -sd, -
  echo "]}"
} >"$json"
{
  echo "# FHIR outbox into the FHIR partner ($stamp, $PROFILE build, $(nproc) cores)"
  echo
  echo "| RTT ms | bundle size | resources | seconds | resources/s | × one-by-one (same RTT) | write requests | transactions |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "$lines" | while read -r l; do
    rttv=$(echo "$l" | sed -E 's/.*"rttMs":([0-9]+).*/\1/')
    one=$(echo "$lines" | grep "\"rttMs\":$rttv," | grep '"bundleSize":1,' | head -1 | sed -E 's/.*"resourcesPerSecond":([0-9.]+).*/\1/')
    size=$(echo "$l" | sed -E 's/.*"bundleSize":([0-9]+).*/\1/')
    res=$(echo "$l" | sed -E 's/.*"resources":([0-9]+).*/\1/')
    secs=$(echo "$l" | sed -E 's/.*"seconds":([0-9.]+).*/\1/')
    rate=$(echo "$l" | sed -E 's/.*"resourcesPerSecond":([0-9.]+).*/\1/')
    writes=$(echo "$l" | sed -E 's/.*"writeRequests":([0-9]+).*/\1/')
    tx=$(echo "$l" | sed -E 's/.*"transactions":([0-9]+).*/\1/')
    echo "| $rttv | $size | $res | $secs | $rate | $(awk "BEGIN{printf \"%.1f\", $rate/${one:-$rate}}") | $writes | $tx |"
  done
} >"$md"
cat "$md"
