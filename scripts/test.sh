#!/usr/bin/env bash
# Runs every test: unit tests, integration tests on librdkafka's mock cluster, and
# black-box tests of the built binary. Installs librdkafka-dev and kcat when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --with-test-tools
swift build --build-tests
swift test --skip-build "$@"
