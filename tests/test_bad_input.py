"""Bad input gets a clear error and loses nothing (issue 10, item 3): settings
that used to pass the start-up checks and then lose every record, secrets that
must never reach a log, answers from Kinesis that cannot be used."""

from __future__ import annotations

import os

import pytest

from conftest import assert_clean_exit, ext_env, new_stream, run_invokes, run_with_faults
from delivery import READ_TIMEOUT, assert_run_ok, check_delivery, final_metrics
from fault_proxy import GARBLED_AFTER_UPSTREAM
from lambda_sim import LambdaSim


@pytest.mark.parametrize("var,value,shown", [
    ("AWS_ENDPOINT_URL_KINESIS", "http://", '"http://"'),
    ("AWS_ENDPOINT_URL_KINESIS", "https://", '"https://"'),
    ("AWS_ENDPOINT_URL_KINESIS", "http://[::1", '"http://[::1"'),
    ("AWS_ENDPOINT_URL_KINESIS", "http://kinésis.example", "not ASCII"),
    ("AWS_SESSION_TOKEN", "FwoGZXIvYXdzE\nBsecretTail", "value not shown"),
    ("KINESIS_TELEMETRY_STRICT", "maybe", '"maybe"'),
    ("KINESIS_TELEMETRY_STREAM", "", "KINESIS_TELEMETRY_STREAM is empty"),
], ids=["no-host", "no-host-tls", "open-bracket", "non-ascii", "token-newline", "strict-maybe", "empty-stream"])
def test_unusable_settings_are_refused_at_start_naming_the_variable(ext_bin, kinesalite, var, value, shown):
    """Each is a configuration error at start naming the variable (secrets: not
    their value); the function goes on, nothing is sent."""
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, **{var: value})) as sim:
        run_invokes(sim, 2, 3)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    err = sim.stderr_text()
    line = next((l for l in err.splitlines() if "invalid configuration" in l), "")
    assert var in line and shown in line, err[-2000:]
    assert "secretTail" not in err
    assert "SigningError" not in err
    assert kinesalite.read_all(name) == []


def test_endpoint_credentials_never_reach_the_log(ext_bin, kinesalite):
    """An endpoint URL with user:password works and is logged without them."""
    name, _ = new_stream(kinesalite)
    host = kinesalite.endpoint.split("://", 1)[1]
    env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=f"http://telemetry:hunter2@{host}",
                  RUST_LOG="debug")
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 3, 5)
        res = sim.shutdown()
        assert_run_ok(sim, res)
    err = sim.stderr_text()
    assert "hunter2" not in err, [l for l in err.splitlines() if "hunter2" in l][:3]
    assert f"http://***@{host}" in err
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
    check_delivery(sim, recs)


def test_an_unusable_200_is_an_ambiguous_outcome(ext_bin, kinesalite):
    """Kinesis stored the records but answered 200 with a body that cannot be used
    (not JSON, one result too many, Records of the wrong type): the records are sent
    again and every copy that can be a duplicate is counted as duplicateRisk; nothing
    is counted lost, nothing is missing."""
    rule = lambda i, headers: GARBLED_AFTER_UPSTREAM if i < 3 else None  # noqa: E731
    sim, proxy, name = run_with_faults(ext_bin, kinesalite, rule, 6, 10, KINESIS_TELEMETRY_FLUSH="end")
    assert proxy.garbled == 3
    dup = sum(proxy.ambiguous.values())
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + dup + 1, timeout=READ_TIMEOUT)
    d = check_delivery(sim, recs, proxy)
    assert d.duplicates == dup > 0, (d, dup)
    m = final_metrics(recs)
    assert m["duplicateRisk"] == dup, (m, dup)
    assert m["droppedShutdown"] == 0 and m["droppedRejected"] == 0, m


def test_an_error_without_code_says_what_answered(ext_bin, kinesalite):
    """A 400 with no error code and an empty body: the one ERROR line says so and
    what to check, instead of "see the error message" with no message."""
    rule = lambda i, headers: (400, None) if i < 1 else None  # noqa: E731
    sim, _, _ = run_with_faults(ext_bin, kinesalite, rule, 3, 5, KINESIS_TELEMETRY_FLUSH="end")
    lines = [l for l in sim.stderr_text().splitlines() if "ERROR" in l and "HTTP400" in l]
    assert len(lines) == 1, sim.stderr_text()[-2000:]
    assert "no error code" in lines[0] and "AWS_ENDPOINT_URL_KINESIS" in lines[0], lines[0]


# ----------------------------------------- fail-closed inputs (issue 22, item 5)

SECRET_KEY = "AKIAIOSFODNN7EXAMPLE"


def test_a_setting_that_is_not_utf8_is_a_configuration_error_naming_it(ext_bin, kinesalite):
    """KINESIS_TELEMETRY_REDACT with a byte that is not UTF-8 (set through the
    environment as bytes) used to read as unset: redaction off, every key on the
    stream. Now it is a configuration error naming the variable: nothing is sent."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_REDACT=b"aws-keys,\xff")
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 3, 5, line_factory=lambda i, lid: f"line {lid} key={SECRET_KEY}")
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    err = sim.stderr_text()
    line = next((l for l in err.splitlines() if "invalid configuration" in l), "")
    assert 'KINESIS_TELEMETRY_REDACT="aws-keys,\ufffd" is invalid' in line and "not UTF-8" in line, err[-2000:]
    assert kinesalite.read_all(name) == []


def _fifo(tmp_path):
    path = tmp_path / "bundle.fifo"
    os.mkfifo(path)
    return str(path)


def _huge(tmp_path):
    path = tmp_path / "huge.pem"
    with open(path, "wb") as f:
        f.truncate(150 * 1024 * 1024)  # sparse: 150 MB without the disk space
    return str(path)


@pytest.mark.parametrize("make,why", [
    (_fifo, "a FIFO, not a regular file"),
    (lambda tmp_path: "/dev/zero", "a character device, not a regular file"),
    (_huge, "157286400 bytes or more, over the 1048576-byte limit"),
    (lambda tmp_path: str(tmp_path), "a directory, not a regular file"),
], ids=["fifo", "dev-zero", "150-MB", "directory"])
def test_a_ca_bundle_that_cannot_be_read_safely_is_refused_at_start(ext_bin, kinesalite, tmp_path, make, why):
    """AWS_CA_BUNDLE naming a FIFO (which blocked start-up until the init timed out),
    /dev/zero (read without end), a 150 MB file (274 MB of RSS) or a directory: a
    configuration error at start naming the variable, the path and why; init is not
    held up, memory stays small, the function runs."""
    name, _ = new_stream(kinesalite)
    path = make(tmp_path)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, AWS_CA_BUNDLE=path)) as sim:
        run_invokes(sim, 2, 3)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    assert sim.init_ms < 2000, sim.init_ms
    assert max(sim.peak_rss_kb) < 16 * 1024, sim.peak_rss_kb
    err = sim.stderr_text()
    line = next((l for l in err.splitlines() if "invalid configuration" in l), "")
    assert f'AWS_CA_BUNDLE="{path}" is invalid: expected a readable PEM file ({why})' in line, err[-2000:]
