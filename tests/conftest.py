"""Shared fixtures for the end-to-end tests: the built extension binary, real
Kinesis emulators (one per test, on port 0), and a helper that runs the binary
under the Lambda simulator and reads the stream back."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

import pytest

import delivery
import emulators
from lambda_sim import LambdaSim

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "timing: asserts on durations; run on its own, not among parallel workers "
                   "(build.sh runs these after the rest, one at a time)")
    config.addinivalue_line(
        "markers", "soak: long, quiet runs asserting flat resources and idle CPU read from /proc "
                   "(build.sh runs these with the timing tests, one at a time)")


_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    # An expected failure (xfail, strict: it must fail) is a check that ran, not a skip.
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """A skipped test is a check that did not run: the run fails, unless
    ALLOW_SKIPS=1 (a partial local run). On xdist this runs in the controller,
    which sees every worker's reports."""
    if _SKIPPED and os.environ.get("ALLOW_SKIPS") != "1" and not hasattr(session.config, "workerinput"):
        print(f"\n{len(_SKIPPED)} tests were skipped, which fails the run (ALLOW_SKIPS=1 allows it): "
              + ", ".join(_SKIPPED[:10]))
        session.exitstatus = 1


@pytest.fixture(scope="session")
def ext_bin() -> str:
    path = os.environ.get("EXTENSION_BIN") or str(ROOT / "layer/extensions/kinesis-telemetry-extension")
    if not os.access(path, os.X_OK):
        pytest.fail(f"extension binary {path} not found: run ./build.sh first (or ./build.sh test)")
    return path


@pytest.fixture
def kinesalite(tmp_path):
    emu = emulators.start_kinesalite(tmp_path)
    yield emu
    emu.stop()


@pytest.fixture
def kinesis_local(tmp_path):
    emu = emulators.start_kinesis_local(tmp_path)
    yield emu
    emu.stop()


@pytest.fixture
def moto(tmp_path):
    emu = emulators.start_moto(tmp_path)
    yield emu
    emu.stop()


def new_stream(emu, shards=1) -> tuple[str, str]:
    name = "telemetry-" + uuid.uuid4().hex[:8]
    arn = emu.create_stream(name, shards)
    return name, arn


def ext_env(emu, stream: str, **extra) -> dict:
    env = {
        "KINESIS_TELEMETRY_STREAM": stream,
        "AWS_REGION": emu.region,
        "AWS_ENDPOINT_URL_KINESIS": emu.endpoint,
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "RUST_LOG": "info",
    }
    env.update({k: v for k, v in extra.items()})
    return env


def run_invokes(sim: LambdaSim, invokes: int, lines: int, **kw) -> None:
    sim.start()
    for _ in range(invokes):
        r = sim.invoke(log_lines=lines, **kw)
        assert not r.timed_out, sim.stderr_text()


def run_with_faults(ext_bin, emu, rule, invokes: int, lines: int, *, idle_ms: float = 0, **env):
    """A stream, the fault proxy in front of `emu` with `rule` (see Faults.rule), the
    extension under the simulator for `invokes` invokes of `lines` lines (`idle_ms`
    apart) and SHUTDOWN, checked by delivery.assert_run_ok. Returns (sim, proxy, stream)."""
    from delivery import assert_run_ok
    from fault_proxy import FaultProxy, Faults
    name, _ = new_stream(emu)
    with FaultProxy(emu.endpoint, Faults(rule=rule)) as proxy:
        with LambdaSim(ext_bin, ext_env(emu, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint, **env)) as sim:
            run_invokes(sim, invokes, lines, idle_ms=idle_ms)
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
    return sim, proxy, name


def assert_clean_exit(sim: LambdaSim, result, *, pushback: bool = False) -> None:
    """Exit 0 in time, no protocol violation, and the oracle: everything Lambda
    emitted before SHUTDOWN reached the extension (nothing dropped by Lambda,
    nothing left pending), unless the test expects push-back (`pushback=True`)
    and asserts on it itself."""
    assert result.exit_code == 0 and not result.killed, (result, sim.stderr_text()[-3000:])
    assert sim.violations == [], sim.violations
    if not pushback:
        assert sim.refusals == 0, f"{sim.refusals} deliveries refused (503) before SHUTDOWN"
        lost = sim.lost_before_shutdown
        assert lost == [], (f"{len(lost)} events Lambda emitted never reached the extension "
                            f"(dropped {len(sim.dropped)}), e.g. {lost[0][:200]!r}; "
                            f"POST errors {sim.post_errors[:3]}")


@pytest.fixture(autouse=True)
def scenario_report(request, monkeypatch):
    """With E2E_REPORT=FILE, appends one JSON line per test: each simulator's
    shutdown (ms, exit code, killed), events delivered to the extension, peak
    RSS, and the delivery checks' counts. Used for the measured results in
    docs/delivery.md and the issue notes; does nothing otherwise."""
    path = os.environ.get("E2E_REPORT")
    if not path:
        yield
        return
    sims = []
    real_shutdown = LambdaSim.shutdown

    def shutdown(self, *a, **kw):
        res = real_shutdown(self, *a, **kw)
        sims.append({"shutdown_ms": res.shutdown_ms, "exit_code": res.exit_code, "killed": res.killed,
                     "delivered": len(self.delivered), "dropped_by_lambda": len(self.dropped),
                     "peak_rss_kib": max(self.peak_rss_kb or [0]),
                     "post_runtime_ms_max": max(self.post_runtime_ms or [0])})
        return res

    monkeypatch.setattr(LambdaSim, "shutdown", shutdown)
    delivery.LAST_CHECK.clear()
    yield
    checks = [dataclasses.asdict(c) for c in delivery.LAST_CHECK]
    with open(path, "a") as f:
        f.write(json.dumps({"test": request.node.nodeid, "sims": sims, "checks": checks}) + "\n")
