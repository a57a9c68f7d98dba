#!/usr/bin/env bash
# Fuzzes the decoder, fold, projector and state codec with libFuzzer.
#   scripts/fuzz.sh                 # 10M inputs (not part of CI: it takes a while)
#   scripts/fuzz.sh -max_total_time=30   # the smoke run the tests do
# Findings (crashes, sanitizer reports, schema violations) are written to fuzz/findings/.
set -euo pipefail
cd "$(dirname "$0")/.."
work=.build/fuzz
mkdir -p "$work/src" fuzz/findings
rm -f "$work"/src/*.swift
# One module: the pure sources (their subfolders too), their imports of each other removed.
# Each copy is named by its whole path, so that files of the same name in two folders differ.
for f in $(find Sources/Events Sources/Folding -name '*.swift' | sort) Sources/Simulation/FoldspaceSchema.swift fuzz/FuzzTarget.swift; do
  sed -e '/^import Events$/d' "$f" > "$work/src/$(echo "${f%.swift}" | tr / -).swift"
done
if [ ! -x "$work/fuzz-decoder" ] || [ -n "$(find Sources/Events Sources/Folding Sources/CPrefetch fuzz -newer "$work/fuzz-decoder" \( -name '*.swift' -o -name '*.h' -o -name '*.modulemap' \) | head -1)" ]; then
  # CPrefetch (a C header with its module map) is the one module the pure sources import.
  swiftc -parse-as-library -O -sanitize=fuzzer,address -module-name FuzzTarget -I Sources/CPrefetch/include \
    "$work"/src/*.swift -o "$work/fuzz-decoder"
fi
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(-runs=10000000)
mkdir -p "$work/corpus"
cp -n fuzz/corpus/* "$work/corpus/" 2>/dev/null || true
exec "$work/fuzz-decoder" "$work/corpus" fuzz/corpus -max_len=4096 -timeout=5 -artifact_prefix=fuzz/findings/ "${args[@]}"
