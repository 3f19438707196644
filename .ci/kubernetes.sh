#!/usr/bin/env bash
# The Kubernetes manifests (deploy/kubernetes/): each overlay rendered with `kubectl kustomize`
# (and the PostgreSQL one with the optional ServiceMonitor), validated with kubernetes-validate
# (pinned, in a virtualenv) in strict mode against the schemas of every Kubernetes minor still
# supported upstream (the three newest: KUBERNETES_VERSIONS), and checked for drift from the
# configuration the binary reads (deploy/kubernetes/check.py).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSIONS=${KUBERNETES_VERSIONS:-"1.35.0 1.36.0 1.37.0"}
VENV=${KV_VENV:-.ci/.venv-kubernetes}

if [ ! -x "$VENV/bin/kubernetes-validate" ] ||
  [ "$("$VENV/bin/kubernetes-validate" --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
kubectl kustomize deploy/kubernetes/overlays/sqlite >"$out/sqlite.yaml"
kubectl kustomize deploy/kubernetes/overlays/postgres >"$out/postgres.yaml"
# The optional component, added the way the README says (kustomize takes relative paths only).
monitored=target/kubernetes-check/monitored
mkdir -p "$monitored"
cat >"$monitored/kustomization.yaml" <<KUSTOMIZATION
resources: [../../../deploy/kubernetes/overlays/postgres]
components: [../../../deploy/kubernetes/components/servicemonitor]
KUSTOMIZATION
kubectl kustomize "$monitored" >"$out/postgres-monitored.yaml"

for version in $KUBERNETES_VERSIONS; do
  # The ServiceMonitor is a CRD: no schema upstream; check.py checks it against the Service.
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$out/sqlite.yaml" "$out/postgres.yaml"
  echo "  Kubernetes $version: both overlays valid (strict)"
done
"$VENV/bin/python" deploy/kubernetes/check.py . "$out/sqlite.yaml" "$out/postgres.yaml" "$out/postgres-monitored.yaml"
