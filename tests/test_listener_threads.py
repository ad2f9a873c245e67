"""The listener's threads (issue 23, part 1): each delivery is framed once and
split on its connection's own thread, so at rest the extension runs the main
thread, the dispatcher, the listener's accepting thread and one thread per
open connection (Lambda's, kept alive): at most 6 with Lambda's connection.
The threads that other clients made it start end with their connections.
(Before: 10 at rest, tiny_http's server behind the front door kept 6.)"""

from __future__ import annotations

import os
import socket
import time

from test_listener_hostile import listener_port
from test_listener_limits import finish, start

AT_REST = 6


def threads(pid: int) -> list[str]:
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                out.append(f.read().strip())
        except OSError:
            pass  # ended meanwhile
    return out


def settle(pid: int, done, timeout: float = 5.0) -> list[str]:
    """The threads once `done(count)` holds, or as they are at the timeout."""
    deadline = time.monotonic() + timeout
    while not done(len(names := threads(pid))) and time.monotonic() < deadline:
        time.sleep(0.02)
    return names


def test_threads_at_rest_and_after_clients_leave(ext_bin, kinesalite):
    sim, name = start(ext_bin, kinesalite)
    with sim:
        for _ in range(3):
            assert not sim.invoke(log_lines=20).timed_out
        names = settle(sim.pid, lambda n: n <= AT_REST)
        assert len(names) <= AT_REST, names
        # 12 other clients: a thread each while connected, none left after.
        port = listener_port(sim)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(12)]
        try:
            busy = settle(sim.pid, lambda n: n >= len(names) + 12)
            assert len(busy) >= len(names) + 12, (names, busy)
        finally:
            for c in clients:
                c.close()
        after = settle(sim.pid, lambda n: n <= len(names))
        assert len(after) <= len(names), (names, after)
        finish(sim, kinesalite, name)
