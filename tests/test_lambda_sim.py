"""Self-test of tests/lambda_sim.py with a fake extension written in Python.

The fake extension (generated into tmp_path; its file name is its registration
name) registers, subscribes to the Telemetry API with a listener on port 0,
logs everything it sees to a JSON-lines file and loops on event/next until
SHUTDOWN. Its behaviour is steered by FAKE_* environment variables.
"""

import base64
import collections
import json
import os
import stat
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lambda_sim import ExtensionExited, LambdaSim, SimError  # noqa: E402

FAKE_SOURCE = r'''#!__PYTHON__
import base64, http.server, json, os, sys, threading, time, urllib.error, urllib.request

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
NAME = os.environ.get("FAKE_NAME") or os.path.basename(sys.argv[0])
OUT = os.environ["FAKE_OUT"]
lock = threading.Lock()


def log(kind, **kw):
    kw["k"] = kind
    kw["t"] = time.monotonic()
    with lock, open(OUT, "a") as f:
        f.write(json.dumps(kw) + "\n")


def call(method, path, body=None, headers=None):
    req = urllib.request.Request("http://" + API + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


reports = set()
cond = threading.Condition()
fail_left = [int(os.environ.get("FAKE_FAIL_FIRST", "0"))]


class Listener(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = 200
        if fail_left[0] > 0:
            fail_left[0] -= 1
            status = 500
        else:
            log("post", body=base64.b64encode(body).decode(), ctype=self.headers.get("Content-Type"))
            ids = [e["record"]["requestId"] for e in json.loads(body) if e["type"] == "platform.report"]
            with cond:
                reports.update(ids)
                cond.notify_all()
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Listener)
srv.daemon_threads = True
threading.Thread(target=srv.serve_forever, daemon=True).start()

st, hd, body = call("POST", "/2020-01-01/extension/register",
                    json.dumps({"events": ["INVOKE", "SHUTDOWN"]}).encode(),
                    {"Lambda-Extension-Name": NAME, "Lambda-Extension-Accept-Feature": "accountId",
                     "Content-Type": "application/json"})
log("register", status=st, body=body.decode())
if st != 200:
    print("fake: register failed", st, body.decode(), file=sys.stderr, flush=True)
    sys.exit(1)
eid = hd.get("Lambda-Extension-Identifier")

buffering = json.loads(os.environ.get("FAKE_BUFFERING") or '{"maxItems":1000,"maxBytes":262144,"timeoutMs":25}')
sub = {"schemaVersion": "2022-12-13", "types": ["platform", "function", "extension"], "buffering": buffering,
       "destination": {"protocol": "HTTP", "URI": "http://sandbox.localdomain:%d/tele" % srv.server_address[1]}}
st, _, body = call("PUT", "/2022-07-01/telemetry", json.dumps(sub).encode(),
                   {"Lambda-Extension-Identifier": eid, "Content-Type": "application/json"})
log("subscribe", status=st, body=body.decode("utf-8", "replace"))
subscribed = st == 200
print("fake: subscribed, status %d, café ✓" % st, file=sys.stderr, flush=True)

if os.environ.get("FAKE_NO_ID_NEXT"):
    st, _, body = call("GET", "/2020-01-01/extension/event/next")
    log("next_without_id", status=st, body=body.decode())

last = None
while True:
    log("next_call")
    st, hd, body = call("GET", "/2020-01-01/extension/event/next", headers={"Lambda-Extension-Identifier": eid})
    ev = json.loads(body)
    log("event", event=ev, status=st)
    if ev["eventType"] == "INVOKE":
        last = ev["requestId"]
        print('fake: invoke %s "quoted" 🚀' % last, file=sys.stderr, flush=True)
        if os.environ.get("FAKE_CRASH_ON_INVOKE"):
            print("fake: boom, crashing on purpose", file=sys.stderr, flush=True)
            os._exit(3)
        continue
    if os.environ.get("FAKE_IGNORE_SHUTDOWN"):
        time.sleep(60)
    # Wait (within the deadline) for the report of the last invoke, then exit.
    left = ev["deadlineMs"] / 1000.0 - time.time() - 0.3
    with cond:
        cond.wait_for(lambda: not subscribed or last is None or last in reports, timeout=max(0.0, left))
    log("exit", got_last_report=(last is None or last in reports))
    sys.exit(0)
'''


def make_fake(tmp_path, name="fake-ext"):
    path = tmp_path / name
    path.write_text(FAKE_SOURCE.replace("__PYTHON__", sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def read_log(out):
    if not os.path.exists(out):
        return []
    with open(out) as f:
        return [json.loads(line) for line in f if line.strip()]


def split_events(body: bytes) -> list:
    """Split a delivered JSON array into the exact bytes of its elements."""
    text = body.decode("utf-8")
    dec = json.JSONDecoder()
    assert text[0] == "["
    pos, out = 1, []
    while text[pos] != "]":
        _, end = dec.raw_decode(text, pos)
        out.append(text[pos:end].encode("utf-8"))
        pos = end
        if text[pos] == ",":
            pos += 1
    return out


def proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def fake(tmp_path):
    out = str(tmp_path / "fake.log")
    return make_fake(tmp_path), out


def test_five_invokes_byte_exact_and_report_ordering(fake):
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out}, freeze=True, timeout_ms=3000) as sim:
        sim.start()
        assert sim.register_ms is not None and sim.init_ms >= sim.register_ms
        assert sim.register_headers["Lambda-Extension-Name"] == "fake-ext"
        for _ in range(5):
            res = sim.invoke(20, runtime_ms=5, idle_ms=20)
            assert not res.timed_out and res.post_runtime_ms is not None
            assert proc_state(sim.pid) == "T", "extension must be SIGSTOPped between invokes"
        sd = sim.shutdown()
        assert sd.exit_code == 0 and not sd.killed and sd.shutdown_ms is not None
        assert sim.violations == []
        assert len(sim.post_runtime_ms) == 5 and sim.freeze_count == 6  # after init + 5 invokes

    log = read_log(out)
    reg = next(e for e in log if e["k"] == "register")
    assert reg["status"] == 200
    assert json.loads(reg["body"]) == {"functionName": "demo-fn", "functionVersion": "$LATEST",
                                       "handler": "index.handler", "accountId": "123456789012"}
    assert next(e for e in log if e["k"] == "subscribe")["status"] == 200
    assert log[-1]["k"] == "exit" and log[-1]["got_last_report"] is True

    # Byte for byte: what the fake received is exactly what the simulator POSTed.
    bodies = [base64.b64decode(e["body"]) for e in log if e["k"] == "post"]
    assert all(e["ctype"] == "application/json" for e in log if e["k"] == "post")
    assert bodies == sim.posted_bodies
    received = [ev for b in bodies for ev in split_events(b)]
    assert received == sim.delivered
    assert b"".join(b"[" + b",".join(batch) + b"]" for _, batch in sim.delivery_log) == b"".join(bodies)

    # Everything but late extension lines arrived; nothing was dropped.
    assert sim.dropped == []
    missing = collections.Counter(sim.emitted) - collections.Counter(received)
    assert all(json.loads(m)["type"] == "extension" for m in missing), missing
    parsed = [json.loads(ev) for ev in received]
    types = collections.Counter(p["type"] for p in parsed)
    for t, n in {"platform.initStart": 1, "platform.initRuntimeDone": 1, "platform.initReport": 1,
                 "platform.extension": 1, "platform.telemetrySubscription": 1, "platform.start": 5,
                 "platform.runtimeDone": 5, "platform.report": 5, "function": 101}.items():
        assert types[t] == n, (t, types)
    assert types["extension"] >= 5
    texts = [p["record"] for p in parsed if p["type"] == "function"]
    for lid in sim.function_line_ids:
        assert sum(lid in t for t in texts) == 1
    # The tricky bytes made it through unchanged: raw UTF-8, \u escapes, escaped quotes.
    blob = b"".join(bodies)
    assert "café".encode() in blob and "🚀".encode() in blob
    assert b"\\u00e9" in blob and b"\\ud83d" in blob and b'\\"quoted\\"' in blob and b'\\\\\\"escaped' in blob and b"\\u001b" in blob
    reports = [p for p in parsed if p["type"] == "platform.report"]
    assert "initDurationMs" in reports[0]["record"]["metrics"]
    assert all("initDurationMs" not in r["record"]["metrics"] for r in reports[1:])

    # The report of invoke N arrives after the extension's next call that ends invoke N.
    rids = sim.request_ids
    for n, rid in enumerate(rids):
        inv_idx = next(i for i, e in enumerate(log) if e["k"] == "event" and e["event"].get("requestId") == rid)
        end_next_idx = next(i for i in range(inv_idx + 1, len(log)) if log[i]["k"] == "next_call")
        post_idx = next(i for i, e in enumerate(log) if e["k"] == "post"
                        and any(p["type"] == "platform.report" and p["record"]["requestId"] == rid
                                for p in json.loads(base64.b64decode(e["body"]))))
        assert post_idx > end_next_idx, f"report of invoke {n} delivered before the extension's next"
        # ... and after runtimeDone of the same invoke (it is queued after it)
        rd_idx = next(i for i, e in enumerate(log) if e["k"] == "post"
                      and any(p["type"] == "platform.runtimeDone" and p["record"]["requestId"] == rid
                              for p in json.loads(base64.b64decode(e["body"]))))
        assert rd_idx <= post_idx
    invokes = [e["event"] for e in log if e["k"] == "event" and e["event"]["eventType"] == "INVOKE"]
    assert [e["requestId"] for e in invokes] == rids
    assert all(e["invokedFunctionArn"] == "arn:aws:lambda:us-east-1:123456789012:function:demo-fn"
               for e in invokes)
    shut = [e["event"] for e in log if e["k"] == "event" and e["event"]["eventType"] == "SHUTDOWN"]
    assert len(shut) == 1 and shut[0]["shutdownReason"] == "spindown"


def test_json_log_format_and_no_freeze(fake):
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out}, freeze=False, log_format="json") as sim:
        sim.start()
        sim.invoke(8, idle_ms=60)
        assert proc_state(sim.pid) != "T"
        sim.invoke(8)
        sim.shutdown()
        assert sim.violations == []
    received = [json.loads(ev) for b in sim.posted_bodies for ev in split_events(b)]
    funcs = [p["record"] for p in received if p["type"] == "function"]
    inv = [f for f in funcs if "requestId" in f]
    assert len(inv) == 16 and all(set(f) == {"timestamp", "level", "message", "requestId"} for f in inv)


def test_wrong_extension_name_is_refused_403(fake):
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out, "FAKE_NAME": "not-my-file-name"}, init_timeout_ms=5000) as sim:
        with pytest.raises(SimError) as ei:
            sim.start()
        assert "register failed" in str(ei.value)  # the message carries the extension's output tail
        assert any("InvalidExtensionName" in v for v in sim.violations)
    reg = next(e for e in read_log(out) if e["k"] == "register")
    assert reg["status"] == 403
    assert json.loads(reg["body"])["errorType"] == "Extension.InvalidExtensionName"


def test_invalid_buffering_is_refused_400(fake):
    ext, out = fake
    bad = json.dumps({"maxItems": 10, "maxBytes": 262144, "timeoutMs": 25})
    with LambdaSim(ext, {"FAKE_OUT": out, "FAKE_BUFFERING": bad, "FAKE_NO_ID_NEXT": "1"}) as sim:
        sim.start()
        sim.invoke(3)
        sim.shutdown()
        assert sim.subscription is None and sim.telemetry_posts == 0 and sim.emitted == []
        assert any("maxItems" in v for v in sim.violations)
        assert any("MissingExtensionIdentifier" in v for v in sim.violations)
    log = read_log(out)
    sub = next(e for e in log if e["k"] == "subscribe")
    assert sub["status"] == 400
    assert json.loads(sub["body"])["errorType"] == "ValidationError"
    assert next(e for e in log if e["k"] == "next_without_id")["status"] == 403


def test_telemetry_mode_202_delivers_nothing(fake):
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out}, telemetry_mode="202") as sim:
        sim.start()
        sim.invoke(5)
        sim.invoke(5)
        sd = sim.shutdown()
        assert sd.exit_code == 0 and not sd.killed
        assert sim.violations == []
        assert sim.telemetry_posts == 0 and sim.emitted == [] and sim.subscription is not None
    log = read_log(out)
    assert next(e for e in log if e["k"] == "subscribe")["status"] == 202
    assert not any(e["k"] == "post" for e in log)


def test_ignored_shutdown_is_sigkilled_at_deadline(fake):
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out, "FAKE_IGNORE_SHUTDOWN": "1"}, shutdown_deadline_ms=500) as sim:
        sim.start()
        sim.invoke(2)
        t0 = time.perf_counter()
        sd = sim.shutdown()
        elapsed = (time.perf_counter() - t0) * 1000
        assert sd.killed and sd.exit_code == -9
        assert 450 <= sd.shutdown_ms < 1500 and elapsed < 2000
        assert any("shutdown deadline" in v for v in sim.violations)


def test_crashing_extension_fails_fast_with_output_tail(fake):
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out, "FAKE_CRASH_ON_INVOKE": "1"}, timeout_ms=20000) as sim:
        sim.start()
        t0 = time.perf_counter()
        with pytest.raises(ExtensionExited) as ei:
            sim.invoke(2)
        assert time.perf_counter() - t0 < 5
        assert "boom" in str(ei.value) and "code 3" in str(ei.value)


def test_failed_posts_are_retried_and_overflow_is_reported(fake):
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out, "FAKE_FAIL_FIRST": "3"}, buffer_cap_bytes=6000,
                   capture_extension_logs=False) as sim:
        sim.start()
        sim.invoke(60, idle_ms=10)
        sim.invoke(5)
        sim.shutdown()
        assert sim.telemetry_post_failures == 3
        assert [v for v in sim.violations if "HTTP 500" not in v] == []
        assert sim.dropped, "a 60-line burst over a 6000-byte cap must drop"
        delivered = [json.loads(e) for e in sim.delivered]
        drops = [e["record"] for e in delivered if e["type"] == "platform.logsDropped"]
        assert drops and sum(d["droppedRecords"] for d in drops) == len(sim.dropped)
        assert sum(d["droppedBytes"] for d in drops) == sum(map(len, sim.dropped))
        # Accounting: every queued event is delivered, dropped or still pending.
        acc = collections.Counter(sim.delivered) + collections.Counter(sim.dropped) \
            + collections.Counter(sim.undelivered)
        assert acc == collections.Counter(sim.emitted)
    bodies = [base64.b64decode(e["body"]) for e in read_log(out) if e["k"] == "post"]
    assert bodies == sim.posted_bodies
