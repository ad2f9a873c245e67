"""The listener's bounds (issue 10, item 2): whatever a process in the sandbox
sends or holds open, the extension neither crashes, nor stalls Lambda's
deliveries, nor grows past its documented memory bound, within Lambda's limit
of 1,024 open files (the simulator's default); and it recovers once the abuse
stops. The oracle is what Lambda emitted: after each attack, every event
emitted before SHUTDOWN reached the extension and is on the stream once.

The simulator runs with freeze=False so the extension is never stopped while
a test talks to its listener."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from conftest import ext_env, new_stream
from delivery import READ_TIMEOUT, assert_run_ok, final_metrics
from lambda_sim import LambdaSim
from stream_check import assert_exactly_once
from test_listener_hostile import listener_port, vmhwm_kb

MIB = 1 << 20


def start(ext_bin, kinesalite, **sim_kw):
    name, _ = new_stream(kinesalite)
    sim = LambdaSim(ext_bin, ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end"),
                    freeze=False, **sim_kw)
    sim.start()
    return sim, name


def finish(sim: LambdaSim, kinesalite, name: str) -> dict:
    """Invokes once more, shuts down, and checks against what Lambda emitted."""
    r = sim.invoke(log_lines=20)
    assert not r.timed_out, sim.stderr_text()[-3000:]
    res = sim.shutdown()
    assert_run_ok(sim, res)
    assert sim.lost_before_shutdown == [], (len(sim.lost_before_shutdown), sim.post_errors[:5],
                                            res, sim.stderr_text()[-3000:])
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
    try:
        assert_exactly_once(sim, [r["data"] for r in recs])
    except AssertionError as e:  # (what Lambda saw of its deliveries says why)
        raise AssertionError(f"{e}\nPOST errors: {sim.post_errors[:10]}") from None
    m = final_metrics(recs)
    assert m is not None
    return m


def answer_status(s: socket.socket, timeout: float = 3.0):
    """The status of the answer on `s`, or 'closed' if it closed without one."""
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else "closed"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ----------------------------------------------------------------------- crashes


@pytest.mark.parametrize("head,body,want", [
    (b"POST / HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n", b"[1,2", 413),
    (b"GET / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n", b"", 405),
    (b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n", b"", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"fffffffffffffff\r\nab", 413),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\n", 501),
    # RFC 9112: a chunk size is hex digits only; a sign is how parsers are told apart
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"+2\r\n[]\r\n0\r\n\r\n", 400),
], ids=["post-isize-max", "get-usize-max", "length-overflow", "chunk-huge", "smuggling", "chunk-size-signed"])
def test_hostile_lengths_are_refused_and_the_process_lives(ext_bin, kinesalite, head, body, want):
    """Lengths that made tiny_http allocate without bound (an abort) or panic:
    refused from the head alone, answered at once, and the extension lives."""
    sim, name = start(ext_bin, kinesalite)
    with sim:
        port = listener_port(sim)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head + body)
            s.shutdown(socket.SHUT_WR)  # the half-close that used to end in an abort
            assert answer_status(s) == want
        sim.invoke(log_lines=10)
        assert sim.exit_code is None, sim.stderr_text()[-2000:]
        m = finish(sim, kinesalite, name)
    assert m["refusedRequests"] + m["oversizedBodies"] == 1, m


# ------------------------------------------------------------------------ stalls


@pytest.mark.parametrize("held", [
    b"GET / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n",
    b"POST /elsewhere HTTP/1.1\r\nContent-Length: 2000\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n[{",
    b"POST / HTTP/1.1\r\nHost: x\r\n",
], ids=["get-without-body", "wrong-path-without-body", "body-cut-short", "head-cut-short"])
def test_a_held_connection_does_not_stall_deliveries(ext_bin, kinesalite, held):
    """A client that sends a head (refused or not) and then holds the connection
    without sending what it announced: refused heads are answered at once without
    waiting for their body, and Lambda's deliveries on other connections go on."""
    sim, name = start(ext_bin, kinesalite, telemetry_keepalive=False)
    with sim:
        port = listener_port(sim)
        holders = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(held)
            holders.append(s)
        try:
            if held.startswith(b"GET") or b"/elsewhere" in held:
                assert [answer_status(s) for s in holders] == [405 if held.startswith(b"GET") else 404] * 3
            for _ in range(4):
                r = sim.invoke(log_lines=50)
                assert not r.timed_out
            assert sim.post_errors == [], sim.post_errors[:3]
            assert max(sim.post_runtime_ms) < 1000, sim.post_runtime_ms
        finally:
            for s in holders:
                s.close()
        finish(sim, kinesalite, name)


def test_slow_clients_past_the_connection_limit(ext_bin, kinesalite):
    """40 slow clients (more than the 16 connections the listener keeps): the
    oldest are shed to make room (counted), Lambda's new connections get in, every
    delivery succeeds."""
    sim, name = start(ext_bin, kinesalite, telemetry_keepalive=False)
    stop = threading.Event()
    socks = []

    def slow(i):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            return
        socks.append(s)
        data = b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
        for j in range(len(data)):
            if stop.wait(0.05):
                return
            try:
                s.sendall(data[j:j + 1])
            except OSError:
                return

    with sim:
        port = listener_port(sim)
        threads = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(40)]
        for t in threads:
            t.start()
        try:
            for _ in range(5):
                r = sim.invoke(log_lines=50)
                assert not r.timed_out
                assert open_fds(sim.pid) < 120, open_fds(sim.pid)
            assert sim.post_errors == [], sim.post_errors[:3]
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=2)
            for s in socks:
                s.close()
        m = finish(sim, kinesalite, name)
    assert m["shedConnections"] >= 40 - 16, m


# -------------------------------------------------------------- file descriptors


def test_thousands_of_idle_connections_within_lambdas_file_limit(ext_bin, kinesalite):
    """1,500 idle connections against an extension limited to 1,024 open files (it
    used to abort at ~510 or stop accepting for good): it sheds the oldest, keeps
    its own descriptors bounded, every delivery goes through meanwhile, and once
    the connections close it goes on as before."""
    sim, name = start(ext_bin, kinesalite)
    with sim:
        port = listener_port(sim)
        idle = []
        try:
            for i in range(1500):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                if i % 300 == 299:
                    r = sim.invoke(log_lines=30)
                    assert not r.timed_out
                    assert sim.exit_code is None, sim.stderr_text()[-2000:]
                    assert open_fds(sim.pid) < 120, open_fds(sim.pid)
            # Lambda's own connection may be among the shed (then Lambda reconnects and
            # resends), but no delivery is ever refused with an HTTP error
            assert not any(e.startswith("HTTP") for e in sim.post_errors), sim.post_errors
        finally:
            for s in idle:
                s.close()
        for _ in range(3):
            assert not sim.invoke(log_lines=30).timed_out
        m = finish(sim, kinesalite, name)
    assert m["shedConnections"] >= 1500 - 16, m


# ------------------------------------------------------------------------ memory


@pytest.mark.parametrize("what", ["header-line", "url"])
def test_huge_heads_are_not_held(ext_bin, kinesalite, what):
    """A 256 MiB header line or a 64 MiB URL: refused once the head passes 8 KiB
    (431), never held whole."""
    sim, name = start(ext_bin, kinesalite)
    with sim:
        port = listener_port(sim)
        sim.invoke(log_lines=5)
        before = vmhwm_kb(sim.pid)
        if what == "url":
            head, size = b"POST /", 64 * MIB
        else:
            head, size = b"POST / HTTP/1.1\r\nX-Big: ", 256 * MIB
        piece = b"a" * MIB
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(head)
            for _ in range(size // MIB):
                s.sendall(piece)
            status = answer_status(s)
        except (ConnectionResetError, BrokenPipeError):
            status = "closed"
        finally:
            s.close()
        assert status in (431, "closed"), status
        assert vmhwm_kb(sim.pid) - before < 4 * 1024, (before, vmhwm_kb(sim.pid))
        m = finish(sim, kinesalite, name)
    assert m["refusedRequests"] == 1, m


# Timing: the front door sheds requests slower than 250 ms; under parallel
# load Lambda's own delivery can be that slow and be shed (then redelivered).
@pytest.mark.timing
def test_stalled_bodies_stay_within_the_bodies_in_flight_bound(ext_bin, kinesalite):
    """31 connections that each send just short of a 4 MiB body and stall (they held
    127 MiB before): at most 2 x KINESIS_TELEMETRY_MAX_BODY_BYTES of bodies is held
    (the oldest stallers are shed to make room), Lambda's deliveries go through."""
    sim, name = start(ext_bin, kinesalite)
    with sim:
        port = listener_port(sim)
        sim.invoke(log_lines=5)
        before = vmhwm_kb(sim.pid)
        body = b"x" * (4 * MIB - 1)
        socks = []
        try:
            for _ in range(31):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                try:
                    s.sendall(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (4 * MIB) + body)
                except OSError:
                    pass  # shed while sending
                socks.append(s)
                assert sim.exit_code is None
            for _ in range(3):
                assert not sim.invoke(log_lines=30).timed_out
            # Lambda's own connection may be shed when slow (then it reconnects and
            # delivers again: finish() checks exactly once), never refused with an
            # HTTP error
            assert not any(e.startswith("HTTP") for e in sim.post_errors), sim.post_errors[:3]
            peak = vmhwm_kb(sim.pid)
        finally:
            for s in socks:
                s.close()
        m = finish(sim, kinesalite, name)
    # 8 MiB of bodies in flight, their growth, and change
    assert peak - before < 14 * 1024, (before, peak)
    assert m["shedConnections"] >= 31 - 3, m


# ----------------------------------------------------------------- bind address


def listening_addresses(pid: int, port: int) -> set[str]:
    """Local addresses of the LISTEN sockets of `pid` on `port` (from /proc/net/tcp)."""
    out = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            addr, p = cols[1].split(":")
            if cols[3] == "0A" and int(p, 16) == port:
                out.add(addr)
    return out


def test_listens_on_loopback_when_the_sandbox_name_does_not_resolve(ext_bin, kinesalite):
    """Here sandbox.localdomain does not resolve: the listener is on 127.0.0.1 only,
    not on every interface."""
    sim, name = start(ext_bin, kinesalite)
    with sim:
        port = listener_port(sim)
        assert listening_addresses(sim.pid, port) == {"0100007F"}
        finish(sim, kinesalite, name)


def test_listens_where_the_sandbox_name_resolves(ext_bin, kinesalite, tmp_path):
    """With /etc/hosts naming sandbox.localdomain (as on Lambda), the listener is on
    that address only, and Lambda's deliveries to it arrive."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.5 sandbox.localdomain\n")
    sim, name = start(ext_bin, kinesalite, hosts_file=str(hosts), sandbox_address="127.0.0.5")
    with sim:
        port = listener_port(sim)
        assert listening_addresses(sim.pid, port) == {"0500007F"}
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        sim.invoke(log_lines=10)
        finish(sim, kinesalite, name)


def test_works_without_a_usable_temporary_directory(ext_bin, kinesalite):
    """The private socket to tiny_http normally lives (for an instant) in the
    temporary directory; with TMPDIR pointing nowhere it falls back to an abstract
    socket, and every delivery still arrives."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end", TMPDIR="/nonexistent/tmp")
    with LambdaSim(ext_bin, env) as sim:
        sim.start()
        for _ in range(3):
            assert not sim.invoke(log_lines=10).timed_out
        finish(sim, kinesalite, name)
