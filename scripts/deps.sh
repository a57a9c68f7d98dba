#!/usr/bin/env bash
# Installs what building and testing need on Debian/Ubuntu when it is missing:
# librdkafka's headers (the daemon links librdkafka), kcat (the black-box tests produce
# with it, as an outside client would) and kubernetes-validate (the manifest test).
set -euo pipefail
need=()
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists rdkafka 2>/dev/null || need+=(librdkafka-dev)
if [ "${1:-}" = "--with-test-tools" ]; then
  command -v kcat >/dev/null || need+=(kcat)
fi
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "${1:-}" = "--with-test-tools" ] && ! command -v kubernetes-validate >/dev/null; then
  # Optional: without it the manifest test is skipped, with a message.
  python3 -m pip install -q kubernetes-validate >/dev/null 2>&1 || echo "kubernetes-validate not installed; its test will be skipped" >&2
fi
[ "${1:-}" != "--with-test-tools" ] || python3 -c "import prometheus_client" 2>/dev/null || python3 -m pip install -q prometheus_client || { echo "cannot install prometheus_client: the metrics tests parse /metrics with it" >&2; exit 1; }
