#!/usr/bin/env python3
"""`helm template` without a helm binary: renders a chart with Helm's own engine (v4, the
helm-python-sdk wheel from PyPI; scripts/deps.sh installs it) and prints the manifests.
Usage: helm-template.py CHART [RELEASE] [VALUES_JSON]
Runs `helm lint --strict` with the same values first: an error or warning fails it."""
import json, sys
import helm_python as helm

chart_dir = sys.argv[1]
release = sys.argv[2] if len(sys.argv) > 2 else "foldspace-sync"
values = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
lint = helm.lint(chart_dir, values, strict=True)
# Severity 1 is informational (e.g. "icon is recommended"); 2 warning, 3+ error.
problems = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2] + list(lint.get("errors", []))
if problems:
    sys.exit(f"helm lint: {problems}")
with helm.Chart.load(chart_dir) as chart:
    rendered = chart.render(values, name=release, namespace="default")
docs = [text.strip() for path, text in sorted(rendered.items()) if path.endswith((".yaml", ".yml")) and text.strip()]
print("\n---\n".join(docs))
