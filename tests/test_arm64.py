"""The arm64 (aarch64) build end to end: the static aarch64 binary from
`layer/arm64/` runs under qemu-user (`qemu-aarch64`) inside the Lambda
simulator, writing to kinesalite. Every event the simulator delivered must be
on the stream exactly once, as on x86_64.

Lambda starts `/opt/extensions/<name>` and the extension registers under
argv[0]'s file name, so the simulator runs a small wrapper script of that name
which execs `qemu-aarch64 -0 "$0" <arm64 binary>` (`-0` sets the guest's
argv[0]; without it qemu passes the binary's own path). The simulator's
SIGSTOP/SIGCONT of the process group freezes qemu and its guest together.

`./build.sh test` builds the binary and installs qemu-user first. Run alone
(`pytest tests/test_arm64.py`) without them, the test is skipped with the
reason; under CI (CI=true), or when EXTENSION_BIN_ARM64 names the binary
explicitly, a missing binary or qemu fails instead.
"""

from __future__ import annotations

import collections
import json
import os
import shlex
import shutil

import pytest

from conftest import ROOT, assert_clean_exit, ext_env, new_stream
from delivery import assert_delivered_exactly_once, lambda_records
from lambda_sim import LambdaSim

NAME = "kinesis-telemetry-extension"
DEFAULT_ARM64_BIN = ROOT / "layer" / "arm64" / "extensions" / NAME
EM_AARCH64 = 183  # ELF e_machine of AArch64


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> None:
    """Skip locally; fail under CI or when the binary was asked for explicitly."""
    if in_ci() or os.environ.get("EXTENSION_BIN_ARM64"):
        pytest.fail(reason + " (CI=true or EXTENSION_BIN_ARM64 set: this must not be skipped)")
    pytest.skip(reason)


def elf_machine(path) -> int:
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


@pytest.fixture
def arm64_ext(tmp_path) -> str:
    """Path of an executable named like the extension that runs the arm64 binary under qemu."""
    binary = os.environ.get("EXTENSION_BIN_ARM64") or str(DEFAULT_ARM64_BIN)
    if not os.access(binary, os.X_OK):
        missing(f"arm64 binary {binary} not built: run ./build.sh (it cross-builds aarch64-unknown-linux-musl)")
    assert elf_machine(binary) == EM_AARCH64, f"{binary} is not an aarch64 executable"
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if qemu is None:
        missing("qemu-aarch64 not found: apt-get install qemu-user (./build.sh test installs it)")
    opt_ext = tmp_path / "opt" / "extensions"
    opt_ext.mkdir(parents=True)
    wrapper = opt_ext / NAME
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(qemu)} -0 "$0" {shlex.quote(binary)} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_arm64_binary_delivers_every_event_exactly_once_under_qemu(arm64_ext, kinesalite):
    invokes, lines = 20, 10
    name, _ = new_stream(kinesalite)
    with LambdaSim(arm64_ext, ext_env(kinesalite, name)) as sim:
        sim.start()
        # It really is the emulated aarch64 binary that registered, not a host build.
        exe = os.path.basename(os.readlink(f"/proc/{sim.pid}/exe"))
        assert exe.startswith("qemu-aarch64"), exe
        assert sim.register_headers is not None
        for _ in range(invokes):
            r = sim.invoke(log_lines=lines, idle_ms=5)
            assert not r.timed_out, sim.stderr_text()
        res = sim.shutdown()
        assert_clean_exit(sim, res)
        assert sim.freeze_count >= invokes
        assert sim.subscription is not None

        recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=15)  # + metrics
        assert len(sim.delivered) > invokes * lines
        assert_delivered_exactly_once(sim, recs)
        telemetry = lambda_records(recs)
        text = b"\n".join(r["data"] for r in telemetry).decode("utf-8", "replace")
        assert len(sim.function_line_ids) == invokes * lines + 1  # + the init line
        assert all(i in text for i in sim.function_line_ids)
        types = collections.Counter(json.loads(r["data"])["type"] for r in telemetry)
        assert types["platform.initStart"] == 1
        assert types["platform.start"] == invokes
        assert types["platform.runtimeDone"] == invokes
        assert types["platform.report"] == invokes, types  # the last one arrives during SHUTDOWN
        assert len({r["partition_key"] for r in telemetry}) == 1  # one key per environment
