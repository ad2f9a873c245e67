"""No resolver on the cold path (issue 21, item 3): the listener finds where
to listen (`sandbox.localdomain`) in /etc/hosts itself, and without an entry
listens on loopback, without a DNS query. Before, the name went through the
resolver: in a network namespace with loopback only and a DNS server that
never answers, exec -> first `event/next` took the musl resolver's 5 s.

Each case runs this file as a driver inside its own network namespace (only
loopback, up) and mount namespace (a private /etc/hosts and an
/etc/resolv.conf naming 127.0.0.53, where the driver keeps a DNS "server"
that reads queries and never answers, counting those that name the
sandbox). The simulator, kinesalite and the extension all run in there. The
driver measures exec -> first `next` for the extension and for the floor
(bench/baselines/floor, built here with rustc: a do-nothing extension that
registers, binds a listener, subscribes and calls next), interleaved, then
runs invokes and SHUTDOWN and checks the stream against what the simulator
delivered. The oracle for "no DNS query" is the blackhole's count."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FLOOR_SRC = HERE.parent / "bench/baselines/floor/src/main.rs"
DNS_ADDRESS = "127.0.0.53"
RUNS = 21
# The do-nothing extension's exec -> first next, times this, bounds ours.
BUDGET = 1.5

LOCAL = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
CASES = {
    # As on Lambda: the name in /etc/hosts (an alias before it on one line,
    # and an IPv6 entry too): the listener is on exactly those addresses.
    "hosts-entry": (LOCAL + "127.0.0.5 sandbox sandbox.localdomain  # the sandbox\n"
                    "::1 sandbox.localdomain\n", "127.0.0.5", {"0500007F", "00000000000000000000000001000000"}),
    # No entry (an offline laptop, a container): loopback, and no DNS query.
    "no-entry": (LOCAL + "# sandbox.localdomain is not here\n", "127.0.0.1", {"0100007F"}),
}


# ------------------------------------------------------------------ the test


@pytest.fixture(scope="module")
def floor_bin(tmp_path_factory) -> str:
    """The bench's floor extension, built with rustc (std only, one file)."""
    rustc = shutil.which("rustc")
    if not rustc:
        pytest.fail("rustc not found: the do-nothing extension this test compares with is built from "
                    f"{FLOOR_SRC}; put the Rust toolchain on PATH")
    out = tmp_path_factory.mktemp("floor") / "floor-extension"
    p = subprocess.run([rustc, "--edition", "2021", "-C", "opt-level=2", "-C", "panic=abort",
                        "-o", str(out), str(FLOOR_SRC)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return str(out)


def lower_quartile(ms: list[float]) -> float:
    """The figure compared: on a shared machine scheduling noise only adds
    time, and a median of runs 5-20 ms apart still moves by a third."""
    return statistics.quantiles(ms, n=4)[0]


def run_in_namespaces(tmp_path: Path, hosts_text: str, job: dict) -> dict:
    """Runs this file's driver in new network and mount namespaces with
    `hosts_text` as /etc/hosts and a blackholed resolver; returns its report."""
    for tool in ("unshare", "ip", "mount"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} not found: this test needs util-linux and iproute2, and root")
    hosts = tmp_path / "hosts"
    hosts.write_text(hosts_text)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDRESS}\n")
    script = ('ip link set lo up && mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf '
              '&& shift 2 && exec "$@"')
    argv = ["unshare", "--net", "--mount", "--", "sh", "-c", script, "sh", str(hosts), str(resolv),
            sys.executable, str(Path(__file__).resolve()), json.dumps(job)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=280, cwd=str(HERE))
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert p.returncode == 0 and lines, (
        f"the driver failed (exit {p.returncode}); unshare needs root (CI runs as root)\n"
        f"stdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}")
    return json.loads(lines[-1])


@pytest.mark.timing
@pytest.mark.parametrize("case", list(CASES))
def test_cold_start_makes_no_dns_query_and_deliveries_arrive(ext_bin, floor_bin, tmp_path, case):
    """With or without a hosts entry, loopback only and a DNS server that never
    answers: no query names the sandbox, exec -> first next is within 1.5 x
    the floor's (lower quartiles of 21, interleaved), the listener is where the hosts
    file says (else loopback), and every event delivered is on the stream."""
    hosts_text, sandbox, listening = CASES[case]
    r = run_in_namespaces(tmp_path, hosts_text, {"ext": ext_bin, "floor": floor_bin, "sandbox": sandbox})
    assert r["error"] is None, r["error"]
    ext, floor = lower_quartile(r["ext_ms"]), lower_quartile(r["floor_ms"])
    assert r["dns_queries"] == [], (f"{len(r['dns_queries'])} DNS queries for {set(r['dns_queries'])} in "
                                    f"{RUNS + 1} starts; exec -> first next {ext:.1f} ms, floor {floor:.1f} ms")
    assert ext <= BUDGET * floor, (f"exec -> first next {ext:.1f} ms, floor {floor:.1f} ms (lower quartiles "
                                   f"of {RUNS}): over {BUDGET} x; runs {r['ext_ms']} / {r['floor_ms']}")
    assert set(r["listening"]) == listening, r["listening"]
    assert r["delivered"] > 0, r


# ------------------------------------------------------------------ the driver


class Blackhole:
    """A DNS server that never answers: it counts the queries that name the sandbox."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.queries: list[str] = []
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def qname(packet: bytes) -> str:
        labels, i = [], 12
        while i < len(packet) and packet[i]:
            n = packet[i]
            labels.append(packet[i + 1:i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        return ".".join(labels)

    def _run(self) -> None:
        while True:
            packet, _ = self.sock.recvfrom(4096)
            name = self.qname(packet)
            if "sandbox" in name.lower():
                self.queries.append(name)


def init_ms(bin_path: str, env: dict, sandbox: str) -> float:
    """exec -> first event/next of one start under the simulator, in ms."""
    from lambda_sim import LambdaSim
    with LambdaSim(bin_path, env, sandbox_address=sandbox, freeze=False) as sim:
        sim.start()
        return sim.init_ms


def driver(job: dict) -> dict:
    sys.path.insert(0, str(HERE))
    import emulators
    from conftest import ext_env, new_stream
    from delivery import READ_TIMEOUT, assert_run_ok, check_delivery
    from lambda_sim import LambdaSim
    from test_listener_hostile import listener_port
    from test_listener_limits import listening_addresses

    report = {"error": None, "ext_ms": [], "floor_ms": [], "dns_queries": [], "listening": [],
              "delivered": 0}
    dns = Blackhole(DNS_ADDRESS)
    with tempfile.TemporaryDirectory() as td:
        emu = emulators.start_kinesalite(Path(td))
        try:
            name, _ = new_stream(emu)
            env = ext_env(emu, name, KINESIS_TELEMETRY_FLUSH="end")
            for _ in range(RUNS):
                report["floor_ms"].append(init_ms(job["floor"], dict(env, FLOOR_SUBSCRIBE="1"), job["sandbox"]))
                report["ext_ms"].append(init_ms(job["ext"], env, job["sandbox"]))
            name, _ = new_stream(emu)
            with LambdaSim(job["ext"], ext_env(emu, name, KINESIS_TELEMETRY_FLUSH="end"),
                           sandbox_address=job["sandbox"]) as sim:
                sim.start()
                report["listening"] = sorted(listening_addresses(sim.pid, listener_port(sim)))
                for _ in range(3):
                    assert not sim.invoke(log_lines=10).timed_out, sim.stderr_text()[-2000:]
                res = sim.shutdown()
                assert_run_ok(sim, res)
                recs = emu.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
                check_delivery(sim, recs)
                report["delivered"] = len(sim.delivered)  # and each is on the stream once
        except Exception:  # reported, not raised: the test shows it with the figures
            report["error"] = traceback.format_exc()[-3000:]
        finally:
            emu.stop()
    report["dns_queries"] = list(dns.queries)
    return report


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    print(json.dumps(driver(json.loads(sys.argv[1]))), flush=True)
