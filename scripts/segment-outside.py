#!/usr/bin/env python3
"""Real Segment client traffic into Kafka, for the check from outside (docs/testing.md).

  segment-outside.py collector --bootstrap HOST:PORT --topic TOPIC --write-key KEY
      An HTTP collector in the shape of Segment's tracking API: it accepts the batches a
      Segment library POSTs to /v1/batch (Basic auth with the write key, gzip or not),
      splits each batch by user and writes one `{"batch": [...]}` envelope per user,
      keyed by the user's id, to TOPIC (as a collector that keys by user does; a user's
      calls of one batch share the envelope's offset). It answers only once Kafka
      acknowledged the envelopes, so a batch the client saw accepted is in Kafka. Prints
      `listening PORT` when ready, and `wrote envelopes=E calls=C` after each batch.

  segment-outside.py client --host URL --write-key KEY < EVENTS
      Sends each JSON event of EVENTS (one per line: type page or track, userId, event,
      timestamp) through Segment's own Python library (segment-analytics-python), which
      batches, adds its context and message ids, and posts to URL. Exits non-zero if
      the library reports a failed upload.

Needs the PyPI packages segment-analytics-python and confluent-kafka (scripts/deps.sh
--with-test-tools installs both).
"""
import argparse
import base64
import datetime
import gzip
import http.server
import json
import sys
import threading


def collector(args):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5,
                         "compression.type": "zstd", "enable.idempotence": True})
    expected_auth = "Basic " + base64.b64encode((args.write_key + ":").encode()).decode()
    lock = threading.Lock()
    totals = {"envelopes": 0, "calls": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path != "/v1/batch":
                return self.answer(404, {"error": "not found"})
            if self.headers.get("Authorization") != expected_auth:
                return self.answer(401, {"error": "invalid write key"})
            try:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            except ValueError:
                return self.answer(400, {"error": "bad Content-Length"})
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            try:
                batch = json.loads(raw)["batch"]
            except (ValueError, KeyError, TypeError):
                return self.answer(400, {"error": "not a batch"})
            by_user = {}
            for call in batch:
                key = call.get("userId") or call.get("anonymousId") or ""
                by_user.setdefault(key, []).append(call)
            # One batch at a time: the flush and the queue length are the producer's, not
            # this request's (a batch answered 503 for another's queue would be sent
            # again by the client and its events written twice).
            with lock:
                failures = []
                for key, calls in by_user.items():
                    producer.produce(args.topic, key=key.encode(), value=json.dumps({"batch": calls}).encode(),
                                     on_delivery=lambda err, msg: err and failures.append(str(err)))
                producer.flush(30)
                if failures or len(producer) > 0:
                    return self.answer(503, {"error": "kafka: %s" % (failures[:1] or ["not acknowledged"])})
                totals["envelopes"] += len(by_user)
                totals["calls"] += len(batch)
                print("wrote envelopes=%d calls=%d" % (totals["envelopes"], totals["calls"]), flush=True)
            self.answer(200, {"success": True})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("listening %d" % server.server_address[1], flush=True)
    server.serve_forever()


def client(args):
    import segment.analytics as analytics

    failures = []
    analytics.write_key = args.write_key
    analytics.host = args.host
    analytics.max_retries = 3
    analytics.on_error = lambda error, items: failures.append(str(error))
    sent = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        e = json.loads(line)
        ts = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        if e["type"] == "track":
            analytics.track(user_id=e["userId"], event=e["event"], timestamp=ts, properties=e.get("properties") or {})
        elif e["type"] == "page":
            analytics.page(user_id=e["userId"], name=e.get("name") or "Docs", timestamp=ts)
        elif e["type"] == "identify":
            analytics.identify(user_id=e["userId"], traits=e.get("traits") or {}, timestamp=ts)
        else:
            sys.exit("unsupported event type %r" % e["type"])
        sent += 1
    analytics.flush()
    analytics.shutdown()
    if failures:
        sys.exit("the Segment library failed to upload: %s" % failures[:3])
    print("sent %d" % sent, flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collector")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--write-key", required=True)
    k = sub.add_parser("client")
    k.add_argument("--host", required=True)
    k.add_argument("--write-key", required=True)
    args = parser.parse_args()
    collector(args) if args.command == "collector" else client(args)


if __name__ == "__main__":
    main()
