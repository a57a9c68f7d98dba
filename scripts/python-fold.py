#!/usr/bin/env python3
"""A reference stream processor for the benchmark: confluent-kafka (librdkafka) and
json.loads, folding last seen, first seen, email and location per user, the way a
straightforward Python consumer would. Prints python_fold_rate=<events/s>.

    python3 scripts/python-fold.py BOOTSTRAP TOPIC EXPECTED_EVENTS
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer

bootstrap, topic, expect = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({
    "bootstrap.servers": bootstrap, "group.id": "pyfold-" + uuid.uuid4().hex[:8],
    "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 3,
})
c.subscribe([topic])
users = {}
n = 0
first = last = None
deadline = time.time() + 300
while n < expect and time.time() < deadline:
    msgs = c.consume(num_messages=1000, timeout=1.0)
    for m in msgs:
        if m.error():
            continue
        try:
            e = json.loads(m.value())
        except ValueError:
            continue
        if not isinstance(e, dict):
            continue
        uid = e.get("userId") or e.get("anonymousId")
        if uid is None:
            continue
        u = users.setdefault(uid, {"first": None, "last": None})
        ts = e.get("timestamp")
        if u["first"] is None or ts < u["first"]:
            u["first"] = ts
        if u["last"] is None or ts > u["last"]:
            u["last"] = ts
        traits = e.get("traits") or {}
        if "email" in traits:
            u["email"] = traits["email"]
        loc = (e.get("context") or {}).get("location")
        if loc:
            u["location"] = loc
        n += 1
    if msgs:
        now = time.time()
        first = first or now
        last = now
c.close()
print(f"python_fold_events={n}")
print(f"python_fold_rate={int(n / max(last - first, 1e-6)) if first else 0}")
