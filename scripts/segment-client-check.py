#!/usr/bin/env python3
"""Identity resolution checked from outside, fed by Segment's own Python library.

One run of `scripts/segment-client-check.sh` (see docs/testing.md) calls this once per
key mode:

  segment-client-check.py --binary BIN --mode identity|messageid --workdir DIR
                          [--visitors 30] [--seed N]

It starts, all on 127.0.0.1:

  - `BIN mock-kafka` with the source topic `events` and the group's three topics;
  - a stand-in for Foldspace that answers `PUT /v1/user/<id>` with 200 and records
    (arrival, answer, id, body) of each request;
  - two instances of `BIN run` in one group, identity resolution on, with a PQL model
    that is an exact function of the count of "Step" tracks;
  - a collector in the shape of Segment's tracking API: it takes the batches the library
    POSTs to /v1/batch (gzip or not) and writes each call as one Kafka message, keyed by
    the call's identity (userId, else anonymousId; librdkafka's murmur2_random, as the
    Java client places keys) or by its messageId, answering only once Kafka acknowledged
    every call of the batch.

Then `segment.analytics` (PyPI segment-analytics-python) sends the visitors' calls to the
collector: anonymous visits, a sign-up by identify (both ids) or alias, the user's own
calls; a third of the visitors sign up before their anonymous calls are sent. Half of
the calls go first; once one instance's checkpoints cover its share of them, it is killed
with SIGKILL; the rest follow, and the survivor takes its tasks over. The run passes
when every visitor's user carries, in its last acknowledged body, the fold of the union
of both ids' calls (computed here from the timestamps given to the library), and no
request for an anonymous id arrived more than 1.5 s after its user's body first held
the anonymous history. Exits 0 on a pass, 1 on a mismatch, 2 on a harness failure.
"""
import argparse
import datetime
import gzip
import http.server
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

try:
    import segment.analytics as analytics
    from confluent_kafka import Consumer, Producer, TopicPartition
except ImportError as e:  # the shell script installs both; say which one is missing
    sys.exit("segment-client-check.py: missing Python module %r (PyPI segment-analytics-python "
             "for segment.analytics, confluent-kafka for confluent_kafka): %s" % (e.name, e))

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = datetime.timedelta(minutes=1)
HOUR = datetime.timedelta(hours=1)
VISIT_GAP_MS = 30 * 60 * 1000  # docs/mapping.md: a visit starts after more than 30 min
LATE_ANONYMOUS_MS = 1500  # an anonymous id sent this long after its user held its history fails
GROUP_TOPICS = ("state", "repartition", "identities")
PARTITIONS = 4

# The PQL model of the daemons under test (as VisitReference.pqlEnvironment): only "Step"
# counts, weight 10, k = 1000, no practical decay. score = round1(100 (1 - e^(-10 n / 1000))).
PQL_ENV = {
    "FOLDSPACE_SYNC_PQL_VISIT_WEIGHT": "0", "FOLDSPACE_SYNC_PQL_DAY_WEIGHT": "0",
    "FOLDSPACE_SYNC_PQL_K": "1000", "FOLDSPACE_SYNC_PQL_HALF_LIFE": "10000000d",
    "FOLDSPACE_SYNC_PQL_KEY_EVENTS": "Step:10:1000000",
}


def score_for_steps(n):
    return round(100 * (1 - math.exp(-n * 10 / 1000)), 1)


def steps_from_score(score):
    return round(-math.log(1 - score / 100) * 100) if score < 100 else None


def now_ms():
    return int(time.time() * 1000)


def wire_ms(dt):
    """The epoch milliseconds of `dt` as the library puts it on the wire: `_enqueue`
    writes `timestamp.isoformat(timespec="milliseconds")`, which cuts (not rounds) the
    microseconds and keeps the datetime's own UTC offset."""
    d = dt - EPOCH
    return (d.days * 86400 + d.seconds) * 1000 + d.microseconds // 1000


def visits(times_ms):
    """Visits of a set of call times: sorted, a new visit after every gap over 30 min."""
    ts = sorted(times_ms)
    return (1 if ts else 0) + sum(1 for a, b in zip(ts, ts[1:]) if b - a > VISIT_GAP_MS)


def most_spans(times_ms):
    """The most visits any subset of these calls can make (greedy: keep a call whenever it
    is more than 30 min after the last one kept). The daemon keeps 8 visit spans per user,
    exact while no fold, whatever order the calls arrive in, holds more (docs/identity.md)."""
    kept = None
    n = 0
    for t in sorted(times_ms):
        if kept is None or t - kept > VISIT_GAP_MS:
            kept, n = t, n + 1
    return n


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


class HarnessError(Exception):
    """The harness could not do its part (not a finding about the daemon): exit 2."""


def wait_for(what, timeout, cond, interval=0.1, alive=None):
    """Polls `cond` until it is true or `timeout` seconds pass; `alive` (if given) is
    checked too, so a dead child fails the wait at once. Returns cond's last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if alive:
            alive()
        if time.monotonic() >= deadline:
            raise HarnessError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# The visitors and their calls


class Call:
    """One call given to the library: `kind` is the library function, `at` the timestamp
    passed as `timestamp=`."""

    def __init__(self, kind, at, user_id=None, anonymous_id=None, previous_id=None, event=None,
                 name=None, traits=None):
        self.kind, self.at = kind, at
        self.user_id, self.anonymous_id, self.previous_id = user_id, anonymous_id, previous_id
        self.event, self.name, self.traits = event, name, traits
        self.message_id = None  # set by the library when sent
        self.half = None

    @property
    def ms(self):
        return wire_ms(self.at)

    def describe(self):
        ids = ", ".join("%s=%s" % (k, v) for k, v in (("userId", self.user_id), ("anonymousId", self.anonymous_id),
                                                      ("previousId", self.previous_id)) if v)
        what = "track %r" % self.event if self.kind == "track" else self.kind
        return "%s (%s) at %s = %d ms, messageId %s, half %s" % (
            what, ids, self.at.isoformat(timespec="milliseconds"), self.ms, self.message_id, self.half)


class Visitor:
    """A visitor who browses anonymously over a few days and signs up.

    `calls` are in time order (what the reference folds); `emission` is the order they
    are given to the library (the link first for a third of the visitors)."""

    def __init__(self, v, tag, rng, now):
        self.index = v
        self.anon = str(uuid.UUID(int=rng.getrandbits(128), version=4))  # as analytics.js makes them
        self.user = "user-%s-%02d" % (tag, v)
        self.signup = "identify" if v % 2 == 0 else "alias"
        self.link_first = v % 3 == 0
        # Some visitors' clocks are not in UTC: the library keeps the datetime's offset.
        tz = (UTC, datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
              datetime.timezone(datetime.timedelta(hours=-7)))[v % 3 if v % 4 == 1 else 0]
        t = (now - datetime.timedelta(days=5) + rng.randrange(0, 12 * 60) * MINUTE).astimezone(tz)
        # Microseconds the library cuts off (wire_ms).
        t = t.replace(microsecond=rng.randrange(0, 1_000_000))
        anon, user = self.anon, self.user
        calls = []

        def page(at, **ids):
            calls.append(Call("page", at, name=rng.choice(["Pricing", "Docs", "Home"]), **ids))

        def step(at, **ids):
            calls.append(Call("track", at, event="Step", **ids))

        # Anonymous phase: two or three visits, days or hours apart; within a visit calls
        # a few minutes apart. Gaps just over 30 min (two visits) and of exactly 30 min
        # (one visit: the gap must be MORE than 30 min) for some.
        for k in range(2 + v % 2):
            if k > 0:
                if k == 1 and v % 6 == 2:
                    t += 30 * MINUTE + datetime.timedelta(seconds=1)
                elif k == 1 and v % 6 == 4:
                    t += 30 * MINUTE
                else:
                    t += rng.choice([2, 7, 20, 26]) * HOUR + rng.randrange(0, 60) * MINUTE
            if k == 1 and v % 5 == 1:
                # One visit of 50 min, calls 25 min apart: split in two wherever its middle
                # call arrives last, joined once it is folded.
                page(t, anonymous_id=anon)
                step(t + 25 * MINUTE, anonymous_id=anon)
                t += 50 * MINUTE
                page(t, anonymous_id=anon)
                continue
            page(t, anonymous_id=anon)
            for _ in range(rng.randrange(0, 3)):
                t += rng.randrange(1, 12) * MINUTE + rng.randrange(0, 60_000) * datetime.timedelta(milliseconds=1)
                (step if rng.random() < 0.6 else page)(t, anonymous_id=anon)
        # The sign-up: 10 min after the last anonymous call (the same visit) or hours later.
        t += 10 * MINUTE if v % 4 in (0, 3) else rng.randrange(3, 20) * HOUR
        if self.signup == "identify":
            link = Call("identify", t, user_id=user, anonymous_id=anon,
                        traits={"email": "%s@example.com" % user, "name": "Visitor %d" % v,
                                "createdAt": t.isoformat()})
        else:
            link = Call("alias", t, user_id=user, previous_id=anon)
        calls.append(link)
        # The user's own calls: a Step in the sign-up's visit (with the anonymous id too,
        # as analytics.js keeps sending it, for those who identified), a "Signed Up" that
        # is no key event, then a visit the next day.
        t += rng.randrange(2, 15) * MINUTE
        step(t, user_id=user, anonymous_id=anon if self.signup == "identify" else None)
        t += 3 * MINUTE
        calls.append(Call("track", t, event="Signed Up", user_id=user))
        if v % 3 != 2:
            t += rng.randrange(18, 28) * HOUR
            page(t, user_id=user)
            if rng.random() < 0.7:
                step(t + 4 * MINUTE, user_id=user)
        self.calls = calls
        anonymous = [c for c in calls if c.user_id is None]
        known = [c for c in calls if c.user_id is not None and c is not link]
        self.emission = [link] + anonymous + known if self.link_first else anonymous + [link] + known
        if max(c.at for c in calls) > now - HOUR:
            raise HarnessError("visitor %d's calls reach into the last hour; shorten the plan" % v)
        if most_spans([c.ms for c in calls]) > 8:
            raise HarnessError("visitor %d could hold more than 8 visit spans (the daemon's bound)" % v)

    def expected(self):
        """The reference: the fold of every call of both ids, as if all carried the userId."""
        times = [c.ms for c in self.calls]
        steps = sum(1 for c in self.calls if c.kind == "track" and c.event == "Step")
        return {"firstVisitDate": min(times), "lastSeenDate": max(times), "numberOfVisits": visits(times),
                "steps": steps, "pqlScore": score_for_steps(steps), "userType": "USER"}


def plan(visitors, tag, seed):
    rng = random.Random(seed)
    now = datetime.datetime.now(UTC)
    vs = [Visitor(v, tag, rng, now) for v in range(visitors)]
    # Interleaved as many visitors browsing at once would be, each visitor's order kept.
    order = []
    for i in range(max(len(v.emission) for v in vs)):
        order += [v.emission[i] for v in vs if i < len(v.emission)]
    return vs, order


# ---------------------------------------------------------------------------------------
# The collector and the Foldspace stand-in


class JSONHandler(http.server.BaseHTTPRequestHandler):
    """An HTTP/1.1 handler that answers JSON and logs nothing (the collector's and the
    Foldspace stand-in's)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


class Collector:
    """Segment's tracking API in miniature: POST /v1/batch, each call of the batch written
    to `topic` as one message. The answer comes after Kafka acknowledged every call, so a
    batch the library saw accepted is in Kafka (a failure answers 503: the library sends
    the batch again, and the duplicate shows in `received`)."""

    def __init__(self, bootstrap, topic, key_by):
        conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                "compression.type": "zstd", "log_level": 3}
        if key_by == "identity":
            conf["partitioner"] = "murmur2_random"  # the Java client's placement of keys
        self.producer = Producer(conf)
        self.topic, self.key_by = topic, key_by
        self.lock = threading.Lock()
        self.received = {}  # messageId -> [the call as received]
        self.partition = {}  # messageId -> the partition Kafka put it on
        self.batches = self.gzipped = self.refused = 0
        collector = self

        class Handler(JSONHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/batch":
                    return self.answer(404, {"error": "not found"})
                status, body = collector.take(raw, self.headers.get("Content-Encoding"))
                self.answer(status, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, raw, encoding):
        try:
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            batch = json.loads(raw)["batch"]
            assert isinstance(batch, list)
        except Exception as e:
            with self.lock:
                self.refused += 1
            return 400, {"error": "not a batch: %s" % e}
        # One batch at a time, so that the flush below and its failures are this batch's.
        with self.lock:
            failures = []

            def delivered(message_id):
                def report(err, msg):
                    if err:
                        failures.append(str(err))
                    else:
                        self.partition[message_id] = msg.partition()
                return report

            for call in batch:
                key = call["messageId"] if self.key_by == "messageId" else (call.get("userId") or call.get("anonymousId"))
                self.producer.produce(self.topic, key=key.encode(), value=json.dumps(call).encode(),
                                      on_delivery=delivered(call["messageId"]))
            self.producer.flush(30)
            if failures or len(self.producer) > 0:
                self.refused += 1
                return 503, {"error": "kafka: %s" % (failures[:1] or ["not acknowledged"])}
            for call in batch:
                self.received.setdefault(call["messageId"], []).append(call)
            self.batches += 1
            self.gzipped += encoding == "gzip"
        return 200, {"success": True}

    def close(self):
        """Stops serving and ends the producer (before the cluster goes away, which it
        would otherwise log about)."""
        self.server.shutdown()
        self.producer.flush(10)
        self.producer = None


class Foldspace:
    """The Foldspace API in miniature: PUT /v1/user/<id> answers 200 and is recorded
    (arrival and answer times in epoch ms, the id, the JSON body); anything else 404."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.others = 0
        fs = self

        class Handler(JSONHandler):
            def other(self, body_read=False):
                if not body_read:
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fs.lock:
                    fs.others += 1
                self.answer(404, {"error": "no such route"})

            def do_GET(self):
                self.other()

            do_POST = do_DELETE = do_PATCH = do_GET

            def do_PUT(self):
                arrived = now_ms()
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urllib.parse.urlsplit(self.path).path
                prefix = "/v1/user/"
                segment = path[len(prefix):]
                if not path.startswith(prefix) or not segment or "/" in segment:
                    return self.other(body_read=True)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                status = 200 if isinstance(body, dict) else 400
                self.answer(status, {"message": "User updated successfully"} if status == 200 else {"error": "not JSON"})
                with fs.lock:
                    fs.requests.append({"arrived": arrived, "responded": now_ms(), "status": status,
                                        "id": urllib.parse.unquote(segment), "body": body})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def stop(self):
        self.server.shutdown()


# ---------------------------------------------------------------------------------------
# Child processes


class Children:
    """The processes this run starts. Each pid is also written to `pidfile`, so that the
    shell script's trap can end them should this process die without its own cleanup;
    each runs under `setpriv --pdeathsig KILL` when setpriv exists, so that it dies with
    this process too."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.pidfile = os.path.join(workdir, "pids")
        self.procs = {}
        self.setpriv = shutil.which("setpriv")

    def start(self, name, args, env=None):
        out = open(os.path.join(self.workdir, name + ".stdout"), "wb")
        err = open(os.path.join(self.workdir, name + ".stderr"), "wb")
        prefix = [self.setpriv, "--pdeathsig", "KILL", "--"] if self.setpriv else []
        p = subprocess.Popen(prefix + args, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env)
        out.close()
        err.close()
        self.procs[name] = p
        with open(self.pidfile, "a") as f:
            f.write("%d\n" % p.pid)
        return p

    def read(self, name, stream="stderr"):
        with open(os.path.join(self.workdir, "%s.%s" % (name, stream)), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def tail(self, name, lines=25):
        return "\n".join(self.read(name).splitlines()[-lines:])

    def alive(self, name):
        p = self.procs[name]
        if p.poll() is not None:
            raise HarnessError("%s exited with status %s; its stderr ends:\n%s" % (name, p.returncode, self.tail(name)))

    def end_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---------------------------------------------------------------------------------------
# The check


class Check:
    def __init__(self, args):
        self.args = args
        self.mode = args.mode
        self.group = "segchk-%s-%s" % (args.mode, uuid.uuid4().hex[:6])
        self.children = Children(args.workdir)
        self.killed_at = None

    # -- setup --------------------------------------------------------------------------

    def start_kafka(self):
        topics = ["events:%d" % PARTITIONS] + ["%s-%s:%d" % (self.group, t, PARTITIONS) for t in GROUP_TOPICS]
        self.children.start("mock-kafka", [self.args.binary, "mock-kafka", "--brokers", "1"] +
                            [a for t in topics for a in ("--topic", t)])

        def bootstrap():
            out = self.children.read("mock-kafka", "stdout")
            first = out.split("\n")[0]
            return first if "\n" in out and ":" in first else None  # a whole first line

        self.bootstrap = wait_for("mock-kafka's bootstrap address", 30, bootstrap,
                                  alive=lambda: self.children.alive("mock-kafka"))
        log("mock-kafka at %s, group %s, topics %s" % (self.bootstrap, self.group, " ".join(topics)))

    def daemon_env(self):
        # Nothing of the caller's FOLDSPACE_* settings reaches the daemons: only these.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOLDSPACE")}
        env.update(PQL_ENV)
        env.update({
            "FOLDSPACE_API_KEY": "x",
            "FOLDSPACE_SYNC_IDENTITY_MERGE": "true",
            "FOLDSPACE_SYNC_SEND_NUMBER_OF_VISITS": "true",
            "FOLDSPACE_SYNC_COMMIT_INTERVAL": "300ms",
            "FOLDSPACE_SYNC_KAFKA_PROPERTIES": "session.timeout.ms=6000,heartbeat.interval.ms=500",
        })
        return env

    def start_daemon(self, name):
        return self.children.start(name, [
            self.args.binary, "run", "--brokers", self.bootstrap, "--topic", "events", "--group", self.group,
            "--foldspace-url", "http://127.0.0.1:%d" % self.foldspace.port, "--debounce", "200ms",
            "--max-wait", "1s", "--admin-listen", "127.0.0.1:0"], env=self.daemon_env())

    def checkpointed(self, name):
        """The group's committed offsets of the source partitions `name` was assigned last,
        if they reach the end of each partition (a checkpoint covers all it was given);
        else None. Read with OffsetFetch by a client that never joins the group."""
        assigned = [l for l in self.children.read(name).splitlines() if '"partitions assigned"' in l]
        if not assigned:
            return None
        parts = [int(p) for p in re.findall(r"(?:^|,)events\[(\d+)\]", json.loads(assigned[-1])["partitions"])]
        tps = [TopicPartition("events", p) for p in parts]
        committed = [max(tp.offset, 0) for tp in self.offsets.committed(tps, timeout=10)]
        ends = [self.offsets.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        if all(c >= e for c, e in zip(committed, ends)):
            return ", ".join("events[%d] at %d" % (p, c) for p, c in zip(parts, committed))
        return None

    # -- sending ------------------------------------------------------------------------

    def send(self, calls, half):
        """Gives `calls` to the library, flushes it, and checks that the collector wrote
        each of them to Kafka exactly once with the timestamp the reference uses."""
        for c in calls:
            ok, msg = self.library_call(c)
            if not ok:
                raise HarnessError("the library refused %s (queue full?)" % c.describe())
            c.message_id, c.half = msg["messageId"], half
        analytics.flush()  # returns once the library's queue is empty: every batch answered
        if self.library_errors:
            raise HarnessError("the library failed to upload: %s" % self.library_errors[:3])
        with self.collector.lock:
            received = {m: list(v) for m, v in self.collector.received.items()}
        for c in calls:
            got = received.get(c.message_id, [])
            if len(got) != 1:
                raise HarnessError("the collector received %s %d times" % (c.describe(), len(got)))
            wire = datetime.datetime.fromisoformat(got[0]["timestamp"].replace("Z", "+00:00"))
            if wire_ms(wire) != c.ms:
                raise HarnessError("the library sent timestamp %r for %s" % (got[0]["timestamp"], c.describe()))

    def library_call(self, c):
        if c.kind == "page":
            return analytics.page(user_id=c.user_id, anonymous_id=c.anonymous_id, name=c.name, timestamp=c.at,
                                  properties={"path": "/" + c.name.lower()})
        if c.kind == "track":
            return analytics.track(user_id=c.user_id, anonymous_id=c.anonymous_id, event=c.event, timestamp=c.at,
                                   properties={"plan": "trial"})
        if c.kind == "identify":
            return analytics.identify(c.user_id, c.traits, anonymous_id=c.anonymous_id, timestamp=c.at)
        if c.kind == "alias":
            return analytics.alias(previous_id=c.previous_id, user_id=c.user_id, timestamp=c.at)
        raise ValueError(c.kind)

    # -- verdict ------------------------------------------------------------------------

    def mismatches(self, requests):
        """What differs between each visitor's user's last acknowledged body and the
        reference, and anonymous ids sent after their user held the anonymous history.
        Returns (problems, notes); notes are late requests the kill explains."""
        latest = {}
        for r in requests:
            if 200 <= r["status"] < 300:
                latest[r["id"]] = r
        problems, notes = [], []
        for v in self.visitors:
            want = v.expected()
            got = latest.get(v.user)
            if got is None:
                problems.append((v, "%s: never delivered" % v.user))
                continue
            body = got["body"]
            for field in ("firstVisitDate", "lastSeenDate", "numberOfVisits", "userType"):
                if body.get(field) != want[field]:
                    problems.append((v, "%s: %s %r, expected %r" % (v.user, field, body.get(field), want[field])))
            score = body.get("pqlScore")
            counted = steps_from_score(score) if isinstance(score, (int, float)) else None
            if counted != want["steps"] or abs(score - want["pqlScore"]) > 0.05 + 1e-9:
                problems.append((v, "%s: pqlScore %r counts %r Step events, expected %d (score %r)"
                                 % (v.user, score, counted, want["steps"], want["pqlScore"])))
            # The first acknowledged body of the user that held the anonymous history (the
            # earliest call of the union is always an anonymous one).
            merged = next((r for r in requests if r["id"] == v.user and 200 <= r["status"] < 300
                           and r["body"].get("firstVisitDate") == want["firstVisitDate"]), None)
            if merged is None:
                continue
            late = [r for r in requests if r["id"] == v.anon and r["arrived"] > merged["responded"] + LATE_ANONYMOUS_MS]
            if not late:
                continue
            text = "%s (of %s): %d request(s) %s ms after %s first held its history" % (
                v.anon, v.user, len(late), [r["arrived"] - merged["responded"] for r in late], v.user)
            # As IdentityEndToEndTests: the instance that sent the merged body may have
            # died before its checkpoint committed the link (300 ms later); the survivor
            # then replays the anonymous calls from the last commit and may send the id
            # again before it links it once more. Only a kill inside the window excuses.
            if self.killed_at is not None and merged["responded"] <= self.killed_at <= merged["responded"] + LATE_ANONYMOUS_MS:
                notes.append("%s; the kill came %d ms after that body" % (text, self.killed_at - merged["responded"]))
            else:
                problems.append((v, text))
        return problems, notes

    def report_visitor(self, v, requests):
        """Everything about one visitor: its calls, the reference, what was delivered."""
        print("  visitor %d: %s signs up by %s%s; anonymous id %s" % (
            v.index, v.user, v.signup, " (link sent first)" if v.link_first else "", v.anon))
        for c in sorted(v.calls, key=lambda c: c.ms):
            part = self.collector.partition.get(c.message_id)
            print("    call: %s, partition %s" % (c.describe(), part))
        print("    expected: %s" % json.dumps(v.expected(), sort_keys=True))
        for r in requests:
            if r["id"] in (v.user, v.anon):
                b = r["body"] or {}
                print("    request at %d (status %d) for %s: %s" % (r["arrived"], r["status"], r["id"], json.dumps(
                    {k: b.get(k) for k in ("firstVisitDate", "lastSeenDate", "numberOfVisits", "pqlScore", "userType")},
                    sort_keys=True)))

    # -- the run ------------------------------------------------------------------------

    def run(self):
        a = self.args
        tag = "%s%d" % (self.mode[0], a.seed % 10000)
        self.visitors, order = plan(a.visitors, tag, a.seed)
        half = len(order) // 2
        log("mode %s: %d visitors, %d calls (seed %d); keys by %s" % (
            self.mode, len(self.visitors), len(order), a.seed,
            "identity, murmur2_random" if self.mode == "identity" else "messageId"))

        self.start_kafka()
        self.foldspace = Foldspace()
        log("Foldspace stand-in on port %d" % self.foldspace.port)
        self.start_daemon("instance-a")
        self.start_daemon("instance-b")

        def both_alive():
            self.children.alive("instance-a")
            self.children.alive("instance-b")

        wait_for("'partitions assigned' from both instances", 90,
                 lambda: all("partitions assigned" in self.children.read(n) for n in ("instance-a", "instance-b")),
                 alive=both_alive)
        log("both instances have partitions")

        self.offsets = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                                 "enable.auto.commit": False, "log_level": 3})
        self.collector = Collector(self.bootstrap, "events", "identity" if self.mode == "identity" else "messageId")
        self.library_errors = []
        analytics.write_key = "segment-client-check"
        analytics.host = "http://127.0.0.1:%d" % self.collector.port  # the library posts to HOST/v1/batch
        analytics.gzip = self.mode == "messageid"  # one mode's uploads gzip-compressed
        analytics.max_retries = 3
        analytics.on_error = lambda error, items: self.library_errors.append("%s (%d calls)" % (error, len(items)))
        log("collector on port %d (library gzip %s)" % (self.collector.port, analytics.gzip))

        # First half; then one instance dies once deliveries are under way.
        self.send(order[:half], 1)
        log("first half sent: %d calls in %d batches, all in Kafka" % (half, self.collector.batches))
        # The kill comes once instance-a's checkpoints cover its share of the first half,
        # so that the survivor must restore its users, identity graph and repartition
        # offsets from the changelog (its later, uncommitted work is replayed).
        share = wait_for("instance-a's checkpoint of the first half", 90,
                         lambda: self.checkpointed("instance-a"), interval=0.2, alive=both_alive)
        victim = self.children.procs["instance-a"]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.killed_at = now_ms()
        log("instance-a killed with SIGKILL once its checkpoints covered %s; %d requests so far"
            % (share, len(self.foldspace.snapshot())))

        self.send(order[half:], 2)
        log("second half sent: %d calls, %d batches in all (%d gzip), all in Kafka" % (
            len(order) - half, self.collector.batches, self.collector.gzipped))

        # Every visitor's user right, within the bound; the survivor must take over.
        deadline = time.monotonic() + a.timeout
        while True:
            problems, notes = self.mismatches(self.foldspace.snapshot())
            if not problems or time.monotonic() >= deadline:
                break
            self.children.alive("instance-b")
            time.sleep(0.5)
        settled_after = a.timeout - max(0.0, deadline - time.monotonic())
        if not problems:
            log("all %d users match the reference %.1f s after the last call was in Kafka" % (
                len(self.visitors), settled_after))
            # A clean stop flushes every changed user: the bodies must still match after it.
            survivor = self.children.procs["instance-b"]
            survivor.send_signal(signal.SIGTERM)
            try:
                status = survivor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise HarnessError("instance-b did not exit within 60 s of SIGTERM")
            if status != 0:
                problems.append((None, "instance-b exited %d on SIGTERM" % status))
            more, notes = self.mismatches(self.foldspace.snapshot())
            problems += more

        requests = self.foldspace.snapshot()
        anon_ids = {v.anon for v in self.visitors}
        parts = {}
        for p in self.collector.partition.values():
            parts[p] = parts.get(p, 0) + 1
        log("requests: %d (%d for anonymous ids, %d non-2xx, %d to other routes); calls per partition %s" % (
            len(requests), sum(r["id"] in anon_ids for r in requests), sum(r["status"] != 200 for r in requests),
            self.foldspace.others, dict(sorted(parts.items()))))
        with open(os.path.join(a.workdir, "requests.json"), "w") as f:
            json.dump(requests, f)
        with open(os.path.join(a.workdir, "collected.json"), "w") as f:  # the calls as the library sent them
            json.dump(self.collector.received, f, indent=1)
        with open(os.path.join(a.workdir, "calls.json"), "w") as f:
            json.dump([{"visitor": v.index, "call": c.describe()} for v in self.visitors for c in v.calls], f, indent=1)
        for n in notes:
            log("note (explained by the kill): " + n)
        if problems:
            log("FAIL (mode %s): %d mismatch(es) after %.0f s:" % (self.mode, len(problems), settled_after))
            for _, p in problems:
                print("  " + p)
            for v in list(dict.fromkeys(v for v, _ in problems if v is not None))[:6]:
                self.report_visitor(v, requests)
            print("instance-b's stderr ends:\n" + self.children.tail("instance-b", 15))
            return 1
        log("PASS (mode %s): %d visitors, %d calls; every user's last body is the fold of both ids' calls"
            % (self.mode, len(self.visitors), len(order)))
        return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", required=True)
    p.add_argument("--mode", choices=["identity", "messageid"], required=True)
    p.add_argument("--workdir", required=True, help="logs, pids and the records of the run go here")
    p.add_argument("--visitors", type=int, default=30)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=float, default=120, help="seconds for every user to match")
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    os.makedirs(args.workdir, exist_ok=True)
    check = Check(args)
    # SIGTERM (the shell script's trap) ends the children too, through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        status = check.run()
    except HarnessError as e:
        log("ERROR (mode %s): %s" % (args.mode, e))
        status = 2
    finally:
        if getattr(check, "collector", None):
            check.collector.close()
        if getattr(check, "offsets", None):
            check.offsets.close()
        check.children.end_all()
    sys.exit(status)


if __name__ == "__main__":
    main()
