"""Settings at non-default values, each checked where it shows (issue 11,
finding 8), and concurrent valid deliveries to the listener."""

from __future__ import annotations

import json
import socket
import threading

from conftest import assert_clean_exit, ext_env, new_stream, run_invokes
from delivery import READ_TIMEOUT, check_delivery
from lambda_sim import LambdaSim
from test_listener_hostile import listener_port, post


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_subscription_follows_the_settings(ext_bin, kinesalite):
    """LISTENER_PORT and the three BUFFER_* settings reach the subscription; TYPES
    picks what is forwarded (platform is still subscribed: it drives flushing)."""
    name, _ = new_stream(kinesalite)
    port = free_port()
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_LISTENER_PORT=str(port),
                  KINESIS_TELEMETRY_BUFFER_TIMEOUT_MS="60", KINESIS_TELEMETRY_BUFFER_MAX_ITEMS="2000",
                  KINESIS_TELEMETRY_BUFFER_MAX_BYTES="524288", KINESIS_TELEMETRY_TYPES="function")
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 4, 5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    sub = sim.subscription
    assert sub["destination"]["URI"] == f"http://sandbox.localdomain:{port}", sub
    assert sub["buffering"] == {"timeoutMs": 60, "maxItems": 2000, "maxBytes": 524288}, sub
    assert set(sub["types"]) == {"platform", "function"}, sub
    recs = kinesalite.read_all(name, expect=4 * 5 + 1 + 1, timeout=READ_TIMEOUT)
    types = {json.loads(r["data"])["type"] for r in recs}
    assert types == {"function", "kinesis-telemetry-extension.metrics"}, types
    on_stream = {r["data"] for r in recs}
    functions = [e for e in sim.delivered if b'"type":"function"' in e[:60]]
    assert functions and all(e in on_stream for e in functions)


def test_concurrent_deliveries_all_arrive(ext_bin, kinesalite):
    """Eight clients POST valid telemetry at once, 20 bodies each, while Lambda
    delivers its own: every event of every body is on the stream, once."""
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end"),
                   freeze=False) as sim:
        sim.start()
        port = listener_port(sim)
        sent, statuses = [], []
        lock = threading.Lock()

        def client(c):
            for b in range(20):
                events = [json.dumps({"time": "2026-01-01T00:00:00.000Z", "type": "function",
                                      "record": f"client {c} body {b} line {i}"}).encode() for i in range(10)]
                status = post(port, b"[" + b",".join(events) + b"]")
                with lock:
                    statuses.append(status)
                    sent.extend(events)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for _ in range(3):
            sim.invoke(log_lines=10)
        for t in threads:
            t.join(timeout=60)
        sim.invoke(log_lines=5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    assert statuses == [200] * 160
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + len(sent) + 1, timeout=READ_TIMEOUT)
    on_stream = [r["data"] for r in recs]
    assert all(on_stream.count(e) == 1 for e in sent)
    check_delivery(sim, recs, allow_strangers=True)
