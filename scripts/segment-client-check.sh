#!/usr/bin/env bash
# Identity resolution checked from outside with REAL Segment client traffic (see
# docs/testing.md, "Segment's own client, identity resolution"): Segment's Python
# library sends ~30 visitors' anonymous visits and sign-ups (identify or alias) to a
# local collector, which writes each call to Kafka (mock-kafka); two instances of the
# binary fold them, one is killed with SIGKILL halfway; every user's last body sent to a
# Foldspace stand-in must equal an independent fold of both its ids' calls.
#
#   scripts/segment-client-check.sh [identity|messageid ...]
#
# Runs the key modes given (default both: keys by identity, then by messageId), each on
# a fresh mock cluster and group; exits 0 only if every mode passes.
#   FOLDSPACE_SYNC_BINARY    the binary (default .build/release/foldspace-sync, else
#                            .build/debug/foldspace-sync); it is not built here
#   SEGMENT_CHECK_VISITORS   visitors per mode (default 30)
#   SEGMENT_CHECK_SEED       the seed of the visitors' plan (default: random, printed)
#   SEGMENT_CHECK_TIMEOUT    seconds for every user to match after the last call (120)
#   PYTHON                   the Python interpreter to start from (default python3)
#   SEGMENT_CHECK_VENV=1     install the Python packages into a venv even if present
#   SEGMENT_CHECK_KEEP=1     keep the logs and records (always kept on a failure)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "segment-client-check: $*" >&2; exit 2; }

# The binary under test.
if [[ -n "${FOLDSPACE_SYNC_BINARY:-}" ]]; then
  BIN=$FOLDSPACE_SYNC_BINARY
elif [[ -x .build/release/foldspace-sync ]]; then
  BIN=.build/release/foldspace-sync
else
  BIN=.build/debug/foldspace-sync
fi
[[ -x "$BIN" ]] || die "no executable foldspace-sync at '$BIN' (build it, or set FOLDSPACE_SYNC_BINARY)"
BIN=$(realpath "$BIN")

MODES=("$@")
[[ ${#MODES[@]} -gt 0 ]] || MODES=(identity messageid)
for m in "${MODES[@]}"; do
  [[ $m == identity || $m == messageid ]] || die "unknown mode '$m' (identity or messageid)"
done
SEED=${SEGMENT_CHECK_SEED:-$((RANDOM * 32768 + RANDOM))}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/segment-client-check.XXXXXX")
HELPER_PID=""
KEEP_WORK=${SEGMENT_CHECK_KEEP:-0}

# On any exit: stop the helper (it ends its own children), then end any child it left
# behind. Its children's pids are in $WORK/<mode>/pids; only a process that still runs
# the binary under test is signalled, so a pid reused since is left alone.
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n $HELPER_PID ]] && kill -0 "$HELPER_PID" 2>/dev/null; then
    kill -TERM "$HELPER_PID" 2>/dev/null || true
    wait "$HELPER_PID" 2>/dev/null || true
  fi
  local f pid
  for f in "$WORK"/*/pids; do
    [[ -f $f ]] || continue
    while read -r pid; do
      if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$BIN" ]]; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done <"$f"
  done
  if [[ $KEEP_WORK == 1 || ($status != 0 && -n $(find "$WORK" -mindepth 2 -name pids -print -quit)) ]]; then
    echo "segment-client-check: logs and records kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Python with Segment's library and confluent-kafka: $PYTHON's own if it has both
# (and SEGMENT_CHECK_VENV is not set), else a venv in $WORK that installs the missing ones
# from PyPI. Nothing is skipped: a failed install stops here, naming the package.
PY=$(command -v "${PYTHON:-python3}") || die "${PYTHON:-python3} is missing (needed for Segment's Python library)"
missing() { # the PyPI names of the packages $1 cannot import
  "$1" - <<'EOF'
import importlib
for module, package in (("segment.analytics", "segment-analytics-python"), ("confluent_kafka", "confluent-kafka")):
    try:
        importlib.import_module(module)
    except ImportError:
        print(package)
EOF
}
NEEDED=$(missing "$PY")
if [[ -n $NEEDED || ${SEGMENT_CHECK_VENV:-0} == 1 ]]; then
  [[ -n $NEEDED ]] || NEEDED="segment-analytics-python confluent-kafka"
  echo "segment-client-check: installing $(echo $NEEDED) into a venv in $WORK/venv" >&2
  "$PY" -m venv --system-site-packages "$WORK/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  PY=$WORK/venv/bin/python
  # shellcheck disable=SC2086 # one word per package
  "$PY" -m pip install --quiet --disable-pip-version-check $NEEDED ||
    die "pip could not install: $(echo $NEEDED)"
  STILL=$(missing "$PY")
  [[ -z $STILL ]] || die "still not importable after pip install: $(echo $STILL)"
fi
echo "segment-client-check: $("$PY" -c 'import segment.analytics as a, confluent_kafka as k; print("segment-analytics-python", a.VERSION, "| confluent-kafka", k.version(), "| librdkafka", k.libversion()[0])')" >&2
echo "segment-client-check: binary $BIN, modes ${MODES[*]}, seed $SEED" >&2

# Each mode on its own mock cluster, group and stand-ins; every mode runs even after a
# failure, so that one report covers both.
FAILED=()
for m in "${MODES[@]}"; do
  mkdir -p "$WORK/$m"
  status=0
  "$PY" scripts/segment-client-check.py --binary "$BIN" --mode "$m" --workdir "$WORK/$m" \
    --visitors "${SEGMENT_CHECK_VISITORS:-30}" --seed "$SEED" --timeout "${SEGMENT_CHECK_TIMEOUT:-120}" &
  HELPER_PID=$!
  wait "$HELPER_PID" || status=$?
  HELPER_PID=""
  [[ $status == 0 ]] || FAILED+=("$m (exit $status)")
done

if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "segment-client-check: FAILED: ${FAILED[*]}" >&2
  exit 1
fi
echo "segment-client-check: passed: ${MODES[*]}" >&2
