#!/usr/bin/env bash
# The container image's stories (issue 21), with Podman:
#  1. a local runtime base (deploy/runtime-base.sh: no registry is reachable from CI) and the
#     image built from the Containerfile on it, its runtime stage exactly as users get it; the
#     binary is the one the tests ran (BINARY=prebuilt), since compiling it again inside the
#     builder stage would cost CI a release build;
#  2. deploy/image_stories.py: SQLite on a volume (ready, `wearlink project create` through
#     `podman exec`, a patient connected and kept across a restart), a read-only root and a
#     non-root process, SIGTERM in a flood of webhooks (stopped within 10 s, no acknowledged
#     event lost), two containers serving one project on PostgreSQL.
# Without a working podman it says so and skips, unless WEARLINK_TEST_REQUIRE_PODMAN=1 (CI).
#
#   deploy/test-image.sh [binary]     (default target/debug/wearlink, built by `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/debug/wearlink}

# This machine's podman: runc (crun refuses its hybrid cgroups), cgroupfs, and ulimits no higher
# than the current ones (raising them is not permitted; runc is refused even the current nproc).
export PODMAN="podman --runtime /usr/sbin/runc --cgroup-manager cgroupfs"
nproc_limit=$(ulimit -Hu)
if [ "$nproc_limit" = unlimited ] || [ "$nproc_limit" -gt 4096 ]; then
  nproc_limit=4096
fi
export PODMAN_RUN="--ulimit nofile=$(ulimit -Sn):$(ulimit -Hn) --ulimit nproc=$nproc_limit:$nproc_limit"

skip() {
  if [ "${WEARLINK_TEST_REQUIRE_PODMAN:-}" = 1 ]; then
    echo "test-image: $1, and WEARLINK_TEST_REQUIRE_PODMAN=1 requires the image stories" >&2
    exit 1
  fi
  echo "################################################################" >&2
  echo "test-image: SKIPPED, $1 (apt-get install podman runc)" >&2
  echo "################################################################" >&2
  exit 0
}
command -v podman >/dev/null && [ -x /usr/sbin/runc ] || skip "podman or runc is not installed"
$PODMAN info >/dev/null 2>&1 || skip "podman cannot run here"
[ -x "$binary" ] || { echo "test-image: no binary at $binary (cargo build first)" >&2; exit 1; }

started=$(date +%s)
base=localhost/wearlink-runtime-base:test
image=localhost/wearlink:test
# The previous run's images go first, so that runs leave no untagged images behind.
$PODMAN rmi -f "$image" "$base" >/dev/null 2>&1 || true
deploy/runtime-base.sh "$base" >/dev/null
# The binary without its debug info, as the build stage makes it, with the empty data/ folder
# the runtime stage copies as /data.
rm -rf target/prebuilt && mkdir -p target/prebuilt/data
strip --strip-debug -o target/prebuilt/wearlink "$binary"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
$PODMAN build --quiet --build-arg RUNTIME_IMAGE="$base" --build-arg BINARY=prebuilt \
  --build-arg VERSION="$version" -t "$image" . >/dev/null
# The labels and defaults operators rely on.
labels=$($PODMAN image inspect "$image" --format '{{index .Labels "org.opencontainers.image.version"}} {{.Config.Entrypoint}} {{.Config.Cmd}} {{.Config.User}}')
[ "$labels" = "$version [wearlink] [serve] 65532:65532" ] || { echo "test-image: unexpected image config: $labels" >&2; exit 1; }
$PODMAN image inspect "$image" --format '{{.Config.Env}}' | grep -q 'WEARLINK_BIND=0.0.0.0:8080' \
  || { echo "test-image: the image does not bind 0.0.0.0:8080 by default" >&2; exit 1; }
echo "test-image: built $image on $base in $(( $(date +%s) - started )) s"

IMAGE=$image python3 deploy/image_stories.py
echo "test-image: done in $(( $(date +%s) - started )) s"
