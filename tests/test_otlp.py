"""KINESIS_TELEMETRY_FORMAT=otlp-json end to end (issue 24 part 2): the built
extension under the Lambda simulator, writing to kinesalite; every record read
back is parsed, strictly, by the official OpenTelemetry protobuf bindings (PyPI
opentelemetry-proto with Google's protobuf JSON parser: unknown fields and wrong
types fail) as an ExportLogsServiceRequest, and held to what the simulator
emitted: every delivered event once, severities as the lines state them, the
invocation ids and the trace ids of the simulator's tracing headers, the resource
attributes of the semantic conventions, and the tags."""

from __future__ import annotations

import base64
import collections
import datetime
import gzip
import json
import re

import pytest

from conftest import assert_clean_exit, ext_env, new_stream, run_invokes
from lambda_sim import LambdaSim
from stream_check import OWN_PREFIX
from test_formats import _line_to_request, emitted_traces

LIMIT = 16384
LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]
HEX = {"traceId": re.compile(r"[0-9a-f]{32}"), "spanId": re.compile(r"[0-9a-f]{16}")}
X_RAY_PARENT = re.compile(r"(?:^|;)\s*Parent=([0-9a-f]{16})\s*(?:;|$)")


def parse_request(data: bytes):
    """One record as an ExportLogsServiceRequest. OTLP's JSON encoding writes trace
    and span ids as hex where protobuf's generic JSON mapping expects base64: the ids
    are checked to be lower-case hex of the right length, then handed over in
    protobuf's spelling; everything else is parsed as it is."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    v = json.loads(data)
    for rl in v.get("resourceLogs", []):
        for sl in rl.get("scopeLogs", []):
            for lr in sl.get("logRecords", []):
                for field, form in HEX.items():
                    if field in lr:
                        assert form.fullmatch(lr[field]), lr
                        lr[field] = base64.b64encode(bytes.fromhex(lr[field])).decode()
                for field in ("timeUnixNano", "observedTimeUnixNano"):
                    # 64-bit integers are decimal strings in OTLP's JSON
                    assert isinstance(lr.get(field, ""), str), lr
    return json_format.Parse(json.dumps(v), ExportLogsServiceRequest())


def _nanos(time_: str) -> int:
    """An RFC 3339 time in ns since the epoch, its fraction to the nanosecond."""
    m = re.fullmatch(r"(.{19})(?:\.(\d+))?Z", time_)
    secs = int(datetime.datetime.fromisoformat(m[1] + "+00:00").timestamp())
    return secs * 10**9 + int((m[2] or "").ljust(9, "0")[:9])


def _stated_level(rec) -> int | None:
    """The level a line states, as the docs say the extension reads it: a JSON
    line's `level`; a text line's `[LEVEL]` prefix or third tab-separated field;
    Python's WARNING and CRITICAL as WARN and FATAL."""
    if isinstance(rec, dict):
        word = rec.get("level")
    elif rec.startswith("["):
        m = re.match(r"\[([^]]{0,8})\]", rec)
        word = m and m[1]
    else:
        fields = rec.split("\t")
        word = fields[2] if len(fields) > 2 else None
    word = word.upper() if isinstance(word, str) else None
    word = {"WARNING": "WARN", "CRITICAL": "FATAL"}.get(word, word)
    return LEVELS.index(word) if word in LEVELS else None


def _lines(log_format: str):
    """Lines stating levels the way runtimes do (and some stating none)."""
    def text(i: int, lid: str) -> str:
        return [f"2026-01-01T00:00:00.000Z\t8f5c\tWARN\tline {lid} node-style",
                f"[ERROR]\t2026-01-01T00:00:00.000Z\t8f5c\tline {lid} python-style",
                f"[WARNING]\t2026-01-01T00:00:00.000Z\t8f5c\tline {lid} python's warning",
                f"line {lid} no level \"quoted\" é"][i % 4]

    def js(i: int, lid: str) -> dict:
        level = ["DEBUG", "info", "WARN", "ERROR", "NOTICE", "CRITICAL"][i % 6]
        return {"timestamp": "2026-01-01T00:00:00.000Z", "level": level, "message": f"line {lid} é"}
    return text if log_format == "text" else js


def _attrs(kvs) -> dict:
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which)
    return out


@pytest.mark.parametrize("log_format,compression", [("text", "none"), ("json", "none"), ("text", "gzip")])
def test_otlp_json_records_parse_as_export_logs_requests(ext_bin, kinesalite, log_format, compression):
    """KINESIS_TELEMETRY_FORMAT=otlp-json: every record is one ExportLogsServiceRequest
    (strictly parsed by opentelemetry-proto) with one resource: the semantic
    conventions' cloud and FaaS attributes of the function, then the tags (no
    KINESIS_TELEMETRY_ENRICH needed); every event the simulator delivered is one log
    record: lines with their text or JSON text as body and the severity they state,
    platform events named by their type with their record as body, times from the
    events' ns-precise times; each invocation's records carry its request id as
    faas.invocation_id and its tracing header's ids (W3C trace id, Parent as span id,
    sampled flag); records within the limit, many log records each. With
    KINESIS_TELEMETRY_OTLP_COMPRESSION=gzip each record is the same, gzip-compressed
    (what a consumer of the collector's exporter with `compression: gzip` reads)."""
    name, _ = new_stream(kinesalite)
    per = 9
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FORMAT="otlp-json",
                  KINESIS_TELEMETRY_MAX_RECORD_BYTES=str(LIMIT),
                  KINESIS_TELEMETRY_TAGS="team=payments, env=prod",
                  KINESIS_TELEMETRY_OTLP_COMPRESSION=compression)
    with LambdaSim(ext_bin, env, log_format=log_format, function_name="orders-fn",
                   function_version="7", account_id="210987654321", memory_mb=256) as sim:
        run_invokes(sim, 12, per, idle_ms=5, line_factory=_lines(log_format))
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=1, timeout=15)
    assert recs, sim.stderr_text()[-2000:]
    assert all(len(r["data"]) + len(r["partition_key"].encode()) <= LIMIT for r in recs)

    logs, instances = [], set()
    for r in recs:
        data = r["data"]
        if compression == "gzip":
            assert data[:2] == b"\x1f\x8b", data[:40]
            data = gzip.decompress(data)
        req = parse_request(data)
        [rl] = req.resource_logs
        attrs = _attrs(rl.resource.attributes)
        instances.add(attrs.pop("faas.instance"))
        assert attrs == {
            "service.name": "orders-fn", "cloud.provider": "aws", "cloud.platform": "aws_lambda",
            "cloud.region": kinesalite.region, "cloud.account.id": "210987654321",
            "faas.name": "orders-fn", "faas.version": "7", "faas.max_memory": 256 * 2**20,
            "team": "payments", "env": "prod"}, attrs
        assert [kv.key for kv in rl.resource.attributes][-2:] == ["team", "env"]  # in the order given
        [sl] = rl.scope_logs
        assert sl.scope.name == "kinesis-telemetry-extension" and sl.scope.version, sl.scope
        logs.extend(sl.log_records)
    assert len(instances) == 1 and all(instances), instances
    assert len(recs) * 5 < len(logs), (len(recs), len(logs))

    by_line = _line_to_request(sim, per)
    traces = {rid: t.get("traceIdW3C") for rid, t in emitted_traces(sim).items()}
    parents = {}
    for b in sim.emitted:
        ev = json.loads(b)
        if ev.get("type") == "platform.start":
            parents[ev["record"]["requestId"]] = X_RAY_PARENT.search(ev["record"]["tracing"]["value"])[1]
    assert len(traces) == 12 and all(traces.values()), traces

    def norm(body: str) -> str:
        """JSON text compared as JSON (key order and spacing are Lambda's)."""
        try:
            v = json.loads(body)
        except ValueError:
            return body
        return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else body

    def expected(raw: bytes, current: str | None):
        """The log record one delivered event should be: (event name, ns, body as
        compared, severity, invocation id). `current`: the invocation in progress
        where it was delivered (an extension line's)."""
        v = json.loads(raw)
        t, rec = v["type"], v["record"]
        if t in ("function", "extension"):
            body = rec if isinstance(rec, str) else json.dumps(rec)
            lid = re.search(r"line ([0-9a-f-]{36})", body)
            rid = (by_line.get(lid[1]) if lid else None) if t == "function" else current
            return "", _nanos(v["time"]), norm(body), _stated_level(rec), rid
        return t, _nanos(v["time"]), norm(json.dumps(rec)), None, rec.get("requestId")

    want, current = collections.Counter(), None
    for raw in sim.delivered:
        v = json.loads(raw)
        if v["type"] == "platform.start":
            current = v["record"]["requestId"]
        elif v["type"] == "platform.runtimeDone":
            current = None
        want[expected(raw, current)] += 1

    def got(lr):
        body = norm(lr.body.string_value)
        level = (lr.severity_number - 1) // 4 if lr.severity_number else None
        if level is not None:
            assert lr.severity_text == LEVELS[level], lr
        rid = _attrs(lr.attributes).get("faas.invocation_id")
        return lr.event_name, lr.time_unix_nano, body, level, rid

    own = [lr for lr in logs if lr.event_name.startswith(OWN_PREFIX)]
    mine = [lr for lr in logs if not lr.event_name.startswith(OWN_PREFIX)]
    have = collections.Counter(map(got, mine))
    assert not want - have, f"missing: {list((want - have).elements())[:3]}"
    assert not have - want, f"not delivered, or twice: {list((have - want).elements())[:3]}"
    assert [json.loads(o.body.string_value).get("final") for o in own
            if o.event_name == OWN_PREFIX + "metrics"].count(True) == 1, own

    # Trace context: every record of an invocation carries its trace; none outside.
    kinds = collections.Counter()
    for lr in mine:
        rid = _attrs(lr.attributes).get("faas.invocation_id")
        assert lr.observed_time_unix_nano == lr.time_unix_nano
        if rid is None or rid not in traces:
            assert (lr.trace_id, lr.span_id, lr.flags) == (b"", b"", 0), lr
            continue
        assert lr.trace_id.hex() == traces[rid], (lr, traces[rid])
        assert lr.span_id.hex() == parents[rid] and lr.flags == 1, lr
        source = _attrs(lr.attributes).get("lambda.telemetry.type", "function")
        kinds[lr.event_name or source] += 1
    assert kinds["function"] == 12 * per and kinds["platform.start"] == 12 and kinds["platform.report"] == 12, kinds
    levels = collections.Counter(lr.severity_text for lr in mine if not lr.event_name)
    assert levels["WARN"] and levels["ERROR"] and levels[""], levels  # stated, and none stated


def test_otlp_json_parser_harness_rejects_what_is_not_otlp():
    """The harness itself: the strict parser refuses an unknown field, a trace id that
    is not hex, and accepts OTLP's hex ids and decimal-string times."""
    ok = (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"5",'
          b'"traceId":"5759e988bd862e3fe1be46a994272793","spanId":"53995c3f42cd8ad8","flags":1,'
          b'"eventName":"platform.start","body":{"stringValue":"x"}}]}]}]}')
    lr = parse_request(ok).resource_logs[0].scope_logs[0].log_records[0]
    assert (lr.time_unix_nano, lr.trace_id.hex(), lr.event_name) == (5, "5759e988bd862e3fe1be46a994272793",
                                                                     "platform.start")
    from google.protobuf.json_format import ParseError
    with pytest.raises(ParseError):
        parse_request(b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"bodyy":{}}]}]}]}')
    with pytest.raises(AssertionError):
        parse_request(ok.replace(b"5759e988bd", b"5759E988BD"))
    with pytest.raises(AssertionError):
        parse_request(ok.replace(b'"5"', b"5"))
