#!/usr/bin/env python3
"""Checks the rendered manifests against the configuration the binary reads: every WEARLINK_*
variable a manifest names (a container's env, the ConfigMap's keys) must be one that
src/config.rs reads and that the README's Configuration table documents; and the optional
ServiceMonitor (a CRD kubernetes-validate has no schema for) must select the Service and name
one of its ports.

    check.py <repository root> <rendered manifests.yaml>...
"""
import re
import sys
from pathlib import Path

import yaml


def named_variables(docs):
    names = set()
    for doc in docs:
        if doc.get("kind") == "ConfigMap":
            names.update(doc.get("data", {}))
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            names.update(e["name"] for e in container.get("env", []))
    return {n for n in names if n.startswith("WEARLINK_")}


def main():
    root, rendered = Path(sys.argv[1]), sys.argv[2:]
    read = set(re.findall(r'"(WEARLINK_[A-Z0-9_]+)"', (root / "src/config.rs").read_text()))
    documented = set(re.findall(r"^\| `(WEARLINK_[A-Z0-9_]+)` \|", (root / "README.md").read_text(), re.M))
    failures = []
    for path in rendered:
        before = len(failures)
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        names = named_variables(docs)
        if not names:
            failures.append(f"{path}: names no WEARLINK_* variable (a broken render?)")
        for name in sorted(names - read):
            failures.append(f"{path}: {name} is not read by src/config.rs")
        for name in sorted(names - documented):
            failures.append(f"{path}: {name} is not in the README's Configuration table")
        services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
            wanted = monitor["spec"]["selector"]["matchLabels"].items()
            targets = [s for s in services.values() if wanted <= s["metadata"].get("labels", {}).items()]
            ports = {p.get("name") for s in targets for p in s["spec"]["ports"]}
            if not targets:
                failures.append(f"{path}: the ServiceMonitor selects no Service")
            for endpoint in monitor["spec"]["endpoints"]:
                if endpoint["port"] not in ports:
                    failures.append(f"{path}: the ServiceMonitor scrapes port {endpoint['port']}, not a Service port")
        print(f"  {path}: {len(docs)} resources, {len(names)} WEARLINK_* variables, all read and documented"
              if len(failures) == before else f"  {path}: FAILED")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
