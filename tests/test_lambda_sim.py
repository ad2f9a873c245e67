"""Self-test of tests/lambda_sim.py with a fake extension written in Python.

The fake extension (generated into tmp_path; its file name is its registration
name) registers, subscribes to the Telemetry API with a listener on port 0,
logs everything it sees to a JSON-lines file and loops on event/next until
SHUTDOWN. Its behaviour is steered by FAKE_* environment variables; with
FAKE_LMI_AWARE it adapts to Lambda Managed Instances the way extensions that
support them do (SHUTDOWN only and schema 2025-01-29 when the variable says
LMI, or after a 403 on INVOKE when it is absent).
"""

import base64
import collections
import json
import math
import os
import random
import stat
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lambda_sim import (  # noqa: E402
    BUSY_DROP_REASON, HANDLER_ERROR_TYPE, RIE_LMI, RIE_UID_GID, ExtensionExited, LambdaSim, SimError)

FAKE_SOURCE = r'''#!__PYTHON__
import base64, http.server, json, os, sys, threading, time, urllib.error, urllib.request

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
NAME = os.environ.get("FAKE_NAME") or os.path.basename(sys.argv[0])
OUT = os.environ["FAKE_OUT"]
lock = threading.Lock()


def log(kind, **kw):
    kw["k"] = kind
    kw["t"] = time.monotonic()
    kw["w"] = time.time()
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
last_post = [time.monotonic()]


class Listener(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        log("post_start")
        if os.environ.get("FAKE_SLOW_POST_S"):  # a listener slow to answer
            time.sleep(float(os.environ["FAKE_SLOW_POST_S"]))
        status = 200
        if fail_left[0] > 0:
            fail_left[0] -= 1
            status = 500
        else:
            log("post", body=base64.b64encode(body).decode(), ctype=self.headers.get("Content-Type"))
            ids = [e["record"]["requestId"] for e in json.loads(body) if e["type"] == "platform.report"]
            with cond:
                reports.update(ids)
                last_post[0] = time.monotonic()
                cond.notify_all()
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Listener)
srv.daemon_threads = True
threading.Thread(target=srv.serve_forever, daemon=True).start()

aware = bool(os.environ.get("FAKE_LMI_AWARE"))
init_type = os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE")
lmi = aware and init_type == "lambda-managed-instances"
log("env", init_type=init_type, uid=os.getuid(), gid=os.getgid(), groups=os.getgroups())


def register(events):
    st, hd, body = call("POST", "/2020-01-01/extension/register", json.dumps({"events": events}).encode(),
                        {"Lambda-Extension-Name": NAME, "Lambda-Extension-Accept-Feature": "accountId",
                         "Content-Type": "application/json"})
    log("register", status=st, body=body.decode(), events=events)
    return st, hd, body


st, hd, body = register(["SHUTDOWN"] if lmi else ["INVOKE", "SHUTDOWN"])
if st == 403 and aware and json.loads(body).get("errorType") == "Extension.InvalidEventType":
    lmi = True  # fallback detection: only LMI refuses INVOKE
    st, hd, body = register(["SHUTDOWN"])
if st != 200:
    print("fake: register failed", st, body.decode(), file=sys.stderr, flush=True)
    sys.exit(1)
eid = hd.get("Lambda-Extension-Identifier")

if os.environ.get("FAKE_EXIT_AFTER"):
    def exit_later():
        time.sleep(float(os.environ["FAKE_EXIT_AFTER"]))
        log("early_exit")
        print("fake: leaving early", file=sys.stderr, flush=True)
        os._exit(int(os.environ.get("FAKE_EXIT_CODE", "0")))
    threading.Thread(target=exit_later, daemon=True).start()

buffering = json.loads(os.environ.get("FAKE_BUFFERING") or '{"maxItems":1000,"maxBytes":262144,"timeoutMs":25}')
schema = os.environ.get("FAKE_SCHEMA") or ("2025-01-29" if lmi else "2022-12-13")
sub = {"schemaVersion": schema, "types": ["platform", "function", "extension"], "buffering": buffering,
       "destination": {"protocol": "HTTP", "URI": "http://sandbox.localdomain:%d/tele" % srv.server_address[1]}}
st, _, body = call("PUT", "/2022-07-01/telemetry", json.dumps(sub).encode(),
                   {"Lambda-Extension-Identifier": eid, "Content-Type": "application/json"})
log("subscribe", status=st, body=body.decode("utf-8", "replace"))
subscribed = st == 200
print("fake: subscribed, status %d, café ✓" % st, file=sys.stderr, flush=True)

if os.environ.get("FAKE_NO_ID_NEXT"):
    st, _, body = call("GET", "/2020-01-01/extension/event/next")
    log("next_without_id", status=st, body=body.decode())

if os.environ.get("FAKE_DOUBLE_NEXT"):
    def second_next():
        time.sleep(0.3)  # the first next is pending by then
        st, _, body = call("GET", "/2020-01-01/extension/event/next", headers={"Lambda-Extension-Identifier": eid})
        log("second_next", status=st, body=body.decode())
    threading.Thread(target=second_next, daemon=True).start()

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
    if lmi:  # no "last invoke" to wait for: wait for a quiet listener instead
        quiet = float(os.environ.get("FAKE_QUIET_S", "0.2"))
        end = time.monotonic() + max(0.0, left)
        with cond:
            while time.monotonic() < end and time.monotonic() - last_post[0] < quiet:
                cond.wait(0.02)
    log("exit", got_last_report=(last is None or last in reports))
    sys.exit(0)
'''


def make_fake(tmp_path, name="fake-ext", python=None):
    path = tmp_path / name
    path.write_text(FAKE_SOURCE.replace("__PYTHON__", python or sys.executable))
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


def test_line_type_extension_emits_the_lines_as_another_extension_s(fake):
    """invoke(line_type="extension"): the invocation's lines arrive as `extension` events
    (what another extension in the environment logs), text or JSON records as given."""
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out}, freeze=False) as sim:
        sim.start()
        sim.invoke(4, line_type="extension", line_factory=lambda i, lid: f"ext line {lid}")
        sim.invoke(2, line_type="extension", line_factory=lambda i, lid: {"message": lid})
        with pytest.raises(ValueError):
            sim.invoke(1, line_type="platform")
        sim.shutdown()
    received = [json.loads(ev) for b in sim.posted_bodies for ev in split_events(b)]
    ids = sim.extension_line_ids
    assert len(ids) == 6 and not set(ids) & set(sim.function_line_ids)
    for lid in ids:
        got = [p for p in received if lid in json.dumps(p["record"])]
        assert [p["type"] for p in got] == ["extension"], got


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


# ---------------------------------------------------------------- Lambda Managed Instances

def lmi_sim(ext, out, **kw):
    env = {"FAKE_OUT": out, "FAKE_LMI_AWARE": "1"}
    env.update(kw.pop("env", {}))
    return LambdaSim(ext, env, managed_instances=True, **kw)


def received_events(sim) -> list:
    return [json.loads(ev) for b in sim.posted_bodies for ev in split_events(b)]


def test_lmi_options_are_checked_without_a_process(tmp_path):
    with pytest.raises(ValueError, match="never freeze"):
        LambdaSim("/bin/true", managed_instances=True, freeze=True)
    with pytest.raises(ValueError, match="JSON"):
        LambdaSim("/bin/true", managed_instances=True, log_format="text")
    with pytest.raises(ValueError, match="600 ms"):
        LambdaSim("/bin/true", managed_instances=True, runtime_shutdown_ms=700)
    sim = LambdaSim("/bin/true", managed_instances=True, timeout_ms=300000)
    assert sim.freeze is False and sim.log_format == "json" and sim.init_timeout_ms == 300000
    assert LambdaSim("/bin/true", managed_instances=True).init_timeout_ms == 130000
    # the default mode is what it was
    d = LambdaSim("/bin/true")
    assert d.freeze is True and d.log_format == "text" and d.init_timeout_ms == 10000
    assert d.initialization_type == "on-demand"
    with pytest.raises(SimError, match="Managed Instances"):
        d.invoke_concurrent(2)


def test_lmi_shutdown_only_registration_no_freeze_next_pends_until_shutdown(fake):
    ext, out = fake
    with lmi_sim(ext, out) as sim:
        sim.start()
        assert sim.register_attempts == [(200, {"events": ["SHUTDOWN"]})]
        assert sim.registered_events == ["SHUTDOWN"]
        assert sim.subscription["schemaVersion"] == "2025-01-29"
        time.sleep(0.3)
        assert proc_state(sim.pid) != "T" and sim.freeze_count == 0
        sim.invoke_concurrent(4, log_lines=3)
        time.sleep(0.2)
        assert proc_state(sim.pid) != "T" and sim.freeze_count == 0
        assert len(sim.next_call_times) == 1, "event/next stays pending: no event before SHUTDOWN"
        sd = sim.shutdown()
        assert sd.exit_code == 0 and not sd.killed
        assert sim.violations == [] and sim.crash is None
        assert sim.lost_before_shutdown == []
    log = read_log(out)
    assert next(e for e in log if e["k"] == "env")["init_type"] == "lambda-managed-instances"
    events = [e["event"] for e in log if e["k"] == "event"]
    assert len(events) == 1 and list(events[0]) == ["eventType", "deadlineMs", "shutdownReason"]
    assert events[0]["eventType"] == "SHUTDOWN" and events[0]["shutdownReason"] == "spindown"
    got = received_events(sim)
    init = next(e["record"] for e in got if e["type"] == "platform.initStart")
    assert init["initializationType"] == "lambda-managed-instances"
    assert init["instanceId"] and init["instanceMaxMemory"] == 128 * 1024 * 1024
    assert next(e["record"] for e in got if e["type"] == "platform.extension")["events"] == ["SHUTDOWN"]
    assert all(e["record"]["initializationType"] == "lambda-managed-instances" for e in got
               if e["type"] in ("platform.initRuntimeDone", "platform.initReport"))
    # JSON log format: every function record is an object, the init line included
    assert all(isinstance(e["record"], dict) for e in got if e["type"] == "function")


def test_lmi_invoke_registration_is_refused_403_and_shutdown_only_works_after_it(fake):
    """Without the variable (fallback detection): INVOKE gets the emulator's 403, the
    extension stays unregistered and registers again for SHUTDOWN only."""
    ext, out = fake
    with lmi_sim(ext, out, lmi_init_type_env=False) as sim:
        sim.start()
        sim.invoke_concurrent(2, log_lines=2)
        sd = sim.shutdown()
        assert sd.exit_code == 0 and not sd.killed
        # no violation: without the variable, asking is the only way to find out
        assert sim.violations == [] and sim.crash is None
        assert [s for s, _ in sim.register_attempts] == [403, 200]
        assert sim.registered_events == ["SHUTDOWN"]
    log = read_log(out)
    assert next(e for e in log if e["k"] == "env")["init_type"] is None
    regs = [e for e in log if e["k"] == "register"]
    assert [r["status"] for r in regs] == [403, 200]
    assert json.loads(regs[0]["body"]) == {"errorType": "Extension.InvalidEventType",
                                           "errorMessage": "INVOKE: ErrorInvalidEventType"}


def test_lmi_extension_that_insists_on_invoke_crashes_init(fake):
    """An extension unaware of LMI (INVOKE + SHUTDOWN, exit on the 403) although the
    variable told it: a violation, and its exit is Extension.Crash."""
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out}, managed_instances=True, init_timeout_ms=5000) as sim:
        with pytest.raises(ExtensionExited) as ei:
            sim.start()
        assert "register failed" in str(ei.value)
        assert sim.register_attempts == [(403, {"events": ["INVOKE", "SHUTDOWN"]})]
        assert any("InvalidEventType" in v for v in sim.violations)
        assert any("Extension.Crash" in v for v in sim.violations)
        assert sim.crash["errorType"] == "Extension.Crash" and sim.crash["phase"] == "init"
        assert sim.crash["exit_code"] == 1


def test_lmi_second_next_while_one_pends_is_refused_403(fake):
    ext, out = fake
    with lmi_sim(ext, out, env={"FAKE_DOUBLE_NEXT": "1"}) as sim:
        sim.start()
        time.sleep(0.6)
        sd = sim.shutdown()
        assert sd.exit_code == 0 and not sd.killed  # the first next still got SHUTDOWN
        assert len(sim.violations) == 1 and "Extension.InvalidExtensionState" in sim.violations[0]
    second = next(e for e in read_log(out) if e["k"] == "second_next")
    assert second["status"] == 403
    body = json.loads(second["body"])
    assert body["errorType"] == "Extension.InvalidExtensionState"
    assert body["errorMessage"].startswith("State transition from Ready to Ready failed")


def test_lmi_subscription_needs_schema_2025_01_29(fake, tmp_path):
    ext, out = fake
    with lmi_sim(ext, out, env={"FAKE_SCHEMA": "2022-12-13"}) as sim:
        sim.start()
        sim.shutdown()
        assert sim.subscription is None and sim.subscribe_attempts[0][0] == 400
        assert any("schemaVersion '2022-12-13'" in v for v in sim.violations)
    # the option for a Lambda that would accept the older versions too
    out2 = str(tmp_path / "fake2.log")
    with lmi_sim(ext, out2, env={"FAKE_SCHEMA": "2022-12-13"}, lmi_schema_versions=("2022-12-13", "2025-01-29")) as sim:
        sim.start()
        sim.shutdown()
        assert sim.subscribe_attempts[0][0] == 200 and sim.violations == []


def test_lmi_concurrent_invocations_interleave_and_every_event_arrives(fake):
    ext, out = fake
    with lmi_sim(ext, out, seed=7) as sim:
        sim.start()
        results = sim.invoke_concurrent(20, log_lines=12, concurrency=8)
        assert [r.request_id for r in results] == sim.request_ids
        assert all(r.post_runtime_ms is None and not r.timed_out for r in results)
        sd = sim.shutdown()
        assert sd.exit_code == 0 and not sd.killed and sim.violations == []
        assert sim.lost_before_shutdown == [] and sim.dropped == []
    log = read_log(out)
    assert not any(e["k"] == "event" and e["event"]["eventType"] == "INVOKE" for e in log)
    bodies = [base64.b64decode(e["body"]) for e in log if e["k"] == "post"]
    assert bodies == sim.posted_bodies
    got = received_events(sim)
    inv = [e for e in got if e["type"] in ("platform.start", "platform.report")
           or (e["type"] == "function" and e["record"]["message"].split()[1] in sim.line_origin)]
    assert not any(e["type"] == "platform.runtimeDone" for e in got)
    # which invocation each event belongs to: platform records and JSON lines say so;
    # a plain line does not (the simulator knows it from the line id)
    def rid_of(e):
        rec = e["record"]
        if e["type"] != "function":
            return rec["requestId"]
        lid = rec["message"].split()[1]
        rid, kind = sim.line_origin[lid]
        if kind == "json":
            assert rec["requestId"] == rid and set(rec) == {"timestamp", "level", "message", "requestId"}
        else:
            assert set(rec) == {"timestamp", "level", "message"}
        return rid
    seq = [(rid_of(e), e["type"]) for e in inv]
    assert len(seq) == 20 * 14
    per = collections.defaultdict(list)
    for pos, (rid, typ) in enumerate(seq):
        per[rid].append((pos, typ))
    assert set(per) == set(sim.request_ids)
    for rid, evs in per.items():
        types = [t for _, t in evs]
        assert types == ["platform.start"] + ["function"] * 12 + ["platform.report"], (rid, types)
    # interleaved: most invocations have another one's events between their start and report
    spans = [(evs[0][0], evs[-1][0]) for evs in per.values()]
    assert sum(b - a + 1 > 14 for a, b in spans) >= 10
    assert max(sum(a <= p <= b for a, b in spans) for p in range(len(seq))) <= 8  # concurrency
    kinds = collections.Counter(k for _, k in sim.line_origin.values())
    assert kinds == {"json": 20 * 9, "text": 20 * 3}
    reports = [e["record"] for e in got if e["type"] == "platform.report"]
    assert all(set(r["metrics"]) == {"durationMs"} and r["status"] == "success" for r in reports)
    starts = [e["record"] for e in got if e["type"] == "platform.start"]
    assert all(s["functionArn"].endswith(":function:demo-fn") for s in starts)


def test_lmi_unconfirmed_details_are_options(fake):
    ext, out = fake
    with lmi_sim(ext, out, lmi_runtime_done=True, lmi_plain_lines="string",
                 lmi_request_id_key="AWSRequestId") as sim:
        sim.start()
        sim.invoke_concurrent(3, log_lines=4, line_kinds=("json", "text"))
        sim.shutdown()
        assert sim.violations == [] and sim.lost_before_shutdown == []
    got = received_events(sim)
    assert sum(e["type"] == "platform.runtimeDone" for e in got) == 3
    fn = [e["record"] for e in got if e["type"] == "function" and "init #" not in json.dumps(e["record"])]
    assert len(fn) == 12
    assert sum(isinstance(r, str) for r in fn) == 6
    assert all(r["AWSRequestId"] in sim.request_ids for r in fn if isinstance(r, dict))


@pytest.mark.timing
def test_lmi_run_traffic_sustains_5000_events_per_second(fake):
    ext, out = fake
    with lmi_sim(ext, out, capture_extension_logs=False) as sim:
        sim.start()
        res = sim.run_traffic(5000, 2.0, concurrency=16, log_lines=20)
        assert res.target_rate == 5000 and res.events >= 9500
        assert res.rate >= 4750, res
        assert res.invocations == len(sim.request_ids)
        sd = sim.shutdown()
        assert sd.exit_code == 0 and not sd.killed and sim.violations == []
        assert sim.lost_before_shutdown == [], len(sim.lost_before_shutdown)
        assert len(sim.delivered) >= res.events
    assert sim.traffic_results == [res]


def test_lmi_extension_exit_before_shutdown_tears_the_environment_down(fake):
    ext, out = fake
    with lmi_sim(ext, out, env={"FAKE_EXIT_AFTER": "0.5", "FAKE_EXIT_CODE": "0"}) as sim:
        sim.start()
        t0 = time.perf_counter()
        with pytest.raises(ExtensionExited) as ei:
            sim.run_traffic(500, 10.0, concurrency=4)
        assert time.perf_counter() - t0 < 3
        assert "Extension.Crash" in str(ei.value) and "leaving early" in str(ei.value)
        assert sim.crash["errorType"] == "Extension.Crash" and sim.crash["exit_code"] == 0
        assert sim.crash["phase"] == "invoke" and 1 <= len(sim.crash["in_flight"]) <= 4
        assert set(sim.crash["in_flight"]) <= set(sim.request_ids)
        assert len(sim.violations) == 1 and "Extension.Crash" in sim.violations[0]
        sd = sim.shutdown()  # the environment is gone already: nothing more happens
        assert sd.exit_code == 0 and not sd.killed and sd.shutdown_ms is None
        assert len(sim.violations) == 1


def test_lmi_shutdown_deadline_counts_the_runtime_exit(fake):
    """2 s in all from SIGTERM to the runtime: SHUTDOWN reaches the extension after the
    runtime's exit, with the same deadlineMs; SIGKILL at it."""
    ext, out = fake
    with lmi_sim(ext, out, env={"FAKE_IGNORE_SHUTDOWN": "1"}, runtime_shutdown_ms=300) as sim:
        sim.start()
        with pytest.raises(ValueError):
            sim.shutdown("timeout")
        t0 = time.time()
        sd = sim.shutdown("failure")
        assert sd.killed and sd.exit_code == -9
        assert 1550 <= sd.shutdown_ms < 2300  # SHUTDOWN answered -> SIGKILL
        assert any("shutdown deadline" in v for v in sim.violations)
    ev = next(e for e in read_log(out) if e["k"] == "event")
    assert ev["event"]["shutdownReason"] == "failure"
    assert 0.25 <= ev["w"] - t0 < 0.8
    assert 1.9 <= ev["event"]["deadlineMs"] / 1000.0 - t0 <= 2.1


def test_lmi_flush_before_shutdown_option_and_the_oracle(fake, tmp_path):
    """Events held in Lambda's buffer (timeoutMs 30 s) at SHUTDOWN: the oracle reports
    them lost unless Lambda flushes before SHUTDOWN, as the LMI emulator does."""
    ext, out = fake
    slow = json.dumps({"maxItems": 10000, "maxBytes": 1048576, "timeoutMs": 30000})
    with lmi_sim(ext, out, env={"FAKE_BUFFERING": slow}, capture_extension_logs=False) as sim:
        sim.start()
        sim.invoke_concurrent(5, log_lines=5)
        sim.shutdown()
        lost = sim.lost_before_shutdown
        assert len(lost) == len(sim.emitted) and sim.delivered == []
    out2 = str(tmp_path / "fake2.log")
    with lmi_sim(ext, out2, env={"FAKE_BUFFERING": slow}, capture_extension_logs=False,
                 flush_before_shutdown=True) as sim:
        sim.start()
        sim.invoke_concurrent(5, log_lines=5)
        sd = sim.shutdown()
        assert sd.exit_code == 0 and sim.violations == []
        assert sim.lost_before_shutdown == [] and len(sim.delivered) == len(sim.emitted)


# ---------------------------------------------------------------- failed invocations

def expected_failures(seed, fraction, n):
    """The documented rule: invocation k fails iff the k-th random() of a generator
    seeded with (seed or 0) * 7919 + 17 is below the fraction."""
    rng = random.Random((seed or 0) * 7919 + 17)
    return {k for k in range(n) if rng.random() < fraction}


def failed_indices(sim):
    return {i for i, rid in enumerate(sim.request_ids) if rid in sim.failed_request_ids}


def line_id_of(record):
    """The line id a function record carries: "line <id> ..." or "... simulated failure <id>"."""
    text = record["message"] if isinstance(record, dict) else record
    words = text.split()
    return words[1] if words[0] == "line" else words[-1]


def outcomes(events, typ):
    """request id -> (status, errorType or None) of every `typ` record."""
    return {e["record"]["requestId"]: (e["record"]["status"], e["record"].get("errorType"))
            for e in events if e["type"] == typ}


def assert_outcomes(sim, events, typ):
    got = outcomes(events, typ)
    assert set(got) == set(sim.request_ids), typ
    for rid, outcome in got.items():
        want = ("error", HANDLER_ERROR_TYPE) if rid in sim.failed_request_ids else ("success", None)
        assert outcome == want, (typ, rid, outcome)


def test_error_fraction_is_checked_without_a_process():
    for bad in (-0.01, 1.01, float("nan"), "often", None):
        with pytest.raises(ValueError, match="error_fraction"):
            LambdaSim("/bin/true", error_fraction=bad)
    assert LambdaSim("/bin/true").error_fraction == 0.0
    assert LambdaSim("/bin/true", error_fraction=1).error_fraction == 1.0
    # a generator of its own: the interleaving one draws what it drew before the option
    sim = LambdaSim("/bin/true", managed_instances=True, seed=7, error_fraction=0.5)
    assert sim._rng.random() == random.Random(7).random()


def test_error_fraction_picks_the_same_invocations_for_the_same_seed(fake, tmp_path):
    """200 LMI invocations at 0.1: the seed decides which fail, by the documented rule, so
    two runs with one seed fail the same ones and another seed fails others; the count
    is binomial (n=200, p=0.1: mean 20, sd 4.2)."""
    ext, _ = fake
    n, fraction = 200, 0.1
    picked = {}
    for run, seed in enumerate((11, 11, 12)):
        out = str(tmp_path / f"fake-{run}.log")
        with lmi_sim(ext, out, seed=seed, error_fraction=fraction, capture_extension_logs=False) as sim:
            sim.start()
            results = sim.invoke_concurrent(n, log_lines=1, concurrency=16)
            sim.shutdown()
            assert sim.violations == [] and sim.lost_before_shutdown == []
        idx = failed_indices(sim)
        assert idx == expected_failures(seed, fraction, n), seed
        assert [r.failed for r in results] == [i in idx for i in range(n)]
        assert_outcomes(sim, received_events(sim), "platform.report")
        picked[run] = idx
    assert picked[0] == picked[1]
    assert picked[0] != picked[2]
    sd = math.sqrt(n * fraction * (1 - fraction))
    for idx in picked.values():
        assert abs(len(idx) - n * fraction) <= 4 * sd, len(idx)


def test_failed_invocations_on_default_lambda_report_error_and_log_an_error_line(fake, tmp_path):
    """Text log format, freeze as usual: the seed picks the same invocations as on LMI
    (by start order); a failed one's runtimeDone and report say status "error" with
    errorType, and its last function line is the runtime's [ERROR] line."""
    ext, out = fake
    n, seed, fraction = 12, 5, 0.3
    with LambdaSim(ext, {"FAKE_OUT": out}, seed=seed, error_fraction=fraction,
                   capture_extension_logs=False) as sim:
        sim.start()
        results = [sim.invoke(2) for _ in range(n)]
        sd = sim.shutdown()
        assert sd.exit_code == 0 and sim.violations == []
    idx = failed_indices(sim)
    assert idx == expected_failures(seed, fraction, n) and 0 < len(idx) < n, idx
    assert [r.failed for r in results] == [i in idx for i in range(n)]
    assert all(not r.timed_out for r in results)
    got = received_events(sim)
    assert_outcomes(sim, got, "platform.runtimeDone")
    assert_outcomes(sim, got, "platform.report")
    # the [ERROR] line: one per failed invocation, registered, right before its runtimeDone
    errors = [e["record"] for e in got if e["type"] == "function" and e["record"].startswith("[ERROR]")]
    assert len(errors) == len(idx)
    for rec in errors:
        assert rec.startswith(f"[ERROR] {HANDLER_ERROR_TYPE}: simulated failure "), rec
        lid = line_id_of(rec)
        assert lid in sim.function_line_ids
        rid, kind = sim.line_origin[lid]
        assert rid in sim.failed_request_ids and kind == "text"
    produced = [json.loads(b) for b in sim.produced]
    for rid in sim.failed_request_ids:
        at = next(i for i, e in enumerate(produced)
                  if e["type"] == "platform.runtimeDone" and e["record"]["requestId"] == rid)
        last = produced[at - 1]
        assert last["type"] == "function" and sim.line_origin[line_id_of(last["record"])][0] == rid
    assert set(sim.line_origin) == {line_id_of(r) for r in errors}
    assert len(sim.function_line_ids) == 1 + n * 2 + len(idx)


def test_fail_override_and_json_error_line_on_default_lambda(fake):
    """fail= overrides the fraction either way; in the JSON log format the error line is
    the runtime logger's object at level ERROR with the request id."""
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out}, log_format="json", freeze=False, error_fraction=1.0,
                   capture_extension_logs=False) as sim:
        sim.start()
        ok = sim.invoke(1, fail=False)
        bad = sim.invoke(1, fail=True)
        by_fraction = sim.invoke(1)
        sim.shutdown()
        assert sim.violations == []
    assert (ok.failed, bad.failed, by_fraction.failed) == (False, True, True)
    assert sim.failed_request_ids == {bad.request_id, by_fraction.request_id}
    got = received_events(sim)
    assert_outcomes(sim, got, "platform.runtimeDone")
    assert_outcomes(sim, got, "platform.report")
    errors = [e["record"] for e in got if e["type"] == "function" and e["record"].get("level") == "ERROR"]
    assert [r["requestId"] for r in errors] == [bad.request_id, by_fraction.request_id]
    for rec in errors:
        assert set(rec) == {"timestamp", "level", "message", "requestId"}
        assert rec["message"].startswith(f"{HANDLER_ERROR_TYPE}: simulated failure ")
        assert sim.line_origin[line_id_of(rec)] == (rec["requestId"], "json")


def test_lmi_failed_invocations_report_error_and_log_an_error_line(fake):
    """LMI: no runtimeDone, the report says status "error" with errorType; the error line
    is a JSON line with the request id, the invocation's last function line. fail(index,
    request id) overrides the fraction, index in start order."""
    ext, out = fake
    with lmi_sim(ext, out, seed=3, error_fraction=1.0, capture_extension_logs=False) as sim:
        sim.start()
        res = sim.invoke_concurrent(12, log_lines=3, concurrency=4, fail=lambda i, rid: i % 3 != 0)
        ok = sim.invoke(2, fail=False)
        by_fraction = sim.invoke(2)
        sim.shutdown()
        assert sim.violations == [] and sim.lost_before_shutdown == []
    assert failed_indices(sim) == {i for i in range(12) if i % 3} | {13}
    assert [r.failed for r in res] == [bool(i % 3) for i in range(12)]
    assert not ok.failed and by_fraction.failed
    got = received_events(sim)
    assert not any(e["type"] == "platform.runtimeDone" for e in got)
    assert_outcomes(sim, got, "platform.report")
    seq = collections.defaultdict(list)
    for e in got:
        rec = e["record"]
        if e["type"] in ("platform.start", "platform.report"):
            seq[rec["requestId"]].append(e["type"])
        elif e["type"] == "function" and line_id_of(rec) in sim.line_origin:
            rid, _ = sim.line_origin[line_id_of(rec)]
            seq[rid].append("error" if rec.get("level") == "ERROR" else "function")
            if rec.get("level") == "ERROR":
                assert rec["requestId"] == rid and set(rec) == {"timestamp", "level", "message", "requestId"}
    for rid in sim.request_ids:
        lines = 2 if rid in (ok.request_id, by_fraction.request_id) else 3
        want = ["platform.start"] + ["function"] * lines
        want += ["error"] if rid in sim.failed_request_ids else []
        assert seq[rid] == want + ["platform.report"], (rid, seq[rid])


def test_lmi_failures_with_runtime_done_and_in_traffic(fake):
    """lmi_runtime_done: runtimeDone carries the error too; run_traffic takes fail= as
    well; the error line uses lmi_request_id_key."""
    ext, out = fake
    with lmi_sim(ext, out, lmi_runtime_done=True, lmi_request_id_key="AWSRequestId",
                 capture_extension_logs=False) as sim:
        sim.start()
        res = sim.run_traffic(3000, 0.3, concurrency=4, log_lines=2, fail=lambda i, rid: i % 2 == 1)
        sim.shutdown()
        assert sim.violations == [] and sim.lost_before_shutdown == []
    assert res.invocations == len(sim.request_ids) >= 10
    assert failed_indices(sim) == {i for i in range(res.invocations) if i % 2}
    got = received_events(sim)
    assert_outcomes(sim, got, "platform.runtimeDone")
    assert_outcomes(sim, got, "platform.report")
    errors = [e["record"] for e in got if e["type"] == "function" and isinstance(e["record"], dict)
              and e["record"].get("level") == "ERROR"]
    assert sorted(r["AWSRequestId"] for r in errors) == sorted(sim.failed_request_ids)


def test_error_fraction_zero_changes_nothing(fake, tmp_path):
    """The default: every invocation succeeds on both models, nothing more is logged."""
    ext, out = fake
    with LambdaSim(ext, {"FAKE_OUT": out}, seed=1) as sim:
        sim.start()
        results = [sim.invoke(3) for _ in range(4)]
        sim.shutdown()
        assert sim.violations == []
    out2 = str(tmp_path / "fake2.log")
    with lmi_sim(ext, out2, seed=1, lmi_runtime_done=True) as lmi:
        lmi.start()
        results += lmi.invoke_concurrent(30, log_lines=3, concurrency=8)
        lmi.shutdown()
        assert lmi.violations == []
    for s, lines in ((sim, 1 + 4 * 3), (lmi, 1 + 30 * 3)):
        assert s.error_fraction == 0.0 and s.failed_request_ids == set()
        got = received_events(s)
        for typ in ("platform.runtimeDone", "platform.report"):
            recs = [e["record"] for e in got if e["type"] == typ]
            assert len(recs) == len(s.request_ids)
            assert all(r["status"] == "success" and "errorType" not in r for r in recs), typ
        assert not any("simulated failure" in json.dumps(e["record"]) for e in got if e["type"] == "function")
        assert len(s.function_line_ids) == lines
    assert sim.line_origin == {} and not any(r.failed for r in results)


# ------------------------------------------- what AWS's runtime interface emulator does

def test_emulator_options_are_checked_without_a_process():
    for bad in ({"lmi_json_lines": "dict"}, {"busy_batches": "queue"}, {"run_as": (993,)},
                {"run_as": ("993", 990)}, {"merged_lines": 1.5}, {"merged_lines": "often"},
                {"merged_lines": 0.1},  # lines still objects
                {"max_concurrency": 0}, {"max_concurrency": True}):
        with pytest.raises(ValueError):
            LambdaSim("/bin/true", managed_instances=True, **bad)
    with pytest.raises(ValueError, match="Managed Instances"):
        LambdaSim("/bin/true", max_concurrency=4)
    sim = LambdaSim("/bin/true", managed_instances=True, merged_lines=0.1, max_concurrency=4, **RIE_LMI)
    assert sim.busy_batches == "drop" and sim.lmi_json_lines == "string"
    d = LambdaSim("/bin/true", managed_instances=True)  # defaults: what real Lambda does
    assert (d.busy_batches, d.lmi_json_lines, d.lmi_plain_lines, d.run_as, d.merged_lines,
            d.max_concurrency) == ("hold", "object", "wrapped", None, 0.0, None)


def test_lmi_string_records_carry_json_and_request_ids(fake):
    """The emulator's records: every function line a string; the logger's JSON lines
    are JSON text inside that string, with the request id."""
    ext, out = fake
    with lmi_sim(ext, out, **RIE_LMI) as sim:
        sim.start()
        sim.invoke_concurrent(6, log_lines=8, concurrency=3, fail=lambda i, rid: i == 0)
        sim.shutdown()
        assert sim.violations == [] and sim.lost_before_shutdown == []
    fn = [e["record"] for e in received_events(sim) if e["type"] == "function"]
    assert fn and all(isinstance(r, str) for r in fn)
    inner = [json.loads(r) for r in fn if r.startswith("{")]
    assert len(inner) == 6 * 6 + 1  # 3 JSON lines in 4, and the failed one's ERROR line
    assert all(v["requestId"] in sim.request_ids for v in inner)
    assert sum(v["level"] == "ERROR" for v in inner) == 1


def _in_flight_max(log):
    """Most POSTs the fake had open at once (post_start .. post)."""
    n = top = 0
    for e in log:
        if e["k"] == "post_start":
            n += 1
            top = max(top, n)
        elif e["k"] == "post":
            n -= 1
    return top


@pytest.mark.parametrize("mode", ["hold", "drop"])
def test_one_batch_in_flight_the_next_held_or_dropped(fake, mode):
    """A listener that takes 300 ms to answer: one POST at a time either way; real
    Lambda holds the batch that forms meanwhile (nothing lost), the emulator drops it
    and says so in platform.logsDropped of the next batch."""
    ext, out = fake
    with lmi_sim(ext, out, busy_batches=mode, capture_extension_logs=False,
                 env={"FAKE_SLOW_POST_S": "0.3"}) as sim:
        sim.start()
        for _ in range(4):
            sim.invoke_concurrent(4, log_lines=5)
            time.sleep(0.1)
        sim.invoke_concurrent(1, log_lines=1)
        time.sleep(0.6)  # the last batch goes out and carries the count of the dropped
        sim.shutdown()
        assert sim.violations == []
    assert _in_flight_max(read_log(out)) == 1
    got = received_events(sim)
    drops = [e["record"] for e in got if e["type"] == "platform.logsDropped"]
    if mode == "hold":
        assert sim.lost_before_shutdown == [] and sim.dropped == [] and drops == []
        return
    assert sim.busy_dropped_batches, "no batch was ready while one was in flight"
    assert all(d["reason"] == BUSY_DROP_REASON for d in drops) and drops
    assert sum(d["droppedRecords"] for d in drops) == len(sim.dropped)
    assert sum(d["droppedBytes"] for d in drops) == sum(len(b) for b in sim.dropped)
    assert sorted(sim.lost_before_shutdown) == sorted(sim.dropped)
    assert set(sim.delivered).isdisjoint(sim.dropped)


def test_run_as_the_emulator_uid_and_gid(tmp_path_factory):
    """run_as=(993, 990): the extension runs as that user, with no supplementary
    groups (the simulator runs as root); a path it cannot reach is named."""
    if os.geteuid() != 0:
        pytest.skip("run_as needs root (CI runs as root)")
    import tempfile
    d = tempfile.mkdtemp(prefix="lambdasim-uid-")
    try:
        os.chmod(d, 0o777)
        # a script read and run by that user, with an interpreter it can reach (the
        # virtualenv's may link into root's home)
        python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        ext = make_fake(__import__("pathlib").Path(d), python=python)
        os.chmod(ext, 0o755)
        out = os.path.join(d, "fake.log")
        with lmi_sim(ext, out, run_as=RIE_UID_GID) as sim:
            sim.start()
            sim.invoke_concurrent(3, log_lines=3)
            sd = sim.shutdown()
            assert sd.exit_code == 0 and sim.violations == [] and sim.lost_before_shutdown == []
        env = next(e for e in read_log(out) if e["k"] == "env")
        assert (env["uid"], env["gid"], env["groups"]) == (993, 990, [])
        hidden = tmp_path_factory.mktemp("hidden")  # 0700, root's
        os.chmod(hidden, 0o700)
        ext2 = make_fake(hidden)
        with LambdaSim(ext2, {"FAKE_OUT": out}, run_as=RIE_UID_GID) as sim:
            with pytest.raises(SimError, match="uid 993.*o\\+x"):
                sim.start()
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def test_merged_lines_from_concurrent_workers(fake):
    """merged_lines: a line written without its newline takes the next line of another
    invocation into its record, and its newline comes alone (an empty record). Every
    line is still there once, in one record or another."""
    ext, out = fake
    with lmi_sim(ext, out, merged_lines=0.2, seed=3, **RIE_LMI) as sim:
        sim.start()
        sim.invoke_concurrent(30, log_lines=6, concurrency=6)
        sim.shutdown()
        assert sim.violations == [] and sim.lost_before_shutdown == []
    fn = [e["record"] for e in received_events(sim) if e["type"] == "function"]
    assert len(sim.merged_records) >= 10 and fn.count("") == sim.empty_records == len(sim.merged_records)
    for m in sim.merged_records:
        assert m in fn and m.count("line ") >= 2, m
    text = "\n".join(fn)
    lids = [lid for lid in sim.function_line_ids if lid in sim.line_origin]
    assert len(lids) == 30 * 6 and all(text.count(lid) == 1 for lid in lids)
    # the two halves of a merged record come from different invocations
    for m in sim.merged_records[:5]:
        owners = {sim.line_origin[lid][0] for lid in lids if lid in m}
        assert len(owners) == 2, m


def test_no_idle_worker_is_runtime_unavailable(fake):
    """max_concurrency workers: callers beyond them are refused at once
    (Runtime.Unavailable), with no telemetry; at most that many run at once."""
    ext, out = fake
    with lmi_sim(ext, out, max_concurrency=3, seed=5) as sim:
        sim.start()
        res = sim.invoke_concurrent(40, log_lines=4, concurrency=5)
        sim.shutdown()
        assert sim.violations == [] and sim.lost_before_shutdown == []
    assert sim.unavailable and len(res) + len(sim.unavailable) == 40
    assert len(res) == len(sim.request_ids)
    got = received_events(sim)
    text = "".join(json.dumps(e) for e in got)
    assert not any(rid in text for rid in sim.unavailable)
    seq = [e["record"]["requestId"] for e in got if e["type"] in ("platform.start", "platform.report")]
    running = top = 0
    for i, rid in enumerate(seq):
        running += 1 if rid not in seq[:i] else -1
        top = max(top, running)
    assert top <= 3


def test_resources_are_read_from_proc(fake):
    ext, out = fake
    with lmi_sim(ext, out) as sim:
        sim.start()
        r = sim.resources()
        assert r.rss_kb > 1000 and r.fds >= 3 and r.threads >= 2 and r.cpu_ticks >= 0
        assert r.cpu_ns is None or r.cpu_ns > 0
        stop = sim.sample_resources(0.02)
        sim.invoke_concurrent(20, log_lines=5, concurrency=4)
        time.sleep(0.2)
        samples = stop()
        assert len(samples) >= 5 and samples == sorted(samples, key=lambda s: s.t)
        sim.shutdown()
    assert sim.resources() is None
