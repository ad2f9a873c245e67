"""Hostile input at the telemetry listener (issue 3): whatever reaches the
listener's port, the extension answers clearly, does not crash, keeps its
memory bounded, and keeps delivering the real telemetry the simulator sends
meanwhile. The simulator runs with freeze=False so the extension is never
stopped while the tests talk to its listener."""

from __future__ import annotations

import collections
import http.client
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from conftest import ext_env, new_stream
from delivery import (READ_TIMEOUT, assert_run_ok, check_delivery, final_metrics, own_records,
                      shutdown_counters)
from lambda_sim import LambdaSim

MIB = 1 << 20


def listener_port(sim: LambdaSim) -> int:
    return urlsplit(sim.subscription["destination"]["URI"]).port


def vmhwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def post(port: int, body: bytes, path: str = "/", method: str = "POST", headers=None,
         timeout: float = 10) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, return whatever comes back before the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out:
                    break
        except socket.timeout:
            pass
        return out


def finish(sim: LambdaSim, kinesalite, name: str, extra_records: int = 0):
    sim.invoke(log_lines=5)
    res = sim.shutdown()
    assert_run_ok(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1 + extra_records,
                               timeout=READ_TIMEOUT)
    return res, recs


UNPARSEABLE = [
    b'{"not":"an array"}',
    b'"a string"',
    b"123",
    b"null",
    b"",  # an empty body
    b"[1,",  # cut short
    b"\xff\xfe\xfd",  # not UTF-8
    b'[{"time":"t","type":"function","record":"\xff\xfe bad utf-8 inside"}]',
    b"[" * 100_000,  # deeply nested: must not blow the parser's stack
    b'[{"a":' * 50_000,
    b"[" * 100_000 + b"]" * 100_000,  # deeply nested and well-formed
]


def test_malformed_bodies_are_answered_200_and_kept_as_markers(ext_bin, kinesalite):
    """Bodies that are not a JSON array of events (objects, scalars, empty, cut short,
    invalid UTF-8, 100,000 levels of nesting) get 200 (a 4xx would make Lambda
    redeliver them forever) and are forwarded as `unparsed` markers; the process
    survives them and the real telemetry around them arrives."""
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end"),
                   freeze=False) as sim:
        sim.start()
        port = listener_port(sim)
        sim.invoke(log_lines=5)
        statuses = []
        for body in UNPARSEABLE:
            try:
                statuses.append(post(port, body))
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                statuses.append(repr(e))
            assert sim.exit_code is None, f"the extension died on {body[:40]!r}: {sim.stderr_text()[-2000:]}"
        assert statuses == [200] * len(UNPARSEABLE), list(zip([b[:20] for b in UNPARSEABLE], statuses))
        res, recs = finish(sim, kinesalite, name, extra_records=len(UNPARSEABLE))
    markers = own_records(recs, "unparsed")
    # every body that is not an array of events is kept as a marker (the empty body may
    # be ignored); the last one is an array (of one deeply nested value) and is not one
    assert len(markers) >= len(UNPARSEABLE) - 2, [m["record"].get("reason") for m in markers]
    lambda_recs = [r for r in recs if b"kinesis-telemetry-extension." not in r["data"][:120]]
    check_delivery(sim, lambda_recs + [r for r in recs if b".metrics" in r["data"][:120]],
                   allow_strangers=True)
    m = final_metrics(recs)
    assert m is not None and m["unparsedBodies"] >= len(markers), m


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_huge_body_over_the_limit_is_refused_with_bounded_memory(ext_bin, kinesalite, chunked):
    """A 64 MiB body (16 times KINESIS_TELEMETRY_MAX_BODY_BYTES), sent in 1 MiB
    pieces: answered 200 or 413 (or the connection closed early), counted, never
    held in memory; deliveries go on."""
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end"),
                   freeze=False) as sim:
        sim.start()
        port = listener_port(sim)
        sim.invoke(log_lines=5)
        before = vmhwm_kb(sim.pid)
        piece = b"[" + b'{"time":"t","type":"function","record":"' + b"x" * (MIB - 64) + b'"},'
        total = 64 * MIB
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        head = "POST / HTTP/1.1\r\nHost: sandbox.localdomain\r\nContent-Type: application/json\r\n"
        head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
        status = None
        try:
            s.sendall(head.encode())
            sent = 0
            while sent < total:
                n = min(len(piece), total - sent)
                data = piece[:n]
                s.sendall(b"%x\r\n%s\r\n" % (n, data) if chunked else data)
                sent += n
            if chunked:
                s.sendall(b"0\r\n\r\n")
            s.settimeout(10)
            answer = s.recv(4096)
            if answer:
                status = int(answer.split(b" ", 2)[1])
        except (BrokenPipeError, ConnectionResetError):
            status = "closed"  # refused early: fine, as long as it says why in its log
        finally:
            s.close()
        assert status in (200, 413, "closed"), status
        peak = vmhwm_kb(sim.pid)
        assert sim.exit_code is None, sim.stderr_text()[-2000:]
        # never the whole body: at most the 4 MiB limit and change
        assert peak - before < 8 * 1024, (before, peak)
        res, recs = finish(sim, kinesalite, name)
    err = sim.stderr_text()
    assert "KINESIS_TELEMETRY_MAX_BODY_BYTES" in err, err[-2000:]
    counters = shutdown_counters(err)
    assert counters["oversizedBodies"] == 1, counters
    check_delivery(sim, recs)


def test_wrong_methods_and_paths_get_405_and_404(ext_bin, kinesalite):
    """Only POST / is a Telemetry API delivery: other methods on / get 405, POSTs to
    other paths 404, a request line that is not HTTP an error or a close; the
    extension goes on as if nothing happened."""
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end"),
                   freeze=False) as sim:
        sim.start()
        port = listener_port(sim)
        got = {}
        for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
            got[f"{method} /"] = post(port, b"" if method in ("GET", "HEAD", "OPTIONS") else b"[]",
                                      method=method)
        for path in ("/telemetry", "/foo/bar", "//", "/%2e%2e/etc/passwd", "/index.html"):
            got[f"POST {path}"] = post(port, b"[]", path=path)
        expected = {k: 405 if k.endswith(" /") else 404 for k in got}
        assert got == expected
        garbage = raw_exchange(port, b"HELLO THERE\r\n\r\n")
        assert garbage == b"" or garbage.startswith(b"HTTP/1.1 4") or garbage.startswith(b"HTTP/1.0 4"), garbage
        assert sim.exit_code is None
        sim.invoke(log_lines=10)
        res, recs = finish(sim, kinesalite, name)
    check_delivery(sim, recs)
    m = final_metrics(recs)
    assert m is not None and m["refusedRequests"] >= len(expected), m


class SlowLoris:
    """Connections that hold the listener: a request head sent a byte at a time and
    never finished, a complete head whose body trickles in forever, and connections
    that never send anything. All stop when the test ends."""

    def __init__(self, port: int, heads: int, bodies: int, silent: int, interval: float = 0.2):
        self.port, self.interval = port, interval
        self.stop = threading.Event()
        self.sent = collections.Counter()
        self.errors = collections.Counter()
        self.socks: list[socket.socket] = []
        self.threads = []
        for kind, n in (("head", heads), ("body", bodies), ("silent", silent)):
            for _ in range(n):
                t = threading.Thread(target=self._run, args=(kind,), daemon=True)
                t.start()
                self.threads.append(t)

    def _run(self, kind: str) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError as e:
            self.errors[f"connect {type(e).__name__}"] += 1
            return
        self.socks.append(s)
        if kind == "head":
            data = b"POST / HTTP/1.1\r\nHost: sandbox.localdomain\r\nContent-Type: application/json\r\nX-Slow: "
            data += b"a" * 100_000
        elif kind == "body":
            s.sendall(b"POST / HTTP/1.1\r\nHost: sandbox.localdomain\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
            data = b'[{"time":"t","type":"function","record":"' + b"s" * 999_000
        else:
            data = b""
        i = 0
        while not self.stop.wait(self.interval):
            if i < len(data):
                try:
                    s.sendall(data[i:i + 1])
                    self.sent[kind] += 1
                except OSError as e:
                    self.errors[f"{kind} {type(e).__name__}"] += 1  # the server gave up on us
                    return
                i += 1

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2)
        for s in self.socks:
            s.close()


@pytest.mark.parametrize("load", ["few", "many"])
def test_slow_loris_clients_do_not_stall_deliveries(ext_bin, kinesalite, load):
    """While slow-loris connections hang on the listener (unfinished heads, bodies
    trickling in a byte every 200 ms, silent connections; "many" is more slow bodies
    than the listener reads at once), Lambda's own deliveries still go through:
    no invoke times out, every event arrives, the process exits in time, memory
    stays bounded."""
    name, _ = new_stream(kinesalite)
    n = {"few": (3, 3, 3), "many": (10, 12, 10)}[load]
    with LambdaSim(ext_bin, ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end"),
                   freeze=False) as sim:
        sim.start()
        port = listener_port(sim)
        loris = SlowLoris(port, *n)
        try:
            # every slow client is connected, and the talking ones have started
            deadline = time.monotonic() + 10
            while (len(loris.socks) + sum(loris.errors.values()) < sum(n)
                   or loris.sent["head"] < n[0] or loris.sent["body"] < n[1]):
                assert time.monotonic() < deadline, (loris.sent, loris.errors)
                time.sleep(0.02)
            for _ in range(6):
                sim.invoke(log_lines=20, idle_ms=200)
            assert sim.exit_code is None
            peak = vmhwm_kb(sim.pid)
            # (after SHUTDOWN a delivery may race the process exit: not counted)
            errors = list(sim.post_errors)
            gaps = [round(b[0] - a[0], 2) for a, b in zip(sim.delivery_log, sim.delivery_log[1:])]
            # they held the listener all along: still talking, still connected
            held_errors = dict(loris.errors)
            sent = dict(loris.sent)
            res, recs = finish(sim, kinesalite, name)
        finally:
            loris.close()
    if load == "few":  # within the listener's 16 connections: none was shed
        assert held_errors == {} and sent["head"] >= 3 * 5 and sent["body"] >= 3 * 5, (held_errors, sent)
    else:  # 32 slow clients: the listener shed some to keep room, and counted them
        assert final_metrics(recs)["shedConnections"] >= sum(n) - 16, final_metrics(recs)
    # no delivery refused or timed out while the slow clients hung on
    assert errors == [], (errors[:5], f"longest gaps between deliveries {sorted(gaps)[-3:]} s",
                          loris.sent, loris.errors, sim.stderr_text()[-3000:])
    check_delivery(sim, recs)
    assert max(sim.post_runtime_ms) < 1000, sim.post_runtime_ms
    assert peak < 32 * 1024, peak


def lambdas_connection(sim: LambdaSim):
    """The simulator's kept-alive connection to the listener (its local
    address), once every event emitted so far is delivered; None if it has none."""
    deadline = time.monotonic() + 10
    while sim.undelivered or not sim.delivery_log:
        assert time.monotonic() < deadline, "the simulator's deliveries did not finish"
        time.sleep(0.01)
    conn = sim._conn  # the simulator's own HTTP connection (it reconnects when one breaks)
    return None if conn is None or conn.sock is None else conn.sock.getsockname()


def test_lambdas_kept_alive_connection_is_shed_after_every_stranger(ext_bin, kinesalite):
    """Lambda's connection, kept alive and idle between deliveries (longer than
    the 250 ms grace), then 32 slow strangers against 16 slots: strangers are
    shed, Lambda's connection is not (the same one carries every later delivery;
    it used to be shed first, as the longest idle, and Lambda reconnected)."""
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end"),
                   freeze=False) as sim:
        sim.start()
        sim.invoke(log_lines=5)
        before = lambdas_connection(sim)
        assert before is not None, "the simulator keeps its connection alive"
        time.sleep(0.3)  # idle past the grace time, as between invokes
        loris = SlowLoris(listener_port(sim), 10, 12, 10)
        try:
            deadline = time.monotonic() + 10
            while len(loris.socks) + sum(loris.errors.values()) < 32:
                assert time.monotonic() < deadline, (loris.sent, loris.errors)
                time.sleep(0.02)
            for _ in range(3):
                assert not sim.invoke(log_lines=10).timed_out
            after = lambdas_connection(sim)
            errors = list(sim.post_errors)
            res, recs = finish(sim, kinesalite, name)
        finally:
            loris.close()
    assert after == before, f"Lambda's connection was replaced: {before} -> {after}"
    assert errors == [], errors
    assert final_metrics(recs)["shedConnections"] >= 32 - 15, final_metrics(recs)
    check_delivery(sim, recs)
