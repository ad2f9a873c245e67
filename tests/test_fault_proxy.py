"""The fault proxy itself, driven by boto3 and raw sockets (no extension): each
fault does what the delivery tests rely on it doing."""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import socket
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import new_stream
from cred_server import CredServer
from fault_proxy import (CLOSE, HANG, HANG_AFTER_UPSTREAM, PASS, RESET, RESET_AFTER_UPSTREAM,
                         Faults, FaultProxy, ShardLimits)


def client(endpoint, region="us-east-1", timeout=2.0, **creds):
    creds = creds or {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secret"}
    return boto3.session.Session().client(
        "kinesis", endpoint_url=endpoint, region_name=region,
        config=Config(retries={"total_max_attempts": 1}, proxies={}, read_timeout=timeout,
                      connect_timeout=timeout, tcp_keepalive=False), **creds)


def put(k, stream, n, key="k", size=10):
    return k.put_records(StreamName=stream, Records=[
        {"Data": f"{i:0{size}d}".encode(), "PartitionKey": key} for i in range(n)])


def test_scripted_errors_partial_failures_and_accounting(kinesalite):
    name, _ = new_stream(kinesalite)
    faults = Faults(record_fail_share=0.5, request_errors=[(400, "ExpiredTokenException"), PASS],
                    seed=1)
    with FaultProxy(kinesalite.endpoint, faults) as proxy:
        k = client(proxy.endpoint)
        with pytest.raises(ClientError) as e:
            put(k, name, 3)
        assert e.value.response["Error"]["Code"] == "ExpiredTokenException"
        out = put(k, name, 100)
        failed = [r for r in out["Records"] if "ErrorCode" in r]
        assert out["FailedRecordCount"] == len(failed) > 20
        assert {r["ErrorCode"] for r in failed} == {"ProvisionedThroughputExceededException",
                                                     "InternalFailure"}
        assert sum(proxy.accepted.values()) == 100 - len(failed)
        assert [p.outcome for p in proxy.puts] == ["error", "ok"]
        assert proxy.puts[1].failed_records == len(failed)
    assert len(kinesalite.read_all(name)) == 100 - len(failed)


def test_reset_hang_and_close_are_seen_by_the_client(kinesalite):
    name, _ = new_stream(kinesalite)
    script = [RESET, HANG, CLOSE, RESET_AFTER_UPSTREAM, HANG_AFTER_UPSTREAM, PASS]
    with FaultProxy(kinesalite.endpoint, Faults(request_errors=script)) as proxy:
        k = client(proxy.endpoint, timeout=0.5)
        seen = []
        for _ in range(5):
            t0 = time.perf_counter()
            try:
                put(k, name, 4, size=2000)
                seen.append("ok")
            except Exception as e:  # noqa: BLE001
                seen.append((type(e).__name__, round(time.perf_counter() - t0, 1)))
        assert "ok" not in seen, seen
        assert seen[1][1] >= 0.4 and seen[4][1] >= 0.4, seen  # the hangs ran into the timeout
        put(k, name, 4)
        assert [p.outcome for p in proxy.puts] == [RESET, HANG, CLOSE, RESET_AFTER_UPSTREAM,
                                                   HANG_AFTER_UPSTREAM, "ok"]
        # only the *_after_upstream requests reached the emulator, and they are ambiguous
        assert sum(proxy.ambiguous.values()) == 8
    assert len(kinesalite.read_all(name)) == 12


def test_refusing_connections_then_listening_again_on_the_same_port(kinesalite):
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint) as proxy:
        port = proxy.port
        k = client(proxy.endpoint)
        put(k, name, 1)
        t = proxy.refuse_for(1.0)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        t.join()
        assert proxy.port == port and proxy.listening
        put(k, name, 1)  # boto3's pooled connection was reset: a new one works
    assert len(kinesalite.read_all(name)) == 2


@pytest.mark.parametrize("mode", ["rst", "fin", "blackhole"])
def test_killing_idle_keepalive_connections(kinesalite, mode):
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint) as proxy:
        c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=0.5)
        body = json.dumps({"StreamName": name, "Records": [{"Data": "YQ==", "PartitionKey": "k"}]})
        headers = {"X-Amz-Target": "Kinesis_20131202.PutRecords",
                   "Content-Type": "application/x-amz-json-1.1",
                   "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/kinesis/"
                                    "aws4_request, SignedHeaders=host, Signature=00",
                   "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}
        c.request("POST", "/", body=body, headers=headers)
        assert c.getresponse().read()
        deadline = time.time() + 2
        while proxy.idle_connections() == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert proxy.kill_idle_connections(mode) == 1
        time.sleep(0.15)
        with pytest.raises((ConnectionError, OSError, http.client.HTTPException)):
            c.request("POST", "/", body=body, headers=headers)
            c.getresponse().read()
        c.close()
        if mode == "blackhole":
            assert proxy.dead_connection_requests == 1
        assert len(proxy.puts) == 1


def test_slow_sink_delay_and_bandwidth(kinesalite):
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint, Faults(delay_ms=300, bandwidth_bps=200_000)) as proxy:
        k = client(proxy.endpoint, timeout=5)
        t0 = time.perf_counter()
        put(k, name, 50, size=2000)  # ~135 KB of body at 200 KB/s + 300 ms
        took = time.perf_counter() - t0
        assert 0.9 < took < 3, took
        assert proxy.puts[0].t_end - proxy.puts[0].t_start > 0.3


def test_a_client_gone_during_a_slow_body_read_ends_when_it_closed(kinesalite):
    """A client that gives up while the proxy reads its body at bandwidth_bps: what
    it wrote before closing waits in the socket buffers and keeps arriving after the
    close, so the request's window (the oracle of "no request in flight at
    event/next") ends when the client's socket was last seen open, not when those
    bytes ran out (which was up to 80 ms after the extension's event/next in
    test_scale's flood under load: a request abandoned at its deadline looked in
    flight)."""
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint, Faults(bandwidth_bps=2_000_000)) as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port))
        length = 8 << 20
        s.sendall((f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                   "X-Amz-Target: Kinesis_20131202.PutRecords\r\n"
                   "Content-Type: application/x-amz-json-1.1\r\n\r\n").encode())
        s.setblocking(False)
        written = 0
        t_fill = time.perf_counter() + 0.3
        while time.perf_counter() < t_fill:  # fill the socket buffers (~MBs on loopback)
            try:
                written += s.send(b"x" * 65536)
            except BlockingIOError:
                time.sleep(0.005)
        s.close()
        t_close = time.perf_counter()
        deadline = time.monotonic() + 30
        while not proxy.puts and time.monotonic() < deadline:
            time.sleep(0.01)
        p = proxy.puts[0]
        assert p.outcome == "client_gone", p
        detected = time.perf_counter()
        assert written > 1 << 20 and detected - t_close > 0.2, (written, detected - t_close)
        assert p.t_start < p.t_end <= t_close, (p.t_end - t_close, written)


def test_per_shard_limits_follow_the_streams_hash_key_ranges(kinesalite):
    name, _ = new_stream(kinesalite, shards=2)
    limits = ShardLimits(records_per_s=100, bytes_per_s=1 << 20)
    with FaultProxy(kinesalite.endpoint, Faults(shard_limits=limits)) as proxy:
        ranges = proxy.shard_ranges(name)
        assert len(ranges) == 2 and ranges[0][0] == 0 and ranges[1][1] == 2 ** 128 - 1

        def shard_of(key):
            h = int(hashlib.md5(key.encode()).hexdigest(), 16)
            return next(s for a, b, s in ranges if a <= h <= b)

        keys = {}
        i = 0
        while len(keys) < 2:
            keys.setdefault(shard_of(f"key-{i}"), f"key-{i}")
            i += 1
        k = client(proxy.endpoint)
        # 150 records to each shard at once: 100 pass per shard, 50 throttled per shard
        recs = [{"Data": b"x" * 10, "PartitionKey": key} for key in keys.values() for _ in range(150)]
        out = k.put_records(StreamName=name, Records=recs)
        codes = collections.Counter(r.get("ErrorCode") for r in out["Records"])
        assert codes == {None: 200, "ProvisionedThroughputExceededException": 100}, codes
        assert proxy.throttled_records == 100
        assert dict(proxy.throttled_by_shard) == {s: 50 for s in keys}
        assert proxy.shard_mismatches == 0  # kinesalite put each record where we said
        time.sleep(0.5)  # 50 tokens back per shard (and a little more while answering)
        out = k.put_records(StreamName=name, Records=recs[:100])  # all to the first shard
        assert 50 <= 100 - out["FailedRecordCount"] <= 90, out["FailedRecordCount"]


def test_token_check_against_the_credentials_server(kinesalite):
    name, _ = new_stream(kinesalite)
    with CredServer(lifetime_s=3600) as creds, \
            FaultProxy(kinesalite.endpoint, Faults(token_check=creds.is_valid)) as proxy:
        import urllib.request
        req = urllib.request.Request(creds.url, headers={"Authorization": creds.auth_token})
        c = json.load(urllib.request.urlopen(req, timeout=5))
        assert c["Expiration"].endswith("Z") and creds.fetches == 1
        k = client(proxy.endpoint, aws_access_key_id=c["AccessKeyId"],
                   aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["Token"])
        put(k, name, 1)
        creds.revoke_all()
        with pytest.raises(ClientError) as e:
            put(k, name, 1)
        assert e.value.response["Error"]["Code"] == "ExpiredTokenException"
        assert proxy.token_rejections == 1
        assert proxy.puts[0].access_key == c["AccessKeyId"] and proxy.puts[0].token == c["Token"]
        bad = urllib.request.Request(creds.url, headers={"Authorization": "nope"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=5)
        assert e.value.code == 403 and creds.refused == 1
