#!/usr/bin/env bash
# Installs what building and testing need on Debian/Ubuntu when it is missing:
# librdkafka's headers (the daemon links librdkafka) and kcat (the black-box tests
# produce with it, as an outside client would).
set -euo pipefail
need=()
pkg-config --exists rdkafka 2>/dev/null || need+=(librdkafka-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
if [ "${1:-}" = "--with-kcat" ]; then
  command -v kcat >/dev/null || need+=(kcat)
fi
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
