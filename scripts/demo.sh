#!/usr/bin/env bash
# Builds foldspace-sync and runs the embedded demo: mock Kafka, generated Segment
# traffic, the daemon, and a Foldspace sandbox that checks every request.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
swift build --product foldspace-sync
exec .build/debug/foldspace-sync demo "$@"
