"""Record formats, filters, enrichment and random hash keys (issue 5, "Cost and
latency"), end to end: the built extension under the Lambda simulator, writing
to kinesalite, read back with boto3 and decoded with implementations that are
not ours (PyPI aws-kinesis-agg for KPL aggregates, Python's gzip module and the
gzip command for NDJSON-gzip)."""

from __future__ import annotations

import base64
import collections
import datetime
import gzip
import http.client
import json
import re
import shutil
import subprocess
import time
from urllib.parse import urlsplit

import pytest

from conftest import assert_clean_exit, ext_env, new_stream, run_invokes
from lambda_sim import LambdaSim
from stream_check import (TimedProxy, assert_exactly_once, events_of, is_own, own_events,
                          unpack_gzip)

LIMIT = 16384  # KINESIS_TELEMETRY_MAX_RECORD_BYTES for the packed formats: several records per flush


def _read(emu, name, min_records=1, timeout=15):
    return emu.read_all(name, expect=min_records, timeout=timeout)


def _run(sim, invokes, lines, **kw):
    run_invokes(sim, invokes, lines, **kw)
    res = sim.shutdown()
    assert_clean_exit(sim, res)


def _line_to_request(sim, per_invoke: int) -> dict[str, str]:
    """Function line id -> request id of the invoke that logged it (the init line excluded)."""
    ids = sim.function_line_ids[sim.init_log_lines:]
    return {lid: sim.request_ids[i // per_invoke] for i, lid in enumerate(ids)}


LINE_ID = re.compile(r"line ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def _lid(event: dict):
    """The simulator's unique line id in a function event (text or JSON record)."""
    rec = event.get("record")
    m = LINE_ID.search(rec if isinstance(rec, str) else json.dumps(rec))
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- kpl


def test_kpl_aggregates_deaggregate_with_the_reference_library(ext_bin, kinesalite):
    """KINESIS_TELEMETRY_FORMAT=kpl: every Kinesis record is a KPL aggregate that
    aws-kinesis-agg de-aggregates (its `aggregated` flag set: magic, protobuf and MD5
    all valid); every delivered event comes out byte for byte exactly once; far fewer
    records than events; no record over the record limit; inner records carry each
    event's own partition key (request mode: the request id)."""
    name, _ = new_stream(kinesalite)
    per = 15
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FORMAT="kpl", KINESIS_TELEMETRY_PARTITION_KEY="request",
                  KINESIS_TELEMETRY_MAX_RECORD_BYTES=str(LIMIT))
    with LambdaSim(ext_bin, env) as sim:
        _run(sim, 20, per, idle_ms=5)
    recs = _read(kinesalite, name)
    assert recs, sim.stderr_text()[-2000:]
    for r in recs:
        assert r["data"][:4] == b"\xf3\x89\x9a\xc2", r["data"][:40]
        assert len(r["data"]) + len(r["partition_key"].encode()) <= LIMIT
        assert 1 <= len(r["partition_key"]) <= 256
    inner = events_of(recs, "kpl")  # raises unless every record is an aggregate
    assert_exactly_once(sim, [e.data for e in inner])
    assert len(recs) * 5 < len(inner), (len(recs), len(inner))
    assert max(len(r["data"]) for r in recs) > LIMIT // 2  # aggregates fill up
    # no explicit hash keys by default
    assert all(e.explicit_hash_key in (None, "") for e in inner)
    # inner partition keys: platform events their own request, function lines their invoke's
    by_line = _line_to_request(sim, per)
    checked = collections.Counter()
    for e in inner:
        if is_own(e.data):
            continue
        v = json.loads(e.data)
        if v["type"] in ("platform.start", "platform.runtimeDone", "platform.report"):
            assert e.partition_key == v["record"]["requestId"], (e.partition_key, v)
            checked[v["type"]] += 1
        elif v["type"] == "function" and _lid(v) in by_line:
            assert e.partition_key == by_line[_lid(v)], v
            checked["function"] += 1
    assert checked["platform.start"] == 20 and checked["platform.report"] == 20, checked
    assert checked["function"] == 20 * per, checked


# ----------------------------------------------------------------------------- ndjson-gzip


def test_ndjson_gzip_records_are_gzipped_event_lines(ext_bin, kinesalite, tmp_path):
    """KINESIS_TELEMETRY_FORMAT=ndjson-gzip: each record is gzip (Python's gzip module
    and the gzip command agree) of the events joined by newlines, each line the
    event's exact bytes; every delivered event exactly once; records within the
    limit; compression and packing pay off (fewer records, fewer bytes)."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FORMAT="ndjson-gzip",
                  KINESIS_TELEMETRY_MAX_RECORD_BYTES=str(LIMIT))
    with LambdaSim(ext_bin, env) as sim:
        _run(sim, 20, 15, idle_ms=5)
    recs = _read(kinesalite, name)
    assert recs, sim.stderr_text()[-2000:]
    for r in recs:
        assert len(r["data"]) + len(r["partition_key"].encode()) <= LIMIT
    events = events_of(recs, "ndjson-gzip")
    assert_exactly_once(sim, [e.data for e in events])
    assert len(recs) * 5 < len(events), (len(recs), len(events))
    raw = sum(len(e.data) for e in events)
    packed = sum(len(r["data"]) for r in recs)
    assert packed * 2 < raw, (packed, raw)
    # the gzip command line tool reads the biggest record the same way
    gz = shutil.which("gzip")
    if gz is None:
        pytest.skip("no gzip command on this machine")
    big = max(recs, key=lambda r: len(r["data"]))
    f = tmp_path / "record.gz"
    f.write_bytes(big["data"])
    subprocess.run([gz, "-t", str(f)], check=True)
    out = subprocess.run([gz, "-dc", str(f)], check=True, capture_output=True).stdout
    assert out.endswith(b"\n") and out[:-1].split(b"\n") == unpack_gzip(big["data"])
    assert len(out) > len(big["data"])


@pytest.mark.parametrize("fmt", ["kpl", "ndjson-gzip"])
def test_own_records_travel_inside_packed_formats(ext_bin, kinesalite, fmt):
    """The extension's own records exist in the packed formats too: fragments of an
    event larger than the record limit (they rebuild it byte for byte), the marker
    of an unparseable Telemetry API body, the final metrics; all within the record
    limit. (KPL: a record too big to share an aggregate may go out plain; the
    library passes it through.)"""
    name, _ = new_stream(kinesalite)
    limit = 4096
    big = lambda i, lid: f"line {lid} " + ("é\"\\\t" * 3000) if i == 0 else f"line {lid} #{i} small"  # noqa: E731
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FORMAT=fmt, KINESIS_TELEMETRY_MAX_RECORD_BYTES=str(limit))
    with LambdaSim(ext_bin, env, freeze=False) as sim:
        sim.start()
        port = urlsplit(sim.subscription["destination"]["URI"]).port
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", "/", body=b"[1,", headers={"Content-Type": "application/json"})
        assert c.getresponse().status == 200
        c.close()
        for _ in range(2):
            assert not sim.invoke(log_lines=4, line_factory=big).timed_out
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    recs = _read(kinesalite, name)
    assert all(len(r["data"]) + len(r["partition_key"].encode()) <= limit for r in recs)
    events = [e.data for e in events_of(recs, fmt, allow_plain=True)]
    frags = collections.defaultdict(list)
    for v in own_events(events, "fragment"):
        frags[v["fragment"]["id"]].append(v)
    rebuilt = []
    for parts in frags.values():
        parts.sort(key=lambda v: v["fragment"]["index"])
        assert [p["fragment"]["index"] for p in parts] == list(range(parts[0]["fragment"]["count"]))
        rebuilt.append("".join(p["data"] for p in parts).encode())
    big_events = [e for e in sim.delivered if len(e) > limit]
    assert len(big_events) == 2 and sorted(rebuilt) == sorted(big_events)
    unparsed = own_events(events, "unparsed")
    assert len(unparsed) == 1 and unparsed[0]["record"]["body"] == "[1,", unparsed
    assert_exactly_once(sim, [e for e in events if b"kinesis-telemetry-extension.fragment" not in e[:120]],
                        expected=[e for e in sim.delivered if len(e) <= limit])


# ----------------------------------------------------------------------------- filters


def test_platform_events_filter_forwards_only_the_listed_types(ext_bin, kinesalite):
    """KINESIS_TELEMETRY_PLATFORM_EVENTS=start,runtimeDone: of the platform events only
    those two are on the stream (no initStart, report, extension, ...); function and
    extension logs all are."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_PLATFORM_EVENTS="start,runtimeDone")
    with LambdaSim(ext_bin, env) as sim:
        _run(sim, 6, 5)
    allowed = {"platform.start", "platform.runtimeDone"}

    def wanted(b: bytes) -> bool:
        t = json.loads(b)["type"]
        return not t.startswith("platform.") or t in allowed

    expected = [b for b in sim.delivered if wanted(b)]
    assert len(expected) < len(sim.delivered) - 6  # the filter had work to do
    recs = _read(kinesalite, name, len(expected) + 1)
    assert_exactly_once(sim, [r["data"] for r in recs], expected=expected)
    types = collections.Counter(json.loads(r["data"])["type"] for r in recs if not is_own(r["data"]))
    assert types["platform.start"] == 6 and types["platform.runtimeDone"] == 6, types
    assert types["function"] == 6 * 5 + 1, types
    assert {t for t in types if t.startswith("platform.")} == allowed, types


LEVEL_CYCLE = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", None, "text")


def test_min_level_drops_json_logs_below_it(ext_bin, kinesalite):
    """KINESIS_TELEMETRY_MIN_LEVEL=WARN with JSON logs: function lines at TRACE, DEBUG,
    INFO (and the INFO init line) are not forwarded; WARN, ERROR, FATAL, JSON lines
    without a level and text lines are; platform events all are."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_MIN_LEVEL="WARN")
    sim = LambdaSim(ext_bin, env, log_format="json")

    def line(i: int, lid: str):
        level = LEVEL_CYCLE[i % len(LEVEL_CYCLE)]
        if level == "text":
            return f"line {lid} #{i} a text line is always forwarded"
        rec = {"timestamp": "2026-11-25T22:09:45.436Z", "message": f"line {lid} #{i} at {level}",
               "requestId": sim.request_ids[-1]}
        if level is not None:
            rec["level"] = level
        return rec

    with sim:
        _run(sim, 4, 2 * len(LEVEL_CYCLE), line_factory=line)

    def dropped(b: bytes) -> bool:
        v = json.loads(b)
        return (v["type"] == "function" and isinstance(v["record"], dict)
                and v["record"].get("level") in ("TRACE", "DEBUG", "INFO"))

    expected = [b for b in sim.delivered if not dropped(b)]
    gone = [b for b in sim.delivered if dropped(b)]
    assert len(gone) == 4 * 2 * 3 + 1  # + the init line (INFO)
    recs = _read(kinesalite, name, len(expected) + 1)
    assert_exactly_once(sim, [r["data"] for r in recs], expected=expected)
    fn = [json.loads(r["data"]) for r in recs if b'"type":"function"' in r["data"][:80]]
    levels = collections.Counter(e["record"].get("level", "-") if isinstance(e["record"], dict) else "text"
                                 for e in fn)
    assert levels == {"WARN": 8, "ERROR": 8, "FATAL": 8, "-": 8, "text": 8}, levels


def test_min_level_reads_python_level_names(ext_bin, kinesalite):
    """Python's logging names (WARNING, CRITICAL), which its loggers such as
    Powertools write as `level`, are WARN and FATAL: at MIN_LEVEL=ERROR the
    warnings go (before, an unknown word was kept) and the critical lines stay."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_MIN_LEVEL="ERROR")
    sim = LambdaSim(ext_bin, env, log_format="json")
    cycle = ["WARNING", "warning", "CRITICAL", "ERROR"]

    def line(i: int, lid: str):
        return {"timestamp": "2026-11-25T22:09:45.436Z", "level": cycle[i % len(cycle)],
                "message": f"line {lid} #{i}"}

    with sim:
        _run(sim, 3, 2 * len(cycle), line_factory=line)

    def dropped(b: bytes) -> bool:
        v = json.loads(b)
        return (v["type"] == "function" and isinstance(v["record"], dict)
                and v["record"].get("level") in ("WARNING", "warning", "INFO"))

    expected = [b for b in sim.delivered if not dropped(b)]
    assert len(sim.delivered) - len(expected) == 3 * 2 * 2 + 1  # + the init line (INFO)
    recs = _read(kinesalite, name, len(expected) + 1)
    assert_exactly_once(sim, [r["data"] for r in recs], expected=expected)


def test_own_debug_logs_do_not_feed_back_per_invoke(ext_bin, kinesalite):
    """RUST_LOG=debug: the extension's own log lines come back to it as `extension`
    telemetry and are forwarded like any; the number per invoke stays a small
    constant instead of growing with every invoke (no feedback through its own
    "sent N records" lines)."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, RUST_LOG="debug")
    marks = []
    with LambdaSim(ext_bin, env) as sim:
        sim.start()
        for _ in range(14):
            marks.append(len(sim.produced))
            assert not sim.invoke(log_lines=3, runtime_ms=5).timed_out
        marks.append(len(sim.produced))
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    produced = list(sim.produced)
    per_invoke = [sum(1 for b in produced[a:b] if b'"type":"extension"' in b[:80])
                  for a, b in zip(marks, marks[1:])]
    recs = _read(kinesalite, name, len(sim.delivered) + 1)
    assert_exactly_once(sim, [r["data"] for r in recs])
    ext_on_stream = sum(1 for r in recs if b'"type":"extension"' in r["data"][:80])
    assert ext_on_stream >= sum(per_invoke)
    # (the first invokes carry start-up logs and adaptive's warm-up, end-like, flushes; a
    # line read from the pipe a little late counts for the next invoke: compare sums)
    steady = per_invoke[4:]
    early, late = steady[:5], steady[-5:]
    assert max(a + b for a, b in zip(steady, steady[1:])) <= 40, per_invoke
    assert sum(late) <= 1.5 * sum(early) + 12, per_invoke


def test_own_debug_logs_do_not_loop_while_thawed(ext_bin, kinesalite):
    """RUST_LOG=debug, periodic flushing every 100 ms, never frozen: once the invokes
    are over and everything is sent, the extension's own log lines about sending
    must not keep it sending (log line -> telemetry -> flush -> log line ...)."""
    name, _ = new_stream(kinesalite)
    with TimedProxy(kinesalite.endpoint) as proxy:
        env = ext_env(kinesalite, name, RUST_LOG="debug", AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_FLUSH="periodic", KINESIS_TELEMETRY_FLUSH_INTERVAL_MS="100")
        with LambdaSim(ext_bin, env, freeze=False) as sim:
            run_invokes(sim, 3, 5, runtime_ms=20)
            # Settle: wait (bounded) until everything the extension has received
            # so far, the last report included, is on its way through the proxy.
            deadline = time.monotonic() + 10
            while (time.monotonic() < deadline
                   and not all(proxy.accepted[e] for e in list(sim.delivered)
                               if b'"type":"platform.report"' in e[:60] or b'"type":"function"' in e[:60])):
                time.sleep(0.02)
            n0, t0 = len(proxy.put_windows), time.perf_counter()
            time.sleep(1.5)
            quiet = [w for w in proxy.put_windows[n0:] if w[0] >= t0]
            res = sim.shutdown()
            assert_clean_exit(sim, res)
    assert len(quiet) <= 2, (f"{len(quiet)} PutRecords in 1.5 s without any invoke: the extension's own "
                             f"logs feed back", sim.stderr_text()[-3000:])


# ----------------------------------------------------------------------------- enrichment


ENVELOPE_KEYS = {"functionName", "functionVersion", "region", "accountId", "environmentId", "id", "requestId",
                 "event"}
TRACE_KEYS = {"traceId", "traceIdW3C"}
XRAY_ROOT = re.compile(r"(?:^|;)\s*Root=(1-([0-9a-f]{8})-([0-9a-f]{24}))\s*(?:;|$)")


def emitted_traces(sim) -> dict[str, dict]:
    """Request id -> the envelope's trace fields for it, from the platform.start
    events the simulator emitted (their tracing header's X-Ray root, and the same
    32 hex digits for W3C); {} for an invocation started without a trace."""
    out = {}
    for b in sim.emitted:
        ev = json.loads(b)
        if ev.get("type") != "platform.start":
            continue
        rec = ev["record"]
        m = XRAY_ROOT.search(rec.get("tracing", {}).get("value", ""))
        out[rec["requestId"]] = {"traceId": m[1], "traceIdW3C": m[2] + m[3]} if m else {}
    return out


def trace_fields(v: dict) -> dict:
    return {k: v[k] for k in TRACE_KEYS if k in v}


def test_enrichment_envelope_carries_context_and_the_event_verbatim(ext_bin, kinesalite):
    """KINESIS_TELEMETRY_ENRICH=true: every record is an envelope with the function's
    name, version, region, the account id (from the register response), the
    environment id (= the environment partition key) and the request id (platform
    events: their own; function lines: the invoke in progress; none outside an
    invoke), the invocation's trace ids as the simulator's platform.start carried
    them (none outside an invoke), the tags in the order given, and `event`
    holding the delivered event's bytes verbatim."""
    name, _ = new_stream(kinesalite)
    per = 6
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_ENRICH="true",
                  KINESIS_TELEMETRY_TAGS="team=payments, env=prod,cost-centre:id=4 2,empty=")
    tags = b'"tags":{"team":"payments","env":"prod","cost-centre:id":"4 2","empty":""},'
    traced = collections.Counter()
    with LambdaSim(ext_bin, env, function_name="orders-fn", function_version="7",
                   account_id="210987654321") as sim:
        _run(sim, 5, per)
    recs = _read(kinesalite, name, len(sim.delivered) + 1)
    by_value = {json.dumps(json.loads(b), sort_keys=True): b for b in sim.delivered}
    assert len(by_value) == len(set(sim.delivered))
    by_line = _line_to_request(sim, per)
    init_lines = set(sim.function_line_ids[:sim.init_log_lines])
    traces = emitted_traces(sim)
    originals, envs, own = [], set(), []
    for r in recs:
        v = json.loads(r["data"])
        if "event" not in v:
            assert is_own(r["data"]), r["data"][:200]  # the extension's own records may be bare
            own.append(r["data"])
            continue
        assert set(v) - TRACE_KEYS == ENVELOPE_KEYS | {"tags"}, v.keys()
        assert tags in r["data"], r["data"][:400]  # in the order given
        ev = v["event"]
        if isinstance(ev, dict) and str(ev.get("type", "")).startswith("kinesis-telemetry-extension."):
            own.append(json.dumps(ev).encode())
            continue
        assert v["functionName"] == "orders-fn" and v["functionVersion"] == "7", v
        assert v["region"] == kinesalite.region and v["accountId"] == "210987654321", v
        assert isinstance(v["environmentId"], str) and v["environmentId"], v
        envs.add(v["environmentId"])
        assert v["environmentId"] == r["partition_key"]  # environment mode: the same id
        assert v["id"].startswith(v["environmentId"] + "-"), v["id"]  # stable identity (docs/delivery.md, "Duplicates")
        orig = by_value.get(json.dumps(ev, sort_keys=True))
        assert orig is not None, f"envelope of an event nobody delivered: {r['data'][:200]!r}"
        assert orig in r["data"], "the event's bytes are not in the envelope verbatim"
        assert json.loads(orig) == ev
        originals.append(orig)
        t = ev["type"]
        assert trace_fields(v) == traces.get(v["requestId"], {}), v
        traced[t.startswith("platform."), "traceId" in v] += 1
        if t.startswith("platform."):
            assert v["requestId"] == (ev["record"].get("requestId") if isinstance(ev["record"], dict) else None), v
        elif t == "function":
            lid = _lid(ev)
            if lid in init_lines:
                assert v["requestId"] is None, v
            else:
                assert v["requestId"] == by_line[lid], (v, by_line.get(lid))
        else:
            assert v["requestId"] is None or v["requestId"] in sim.request_ids, v
    assert len(envs) == 1, envs
    assert sorted(originals) == sorted(sim.delivered)
    assert len(traces) == 5 and all(traces.values()), traces
    assert traced[False, True] == 5 * per and traced[True, True] >= 5 * 3, traced
    assert len([o for o in own if b"kinesis-telemetry-extension.metrics" in o]) == 1, own


# ----------------------------------------------------------------------------- hash keys


def test_random_hash_key_spreads_one_partition_key_over_all_shards(ext_bin, kinesalite):
    """KINESIS_TELEMETRY_HASH_KEY=random with the single environment partition key:
    each record gets its own ExplicitHashKey in [0, 2^128), and the records spread
    evenly over 4 shards (each record on the shard whose range holds its key)."""
    name, _ = new_stream(kinesalite, shards=4)
    with TimedProxy(kinesalite.endpoint) as proxy:
        env = ext_env(kinesalite, name, KINESIS_TELEMETRY_HASH_KEY="random",
                      AWS_ENDPOINT_URL_KINESIS=proxy.endpoint)
        with LambdaSim(ext_bin, env) as sim:
            _run(sim, 8, 20)
        ranges = proxy.shard_ranges(name)
    recs = _read(kinesalite, name, len(sim.delivered) + 1)
    assert_exactly_once(sim, [r["data"] for r in recs])
    sent = proxy.accepted_log
    assert len(sent) == len(recs)
    assert len({a.partition_key for a in sent}) == 1  # environment mode: one key
    keys = [a.explicit_hash_key for a in sent]
    assert all(k is not None and k.isdigit() and 0 <= int(k) < 2 ** 128 for k in keys), keys[:5]
    assert len(set(keys)) == len(keys)
    for a in sent:
        h = int(a.explicit_hash_key)
        assert any(s <= h <= e and sid == a.shard for s, e, sid in ranges), (h, a.shard, ranges)
    per_shard = collections.Counter(r["shard"] for r in recs)
    n = len(recs)
    assert len(per_shard) == 4, per_shard
    assert all(0.12 * n <= c <= 0.40 * n for c in per_shard.values()), per_shard
    # the top bits are used too (uniform over the whole 128-bit range)
    assert max(int(k) for k in keys) > 2 ** 127


# ----------------------------------------------------------------------------- cwlogs
# Read back as a Kinesis-triggered Lambda consumer of CloudWatch Logs subscription
# records reads them: AWS Lambda Powertools for Python's parser models (PyPI
# aws-lambda-powertools), not our code.

# The decoded DATA_MESSAGE AWS's Lambda docs print as the example of what CloudWatch
# Logs delivers ("Using Lambda with CloudWatch Logs",
# https://docs.aws.amazon.com/lambda/latest/dg/services-cloudwatchlogs.html).
AWS_DOCS_DATA_MESSAGE = (
    '{"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"/aws/lambda/echo-nodejs",'
    '"logStream":"2019/03/13/[$LATEST]94fa867e5374431291a7fc14e2f56ae7",'
    '"subscriptionFilters":["LambdaStream_cloudwatchlogs-node"],"logEvents":[{'
    '"id":"34622316099697884706540976068822859012661220141643892546","timestamp":1552518348220,'
    '"message":"REPORT RequestId: 6234bffe-149a-b642-81ff-2e8e376d8aff\\tDuration: 46.84 ms\\t'
    'Billed Duration: 47 ms \\tMemory Size: 192 MB\\tMax Memory Used: 72 MB\\t\\n"}]}')


def _kinesis_event(recs: list[dict], arn: str) -> dict:
    """The event Lambda's Kinesis event source mapping invokes a consumer with."""
    return {"Records": [{
        "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventName": "aws:kinesis:record",
        "eventID": f"{r['shard']}:{r['sequence']}", "awsRegion": "us-east-1", "eventSourceARN": arn,
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/consumer",
        "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": r["partition_key"],
                    "sequenceNumber": r["sequence"], "approximateArrivalTimestamp": 1764000000.0,
                    "data": base64.b64encode(r["data"]).decode()},
    } for r in recs]}


def _powertools_logs(recs: list[dict], arn: str) -> list:
    """Every DATA_MESSAGE in the records, as Powertools' CloudWatchLogsDecode models."""
    from aws_lambda_powertools.utilities.parser.models import KinesisDataStreamModel
    from aws_lambda_powertools.utilities.parser.models.kinesis import extract_cloudwatch_logs_from_record
    event = KinesisDataStreamModel.model_validate(_kinesis_event(recs, arn))
    return [extract_cloudwatch_logs_from_record(r) for r in event.Records]


def _millis(time_: str) -> int:
    t = datetime.datetime.fromisoformat(time_.replace("Z", "+00:00"))
    return int(t.timestamp()) * 1000 + t.microsecond // 1000


def test_powertools_reads_the_aws_docs_data_message_from_kinesalite(kinesalite):
    """The harness itself: the DATA_MESSAGE AWS's docs show CloudWatch Logs delivering,
    gzipped into a record on kinesalite, read back and parsed exactly as the
    extension's records are below, comes out whole."""
    name, arn = new_stream(kinesalite)
    kinesalite.kinesis.put_record(StreamName=name, PartitionKey="k",
                                  Data=gzip.compress(AWS_DOCS_DATA_MESSAGE.encode()))
    [msg] = _powertools_logs(_read(kinesalite, name), arn or name)
    assert (msg.messageType, msg.owner, msg.logGroup) == ("DATA_MESSAGE", "123456789012", "/aws/lambda/echo-nodejs")
    assert msg.subscriptionFilters == ["LambdaStream_cloudwatchlogs-node"]
    [ev] = msg.logEvents
    assert ev.id == "34622316099697884706540976068822859012661220141643892546"
    assert int(ev.timestamp.timestamp() * 1000) == 1552518348220
    assert ev.message.startswith("REPORT RequestId: 6234bffe")


def _two_places(v: float, places: int) -> str:
    """A figure as docs/record-formats.md says the extension rounds it: the double
    v * 10**places, halves away from zero (CloudWatch may differ in the last digit
    on an exact half)."""
    p = v * 10 ** places
    k = int(p) + (p - int(p) >= 0.5)
    return f"{k // 100}.{k % 100:02d}" if places else str(k)


# Every platform event type the simulator delivers, and what cwlogs' text mode makes of
# it: CloudWatch's line (AWS's examples: "Lambda function logs" / "get-log-events"
# pages of the Lambda Developer Guide), or its JSON (CloudWatch shows no line). A type
# not here fails the test: someone decides.
CLOUDWATCH_LINES = {
    "platform.initStart": "INIT_START", "platform.start": "START", "platform.runtimeDone": "END",
    "platform.report": "REPORT", "platform.initReport": "INIT_REPORT",
    "platform.restoreStart": "RESTORE_START", "platform.restoreReport": "RESTORE_REPORT",
    "platform.initRuntimeDone": None, "platform.restoreRuntimeDone": None,
    "platform.extension": None, "platform.telemetrySubscription": None,
    "platform.logsDropped": None,
}
# How parsers of CloudWatch's Lambda logs read REPORT lines (the fields AWS documents,
# tab-separated as in its get-log-events example).
REPORT_LINE = re.compile(r"REPORT RequestId: (?P<id>\S+)\tDuration: (?P<d>\d+\.\d\d) ms\t"
                         r"Billed Duration: (?P<b>\d+) ms\tMemory Size: (?P<m>\d+) MB\t"
                         r"Max Memory Used: (?P<u>\d+) MB\t(?:Init Duration: (?P<i>\d+\.\d\d) ms\t)?")


def _cloudwatch_line(ty: str, rec) -> str | None:
    """The line CloudWatch Logs shows for a platform event (None: none, it stays JSON)."""
    kind = CLOUDWATCH_LINES[ty]
    if kind is None or not isinstance(rec, dict):
        return None
    status = rec.get("status", "success")
    if kind == "START":
        return f"START RequestId: {rec['requestId']} Version: {rec['version']}\n"
    if kind == "END":
        return f"END RequestId: {rec['requestId']}\n"
    if kind in ("INIT_START", "RESTORE_START"):
        return f"{kind} Runtime Version: {rec['runtimeVersion']}\tRuntime Version ARN: {rec['runtimeVersionArn']}\n"
    if kind in ("INIT_REPORT", "RESTORE_REPORT"):
        line = f"{kind} {kind[:-7].title()} Duration: {_two_places(rec['metrics']['durationMs'], 2)} ms"
        if status != "success":
            line += f"\tPhase: {rec['phase']}\tStatus: {status}\tError Type: {rec['errorType']}"
        return line + "\n"
    m = rec["metrics"]
    line = f"REPORT RequestId: {rec['requestId']}\t"
    for label, key, places, unit in [
            ("Duration", "durationMs", 2, "ms"), ("Billed Duration", "billedDurationMs", 0, "ms"),
            ("Memory Size", "memorySizeMB", 0, "MB"), ("Max Memory Used", "maxMemoryUsedMB", 0, "MB"),
            ("Init Duration", "initDurationMs", 2, "ms"), ("Restore Duration", "restoreDurationMs", 2, "ms"),
            ("Billed Restore Duration", "billedRestoreDurationMs", 0, "ms")]:
        if key in m:
            line += f"{label}: {_two_places(m[key], places)} {unit}\t"
    if status != "success":
        line += f"Status: {status}" + (f"\tError Type: {rec['errorType']}" if status != "timeout" else "")
    line += "\n"
    header = dict(p.split("=", 1) for p in rec["tracing"]["value"].split(";"))
    return line + (f"XRAY TraceId: {header['Root']}\tSegmentId: {header['Parent']}\t"
                   f"Sampled: {'true' if header['Sampled'] == '1' else 'false'}\t\n")


@pytest.mark.parametrize("log_format,platform", [("text", "text"), ("json", "text"), ("text", "json")])
def test_cwlogs_records_parse_as_cloudwatch_subscription_records(ext_bin, kinesalite, log_format, platform):
    """KINESIS_TELEMETRY_FORMAT=cwlogs: every record is a DATA_MESSAGE Powertools'
    Kinesis model with CloudWatch Logs extraction reads; owner, log group and stream are
    the function's (account id, /aws/lambda/<name>, Lambda's stream name form); every
    event the simulator delivered is there exactly once as a log event: function lines as
    CloudWatch shows them (a text line verbatim, a JSON line as its JSON), platform events
    as CloudWatch's START/END/REPORT/INIT_* lines by default (a REPORT line as its
    parsers read it, failed invocations with their status), as their JSON with
    KINESIS_TELEMETRY_CWLOGS_PLATFORM=json, and those CloudWatch has no line for as
    their JSON either way; timestamps from the events' times; 56-digit ids, all
    different; records within the limit and many events per record."""
    name, arn = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FORMAT="cwlogs",
                  KINESIS_TELEMETRY_MAX_RECORD_BYTES=str(LIMIT),
                  **({"KINESIS_TELEMETRY_CWLOGS_PLATFORM": "json"} if platform == "json" else {}))
    with LambdaSim(ext_bin, env, log_format=log_format, error_fraction=0.25) as sim:
        _run(sim, 20, 15, idle_ms=5)
    recs = _read(kinesalite, name)
    assert recs, sim.stderr_text()[-2000:]
    assert all(len(r["data"]) + len(r["partition_key"].encode()) <= LIMIT for r in recs)
    messages = _powertools_logs(recs, arn or name)
    stream_name = re.compile(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}")
    for m in messages:
        assert m.messageType == "DATA_MESSAGE" and m.owner == sim.account_id, m.owner
        assert m.logGroup == f"/aws/lambda/{sim.function_name}", m.logGroup
        assert stream_name.fullmatch(m.logStream), m.logStream
        assert m.subscriptionFilters == ["kinesis-telemetry-extension"]
    assert len({m.logStream for m in messages}) == 1
    events = [e for m in messages for e in m.logEvents]
    assert len(recs) * 5 < len(events), (len(recs), len(events))
    ids = [e.id for e in events]
    assert all(len(i) == 56 and i.isdigit() for i in ids) and len(set(ids)) == len(ids)

    def shown(raw: bytes) -> tuple[str, int]:
        """What CloudWatch shows for one delivered event, and its time in ms."""
        v = json.loads(raw)
        rec = v["record"]
        if v["type"] in ("function", "extension"):
            line = rec if isinstance(rec, str) else json.dumps(rec, sort_keys=True)
        elif platform == "text" and v["type"].startswith("platform."):
            line = _cloudwatch_line(v["type"], rec) or raw.decode()
        else:
            line = raw.decode()
        return line, _millis(v["time"])

    def normal(message: str) -> str:
        """JSON-format lines compared as JSON (key order and spacing are Lambda's)."""
        try:
            v = json.loads(message)
        except ValueError:
            return message
        return json.dumps(v, sort_keys=True) if isinstance(v, dict) and "type" not in v else message

    got = collections.Counter((normal(e.message), int(e.timestamp.timestamp() * 1000))
                              for e in events if not is_own(e.message.encode()))
    want = collections.Counter((normal(line), ms) for line, ms in map(shown, sim.delivered))
    assert not want - got, f"missing: {list((want - got).elements())[:3]}"
    assert not got - want, f"not delivered, or twice: {list((got - want).elements())[:3]}"
    kinds = collections.Counter(json.loads(raw)["type"] for raw in sim.delivered)
    assert kinds["function"] >= 20 * 15 and kinds["platform.report"] == 20, kinds
    assert {k for k in kinds if k.startswith("platform.")} <= CLOUDWATCH_LINES.keys(), kinds
    messages_ = [e.message for e in events]
    reports = [REPORT_LINE.match(m) for m in messages_ if m.startswith("REPORT ")]
    failed = sum(r.failed for r in sim.invoke_results)
    assert 0 < failed < 20, failed
    if platform == "text":
        starts = collections.Counter(m.split(" ", 1)[0] for m in messages_)
        assert (starts["START"], starts["END"], starts["INIT_START"], starts["INIT_REPORT"]) == (20, 20, 1, 1), starts
        assert len(reports) == 20 and all(reports), messages_[:5]
        assert {r["id"] for r in reports} == set(sim.request_ids)
        assert sum(1 for r in reports if r["i"]) == 1  # the cold start's Init Duration
        errors = [m for m in messages_ if m.startswith("REPORT ") and "\tStatus: error\tError Type: " in m]
        assert len(errors) == failed, errors[:2]
        assert all("\nXRAY TraceId: 1-" in m for m in messages_ if m.startswith("REPORT "))
    else:
        assert not reports and all(not m.startswith(("START ", "END ")) for m in messages_)
    own = [json.loads(e.message) for e in events if is_own(e.message.encode())]
    assert sum(1 for o in own if o["record"].get("final")) == 1, own
