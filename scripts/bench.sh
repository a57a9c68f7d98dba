#!/usr/bin/env bash
# The benchmark: one run, one table, ratios against librdkafka's own read rate measured
# in the same run on the same topic. Not part of the tests (absolute times on shared
# machines are noisy); takes a few minutes on 2 cores.
#
#   EVENTS=1000000 USERS=100000 PARTITIONS=16 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-1000000}
USERS=${USERS:-100000}
PARTITIONS=${PARTITIONS:-16}   # the mock keeps ~5 MiB per partition: spread the data
MEMORY_USERS=${MEMORY_USERS:-1000000}

bash scripts/deps.sh --with-test-tools
swift build -c release --product foldspace-sync >&2
swift build -c release --product foldspace-bench >&2
BIN=$(swift build -c release --show-bin-path)
out=$(mktemp -d)

"$BIN/foldspace-sync" mock-kafka --topic "bench:$PARTITIONS" > "$out/mock" 2>/dev/null &
MOCK=$!
trap 'kill $MOCK 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$out/mock" ] && break; sleep 0.1; done
B=$(head -1 "$out/mock")
echo "mock cluster at $B; producing $EVENTS events over $USERS users..." >&2

"$BIN/foldspace-bench" produce --brokers "$B" --topic bench --events "$EVENTS" --users "$USERS" > "$out/produce"

echo "raw read with kcat..." >&2
t0=$(date +%s.%N)
kcat -C -b "$B" -t bench -o beginning -e -q -f '\n' -X log_level=3 | wc -l > "$out/kcat_count"
t1=$(date +%s.%N)
kcat_n=$(cat "$out/kcat_count")
kcat_rate=$(python3 -c "print(int($kcat_n / ($t1 - $t0)))")

echo "raw read with a minimal librdkafka consumer..." >&2
# Plain librdkafka is the reference: without the daemon's zstd size hint (ZstdSizeHint),
# then, for comparison, with it.
ZSTD_HINT=0 "$BIN/foldspace-bench" raw --brokers "$B" --topic bench --expect "$EVENTS" > "$out/raw"
"$BIN/foldspace-bench" raw --brokers "$B" --topic bench --expect "$EVENTS" | sed 's/^raw_/rawhint_/' >> "$out/raw"
echo "a Python stream processor folding the same events (confluent-kafka + json.loads)..." >&2
: > "$out/python"
if python3 -c "import confluent_kafka" 2>/dev/null || pip install --quiet --break-system-packages confluent-kafka >/dev/null 2>&1; then
  python3 scripts/python-fold.py "$B" bench "$EVENTS" > "$out/python" || true
fi
echo "the daemon's pipeline..." >&2
"$BIN/foldspace-bench" pipeline --brokers "$B" --topic bench --expect "$EVENTS" > "$out/pipeline"
echo "the daemon's binary as a separate process (durable state, its default), rate read from its /metrics..." >&2
"$BIN/foldspace-bench" binary --bin "$BIN/foldspace-sync" --brokers "$B" --topic bench --expect "$EVENTS" > "$out/binary"
echo "latency at a steady 10k events/s, debounce 1 s..." >&2
"$BIN/foldspace-sync" mock-kafka --topic "lat:4" > "$out/mock2" 2>/dev/null &
MOCK2=$!
trap 'kill $MOCK $MOCK2 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$out/mock2" ] && break; sleep 0.1; done
"$BIN/foldspace-bench" latency --brokers "$(head -1 "$out/mock2")" --topic lat --rate 10000 --seconds 10 > "$out/latency"
echo "no debounce at 2k events/s (the Kafka and HTTP path alone)..." >&2
LATENCY_DEBOUNCE_MS=0 "$BIN/foldspace-bench" latency --brokers "$(head -1 "$out/mock2")" --topic lat0 --rate 2000 --seconds 10 \
    | sed 's/^latency_/nodebounce_latency_/; s/^send_lateness/nodebounce_send_lateness/; s/^request_duration/nodebounce_request_duration/' >> "$out/latency"
echo "memory per user ($MEMORY_USERS users)..." >&2
"$BIN/foldspace-bench" memory --users "$MEMORY_USERS" > "$out/memory"
"$BIN/foldspace-bench" memory --users "$MEMORY_USERS" --settled | grep settled >> "$out/memory"
echo "pure core costs..." >&2
"$BIN/foldspace-bench" core --rounds 5 > "$out/core"

cat "$out"/produce "$out"/raw "$out"/python "$out"/pipeline "$out"/binary "$out"/latency "$out"/memory "$out"/core > "$out/all"
echo "kcat_messages=$kcat_n" >> "$out/all"
echo "kcat_rate=$kcat_rate" >> "$out/all"
python3 - "$out/all" <<'PY'
import sys
v = dict(l.strip().split("=", 1) for l in open(sys.argv[1]) if "=" in l)
g = lambda k: v.get(k, "?")
raw = int(g("raw_rate")) if g("raw_rate").isdigit() else 0
kc = int(g("kcat_rate")) if g("kcat_rate").isdigit() else 0
folded = int(g("folded_rate")) if g("folded_rate").isdigit() else 0
rows = [
    ("events produced (zstd)", f'{g("produced")} ({g("avg_event_bytes")} B avg)'),
    ("raw read, kcat (msgs/s, incl. start-up)", g("kcat_rate")),
    ("raw read, librdkafka consumer (msgs/s)", g("raw_rate")),
    ("  the same with the daemon's zstd size hint (msgs/s)", g("rawhint_rate")),
    ("folded by the daemon (events/s)", g("folded_rate")),
    ("  zstd batches the hint sized for librdkafka", g("zstd_frames_sized")),
    ("folded / raw librdkafka", f"{folded / raw:.2f}" if raw else "?"),
    ("folded / raw kcat", f"{folded / kc:.2f}" if kc else "?"),
    ("folded by the binary, a separate process, durable state (events/s)", g("binary_folded_rate")),
    ("  binary folded / raw kcat", f'{int(g("binary_folded_rate")) / kc:.2f}' if kc and g("binary_folded_rate").isdigit() else "?"),
    ("folded by Python (confluent-kafka + json.loads)", g("python_fold_rate")),
    ("folded / Python", f"{folded / int(g('python_fold_rate')):.1f}" if g("python_fold_rate").isdigit() and int(g("python_fold_rate")) else "?"),
    ("users held after the run", g("users")),
    ("PUTs per event (one flush of all users)", g("puts_per_event")),
    ("no-op PUTs", g("noop_puts")),
    ("PUT/s against a fast local stand-in", g("put_rate")),
    ("peak RSS of the pipeline run (KiB)", g("peak_rss_kib")),
    ("event → PUT p50 at 10k ev/s, debounce 1 s (ms)", g("latency_p50_ms")),
    ("event → PUT p99 at 10k ev/s, debounce 1 s (ms)", g("latency_p99_ms")),
    ("  sent within 100 ms of being due (fraction)", g("send_lateness_within_100ms")),
    ("  p99 from due to sent, bucket bound (ms)", g("send_lateness_p99_ms")),
    ("  p99 request duration, bucket bound (ms)", g("request_duration_p99_ms")),
    ("event → PUT p50 / p99, no debounce, 2k ev/s (ms)", f'{g("nodebounce_latency_p50_ms")} / {g("nodebounce_latency_p99_ms")}'),
    (f"bytes per tracked user, settled ({g('memory_users')} users)", g("bytes_per_user_settled")),
    (f"bytes per tracked user, all dirty ({g('memory_users')} users)", g("bytes_per_user")),
    ("core: decode (ns/event)", g("core_decode_ns")),
    ("core: fold (ns/event)", g("core_fold_ns")),
    ("core: the engine, decode to fold, one thread (ns/event)", g("core_engine_ns")),
    ("core: project (ns/user)", g("core_project_ns")),
    ("core: schema check of a body (ns)", g("core_validate_ns")),
]
w = max(len(r[0]) for r in rows)
print(f"| {'measure'.ljust(w)} | value |")
print(f"|{'-' * (w + 2)}|-------|")
for k, val in rows:
    print(f"| {k.ljust(w)} | {val} |")
PY
