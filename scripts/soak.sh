#!/usr/bin/env bash
# Soak run (not in CI): 10 minutes at 5k events/s while the Foldspace stand-in cycles
# through 503s, 429 storms and latency. Prints RSS, backlog and dirty users every 10 s,
# then the verifier; exits 1 if any user is not up to date or a request landed inside a
# Retry-After window.   MINUTES=10 RATE=5000 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
swift build -c release --product foldspace-bench >&2
exec "$(swift build -c release --show-bin-path)/foldspace-bench" soak --minutes "${MINUTES:-10}" --rate "${RATE:-5000}"
