"""Tests of tests/emulators.py: each local Kinesis emulator starts on a free loopback
port, takes records through boto3 and gives them back byte for byte.

    bash tests/install_deps.sh
    .deps/venv/bin/python -m pytest tests/test_emulators.py -q [-n 2]
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

import emulators
from emulators import (
    moto_disable_auth,
    moto_enable_auth,
    moto_make_credentials,
    start_kinesalite,
    start_kinesis_local,
    start_moto,
)

pytestmark = pytest.mark.timeout(180)

ALL = ["kinesalite", "kinesis-local", "moto"]
WITH_ARN = ["kinesis-local", "moto"]
BUSY_PORTS = {4243, 4567, 4568, 9001, 5000}


@pytest.fixture(scope="module", params=ALL)
def emulator(request):
    """One emulator of each kind per module (per xdist worker); tests use fresh streams."""
    emu = emulators.start(request.param)
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def emulator_by_name():
    started: dict[str, emulators.Emulator] = {}

    def get(name):
        if name not in started:
            started[name] = emulators.start(name)
        return started[name]

    yield get
    for emu in started.values():
        emu.stop()


def fresh_name(prefix="stream"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def sample_records(n=40):
    """Binary payloads that a lossy transport would mangle: every byte value, NULs,
    invalid UTF-8, a 100 KiB blob, and non-ASCII partition keys."""
    out = [
        (bytes(range(256)), "all-bytes"),
        (b"\x00" * 17, "nuls"),
        (b"\xff\xfe\xfd not utf-8 \xc3\x28", "bad-utf8"),
        ("héllo wörld ✓".encode(), "ключ-unicode"),
        (os.urandom(100 * 1024), "big"),
        (b"{\"json\": true}\n", "k" * 256),  # longest allowed partition key
    ]
    out += [(os.urandom(1 + i * 7), f"key-{i % 9}") for i in range(n - len(out))]
    return out


def put_all(client, ref, records):
    resp = client.put_records(**ref, Records=[{"Data": d, "PartitionKey": k} for d, k in records])
    assert resp["FailedRecordCount"] == 0, resp
    assert len(resp["Records"]) == len(records)
    return resp["Records"]


# ------------------------------------------------------------------------------ basics


def test_starts_on_loopback_with_a_kernel_picked_port(emulator):
    assert emulator.alive()
    assert emulator.endpoint == f"http://127.0.0.1:{emulator.port}"
    assert emulator.port not in BUSY_PORTS
    assert emulator.started_in < emulators.STARTUP_TIMEOUT
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=2):
        pass
    assert emulator.kinesis.list_streams()["StreamNames"] is not None


def test_create_stream_is_active_and_returns_arn(emulator):
    name = fresh_name()
    arn = emulator.create_stream(name, shards=3)
    assert arn == emulator.stream_arn(name)
    assert arn.startswith(f"arn:aws:kinesis:{emulator.region}:") and arn.endswith(f":stream/{name}")
    summary = emulator.kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE"
    assert summary["OpenShardCount"] == 3


def test_put_records_read_all_round_trip_byte_for_byte(emulator):
    name = fresh_name()
    emulator.create_stream(name, shards=2)
    records = sample_records()
    put = put_all(emulator.kinesis, {"StreamName": name}, records)

    got = emulator.read_all(name, expect=len(records))
    assert len(got) == len(records)
    for r in got:
        assert set(r) == {"data", "partition_key", "shard", "sequence"}
        assert isinstance(r["data"], bytes)

    # Same multiset of (data, key) ...
    assert sorted((r["data"], r["partition_key"]) for r in got) == sorted(records)
    # ... each where PutRecords said it went, and in put order within a shard.
    where = {(e["ShardId"], e["SequenceNumber"]): rec for e, rec in zip(put, records)}
    for r in got:
        assert where[(r["shard"], r["sequence"])] == (r["data"], r["partition_key"])
    for shard in {r["shard"] for r in got}:
        expected = [rec for e, rec in zip(put, records) if e["ShardId"] == shard]
        assert [(r["data"], r["partition_key"]) for r in got if r["shard"] == shard] == expected
    assert len({r["shard"] for r in got}) == 2  # 9 partition keys over 2 shards


def test_read_all_of_an_empty_stream(emulator):
    name = fresh_name()
    emulator.create_stream(name, shards=2)
    assert emulator.read_all(name) == []


def test_read_all_expect_waits_for_late_records(emulator):
    name = fresh_name()
    emulator.create_stream(name)
    put_all(emulator.kinesis, {"StreamName": name}, [(b"early", "a")])

    def later():
        time.sleep(0.5)
        put_all(emulator.client(), {"StreamName": name}, [(b"late-1", "b"), (b"late-2", "c")])

    t = threading.Thread(target=later)
    t.start()
    try:
        got = emulator.read_all(name, expect=3, timeout=20)
    finally:
        t.join()
    assert [r["data"] for r in got] == [b"early", b"late-1", b"late-2"]


def test_read_all_expect_gives_up_after_timeout(emulator):
    name = fresh_name()
    emulator.create_stream(name)
    put_all(emulator.kinesis, {"StreamName": name}, [(b"only", "k")])
    t0 = time.monotonic()
    got = emulator.read_all(name, expect=5, timeout=0.5)
    assert 0.4 < time.monotonic() - t0 < 10
    assert [r["data"] for r in got] == [b"only"]


# ------------------------------------------------------------------------------ StreamARN


@pytest.mark.parametrize("name", WITH_ARN)
def test_put_records_by_stream_arn(emulator_by_name, name):
    emu = emulator_by_name(name)
    assert emu.supports_arn
    stream = fresh_name()
    arn = emu.create_stream(stream)
    records = [(f"by-arn-{i}".encode(), f"pk{i}") for i in range(5)]
    put_all(emu.kinesis, {"StreamARN": arn}, records)
    got = emu.read_all(arn, expect=5)  # read by ARN too
    assert [(r["data"], r["partition_key"]) for r in got] == records


def test_kinesalite_has_no_stream_arn(emulator_by_name):
    emu = emulator_by_name("kinesalite")
    assert not emu.supports_arn
    stream = fresh_name()
    arn = emu.create_stream(stream)
    with pytest.raises(ClientError):
        emu.kinesis.put_records(StreamARN=arn, Records=[{"Data": b"x", "PartitionKey": "k"}])
    # The helpers turn an ARN into a name for it.
    assert emu.stream_ref(arn) == {"StreamName": stream}
    put_all(emu.kinesis, {"StreamName": stream}, [(b"x", "k")])
    assert [r["data"] for r in emu.read_all(arn, expect=1)] == [b"x"]


# ------------------------------------------------------------------------------ processes


def test_two_kinesalites_in_parallel_are_separate():
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: start_kinesalite(), range(2))
    try:
        assert a.port != b.port
        assert a.proc.pid != b.proc.pid
        a.create_stream("same-name")
        b.create_stream("same-name")
        put_all(a.kinesis, {"StreamName": "same-name"}, [(b"only in a", "k")])
        assert [r["data"] for r in a.read_all("same-name", expect=1)] == [b"only in a"]
        assert b.read_all("same-name") == []
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("start", [start_kinesalite, start_kinesis_local, start_moto],
                         ids=ALL)
def test_stop_kills_the_process_group_and_frees_the_port(start, tmp_path):
    emu = start(tmp_path)
    assert emu.workdir.parent == tmp_path and emu.log_path.exists()
    emu.create_stream(fresh_name())  # leaves a keep-alive connection open
    other = emu.client()
    other.list_streams()  # and one that stop() doesn't know about
    pid, port = emu.proc.pid, emu.port
    t0 = time.monotonic()
    emu.stop()
    assert time.monotonic() - t0 < 5
    assert emu.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    emu.stop()  # idempotent
    assert emu.workdir.exists()  # a caller's tmpdir is left for the caller


def test_context_manager_and_own_tmpdir_cleanup():
    with start_kinesalite() as emu:
        workdir = emu.workdir
        assert workdir.exists()
        assert emu.alive()
    assert not emu.alive()
    assert not workdir.exists()


def test_kinesis_local_without_proc_picks_free_ports_and_retries(monkeypatch):
    """The fallback for systems without /proc: ports picked in advance, and a start
    whose port was taken in the meantime is retried with new ones."""
    busy = socket.socket(socket.AF_INET6)
    busy.bind(("", 0))
    busy.listen()
    picks = iter([busy.getsockname()[1]])
    real_free_port = emulators._free_port
    monkeypatch.setattr(emulators, "_listening_ports", lambda pid: None)
    monkeypatch.setattr(emulators, "_free_port", lambda: next(picks, None) or real_free_port())
    try:
        with start_kinesis_local() as emu:
            assert emu.port != busy.getsockname()[1]
            assert (emu.workdir / "kinesis-local.0.log").read_text().count("EADDRINUSE")
            emu.create_stream("s")
            put_all(emu.kinesis, {"StreamName": "s"}, [(b"fallback", "k")])
            assert [r["data"] for r in emu.read_all("s", expect=1)] == [b"fallback"]
    finally:
        busy.close()


def test_startup_failure_reports_the_log(monkeypatch):
    monkeypatch.setattr(emulators, "_KINESALITE_WRAPPER", "console.log('boom'); process.exit(3)")
    with pytest.raises(emulators.EmulatorError, match=r"(?s)exited with code 3.*boom"):
        start_kinesalite()


# ------------------------------------------------------------------------------ moto auth


@pytest.fixture
def moto_with_auth():
    emu = start_moto()
    stream = fresh_name()
    arn = emu.create_stream(stream)
    creds = moto_make_credentials(emu, arn)
    moto_enable_auth(emu)
    yield emu, stream, arn, creds
    emu.stop()


def test_moto_auth_accepts_assumed_role_credentials(moto_with_auth):
    emu, stream, arn, (key, secret, token) = moto_with_auth
    assert key.startswith("ASIA") and token
    good = emu.client(access_key=key, secret=secret, token=token)
    put_all(good, {"StreamName": stream}, [(b"signed-by-name", "k1")])
    put_all(good, {"StreamARN": arn}, [(b"signed-by-arn", "k2")])
    moto_disable_auth(emu)  # read_all signs with fake keys
    assert [r["data"] for r in emu.read_all(stream, expect=2)] == [b"signed-by-name", b"signed-by-arn"]


def test_moto_auth_refuses_a_wrong_secret(moto_with_auth):
    emu, stream, _, (key, secret, token) = moto_with_auth
    bad = emu.client(access_key=key, secret=secret[:-1] + ("A" if secret[-1] != "A" else "B"), token=token)
    with pytest.raises(ClientError) as err:
        bad.put_records(StreamName=stream, Records=[{"Data": b"x", "PartitionKey": "k"}])
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # moto answers this one in XML (real Kinesis: JSON), which botocore's JSON parser
    # leaves as Code "403" with the XML as the message.
    error = err.value.response["Error"]
    assert "SignatureDoesNotMatch" in f'{error["Code"]} {error.get("Message", "")}', error


def test_moto_auth_refuses_a_wrong_session_token_and_unknown_keys(moto_with_auth):
    emu, stream, _, (key, secret, token) = moto_with_auth
    for client in (emu.client(access_key=key, secret=secret, token=token + "x"),
                   emu.client(access_key=key, secret=secret),  # token missing
                   emu.client()):  # keys moto's IAM never issued
        with pytest.raises(ClientError) as err:
            client.put_records(StreamName=stream, Records=[{"Data": b"x", "PartitionKey": "k"}])
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403)


def test_moto_make_credentials_works_with_auth_already_on(moto_with_auth):
    emu, stream, arn, _ = moto_with_auth
    key, secret, token = moto_make_credentials(emu, arn)  # auth is on here
    put_all(emu.client(access_key=key, secret=secret, token=token),
            {"StreamName": stream}, [(b"second set", "k")])
    with pytest.raises(ClientError):  # ... and still on afterwards
        emu.client().put_records(StreamName=stream, Records=[{"Data": b"x", "PartitionKey": "k"}])
