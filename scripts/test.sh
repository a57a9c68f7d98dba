#!/usr/bin/env bash
# Runs every test: a fuzz smoke run, unit tests, integration tests on librdkafka's mock
# cluster, and black-box tests of the built binary. Installs librdkafka-dev and every
# tool the tests run (scripts/deps.sh lists them) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --with-test-tools
# The tree is kept formatted by swift-format (the toolchain's `swift format`, with the
# repository's .swift-format): `swift format format -i -r Sources Tests fuzz Package.swift`.
swift format lint --strict --recursive --parallel Sources Tests fuzz/FuzzTarget.swift Package.swift \
  || { echo "the tree is not formatted: run swift format format -i -r --parallel Sources Tests fuzz/FuzzTarget.swift Package.swift"; exit 1; }
swift build --build-tests
# A 30-second libFuzzer smoke run of the decoder, fold, projector and state codec
# (scripts/fuzz.sh runs 10M inputs outside CI). FUZZ_SMOKE=0 skips it.
if [ "${FUZZ_SMOKE:-1}" != "0" ]; then
  SWIFT_BACKTRACE=enable=no bash scripts/fuzz.sh -max_total_time=30 -print_final_stats=1 > .build/fuzz-smoke.log 2>&1 \
    || { tail -40 .build/fuzz-smoke.log; echo "fuzz smoke run found a problem (see fuzz/findings/)"; exit 1; }
  grep -E "^Done [0-9]+ runs" .build/fuzz-smoke.log || true
fi
swift test --skip-build "$@"
