#!/usr/bin/env bash
# Instructions per event of the pure core (decode, fold, the engine from message to
# folded user, projection, schema check), counted by valgrind's callgrind. Unlike the
# timings of `foldspace-bench core`, the counts repeat to within a fraction of a percent
# on a noisy machine, so a change to the hot path can be judged by them.
#
#   scripts/callgrind.sh                 # 20000 events over 2000 users, ~1 min
#   EVENTS=50000 USERS=5000 scripts/callgrind.sh
#   KEEP=/tmp/cg scripts/callgrind.sh    # keep callgrind.out for callgrind_annotate/kcachegrind
#   LINES=1 KEEP=/tmp/cg scripts/callgrind.sh   # with source lines (a separate build, ~5 min the first time)
#
# Needs valgrind (apt-get install -y valgrind). Debian's valgrind 3.19 cannot read the
# DWARF 5 that Swift emits, so by default the profile runs on a copy of the binary stripped
# of its debug info: functions are named from the symbol table, without line numbers.
# LINES=1 builds a second copy with DWARF 4 under .build/callgrind instead, which
# `callgrind_annotate $KEEP/engine.out Sources/Events/JSON/JSONScanner.swift` annotates by line.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-20000}
USERS=${USERS:-2000}
TOP=${TOP:-25}

command -v valgrind > /dev/null || { echo "callgrind.sh: valgrind is not installed (apt-get install -y valgrind)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${LINES:-}" ]; then
    scratch=${CALLGRIND_SCRATCH:-.build/callgrind}
    dwarf4=(-c release --product foldspace-bench --scratch-path "$scratch" -Xswiftc -dwarf-version=4 -Xcc -gdwarf-4)
    swift build "${dwarf4[@]}" >&2
    cp "$(swift build "${dwarf4[@]}" --show-bin-path)/foldspace-bench" "$work/foldspace-bench"
else
    swift build -c release --product foldspace-bench >&2
    objcopy --strip-debug "$(swift build -c release --show-bin-path)/foldspace-bench" "$work/foldspace-bench"
fi

echo "callgrind: foldspace-bench core --events $EVENTS --users $USERS (about 60x slower than native)..." >&2
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
    "$work/foldspace-bench" core --events "$EVENTS" --users "$USERS" > "$work/core" 2> "$work/valgrind.log" \
    || { tail -20 "$work/valgrind.log" >&2; exit 1; }

# The engine's own profile: the same run, counting only inside the engine's round (no
# traffic generation, no projection), for the list of its costliest functions.
valgrind --tool=callgrind --callgrind-out-file="$work/engine.out" --toggle-collect='*engineRound*' \
    "$work/foldspace-bench" core --events "$EVENTS" --users "$USERS" > /dev/null 2>> "$work/valgrind.log" \
    || { tail -20 "$work/valgrind.log" >&2; exit 1; }

demangle() { if command -v swift > /dev/null; then swift demangle --simplified; else cat; fi; }
callgrind_annotate --inclusive=yes --threshold=100 "$work/callgrind.out" 2> /dev/null | demangle > "$work/inclusive"
callgrind_annotate --threshold=100 "$work/engine.out" 2> /dev/null | demangle > "$work/exclusive"

python3 - "$work/core" "$work/inclusive" "$work/exclusive" "$TOP" <<'EOF'
import re, sys
core = dict(l.strip().split("=", 1) for l in open(sys.argv[1]) if "=" in l)
def inclusive(name):
    # The stage's function, specialized or not: the largest inclusive count under its name.
    best = 0
    for line in open(sys.argv[2]):
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+\S*:(?:specialized )?(?:static )?FoldspaceBench\.Core\." + name + r"\(", line)
        if m: best = max(best, int(m.group(1).replace(",", "")))
    return best
events, decoded = int(core["core_events"]), int(core["core_decoded_events"])
users, bodies = int(core["core_users"]), int(core["core_validated_bodies"])
rows = [("decode", "decodeRound", events, "event"),
        ("fold", "foldRound", decoded, "event"),
        ("engine: decode, look up, fold, debounce, offsets", "engineRound", events, "event"),
        ("project", "projectRound", users, "user"),
        ("schema check", "validateRound", bodies, "body")]
print(f"events {events}, users {users}")
print(f"{'stage':<52} {'instructions':>14} {'per':>6}")
for label, fn, n, unit in rows:
    ir = inclusive(fn)
    per = f"{ir / n:,.0f}" if ir and n else "?"
    print(f"{label:<52} {per:>14} {unit:>6}")
print()
print(f"the engine's top {sys.argv[4]} functions by their own instructions (share of the engine's round):")
shown = 0
started = False
for line in open(sys.argv[3]):
    if re.match(r"\s*Ir\s+file:function", line): started = True; continue
    if not started or not re.match(r"\s*[\d,]+ \(", line): continue
    print("  " + re.sub(r"\[/tmp/[^]]*/foldspace-bench\]", "[foldspace-bench]", line.rstrip())[:150])
    shown += 1
    if shown >= int(sys.argv[4]): break
EOF

if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    cp "$work/callgrind.out" "$work/engine.out" "$work/foldspace-bench" "$KEEP/"
    echo "kept: $KEEP/callgrind.out (the whole run), $KEEP/engine.out (the engine's round only)" >&2
fi
