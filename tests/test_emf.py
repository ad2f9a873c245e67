"""KINESIS_TELEMETRY_EMF: the extension's health as CloudWatch metrics, one
Embedded Metric Format line on stdout with each metrics record
(src/dispatch/emf.rs; docs/record-formats.md, "The extension's own records").

Checked three ways, end to end (the built binary under tests/lambda_sim.py,
writing to kinesalite):
- against the specification: every line validates against the JSON schema AWS
  publishes for EMF (below, with `jsonschema`), plus the rules the schema cannot
  say (each declared metric a numeric root member, each dimension a string one);
- by a consumer: the lines parsed back into metric values, summed as CloudWatch
  sums them, equal the metrics records read back from the stream;
- the loop-back: the line reaches the Telemetry API as an `extension` event; it is
  not forwarded to Kinesis (counted as ownEmfLines), and on Lambda Managed
  Instances (never frozen) it does not keep the periodic record coming while idle.
"""

from __future__ import annotations

import collections
import json
import re
import time

import jsonschema
import pytest

from conftest import assert_clean_exit, ext_env, new_stream
from delivery import OWN_TYPES, own_records
from lambda_sim import LambdaSim

EMF_TYPE = b"kinesis-telemetry-extension.emf"

# The schema for validating embedded metric format documents, copied from AWS's
# "Specification: Embedded metric format", section "Embedded metric format example
# and JSON schema":
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
# (source: github.com/awsdocs/amazon-cloudwatch-user-guide,
# doc_source/CloudWatch_Embedded_Metric_Format_Specification.md). Only the `$id`s and
# `examples`, which validate nothing, are left out.
EMF_SCHEMA = {
    "type": "object",
    "title": "Root Node",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "title": "Metadata",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "title": "The Timestamp Schema"},
                "CloudWatchMetrics": {
                    "type": "array",
                    "title": "MetricDirectives",
                    "items": {
                        "type": "object",
                        "title": "MetricDirective",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "properties": {
                            "Namespace": {
                                "type": "string",
                                "title": "CloudWatch Metrics Namespace",
                                "pattern": "^(.*)$",
                                "minLength": 1,
                                "maxLength": 255,
                            },
                            "Dimensions": {
                                "type": "array",
                                "title": "The Dimensions Schema",
                                "minItems": 1,
                                "items": {
                                    "type": "array",
                                    "title": "DimensionSet",
                                    "minItems": 0,
                                    "maxItems": 9,
                                    "items": {
                                        "type": "string",
                                        "title": "DimensionReference",
                                        "pattern": "^(.*)$",
                                        "minLength": 1,
                                        "maxLength": 255,
                                    },
                                },
                            },
                            "Metrics": {
                                "type": "array",
                                "title": "MetricDefinitions",
                                "items": {
                                    "type": "object",
                                    "title": "MetricDefinition",
                                    "required": ["Name"],
                                    "properties": {
                                        "Name": {
                                            "type": "string",
                                            "title": "MetricName",
                                            "pattern": "^(.*)$",
                                            "minLength": 1,
                                            "maxLength": 255,
                                        },
                                        "Unit": {
                                            "type": "string",
                                            "title": "MetricUnit",
                                            "pattern": "^(Seconds|Microseconds|Milliseconds|Bytes|Kilobytes|Megabytes|Gigabytes|Terabytes|Bits|Kilobits|Megabits|Gigabits|Terabits|Percent|Count|Bytes\\/Second|Kilobytes\\/Second|Megabytes\\/Second|Gigabytes\\/Second|Terabytes\\/Second|Bits\\/Second|Kilobits\\/Second|Megabits\\/Second|Gigabits\\/Second|Terabits\\/Second|Count\\/Second|None)$",
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

# What the line carries (src/dispatch/emf.rs): the counters, by the metrics
# record's names, and the post-runtime figures.
COUNTS = {"eventsReceived", "recordsSent", "droppedRejected", "droppedShutdown",
          "refusedAtCap", "parkedRequests", "droppedAccessDenied", "droppedStreamNotFound", "droppedKms",
          "droppedCredentials", "droppedSignature", "duplicateRisk", "lambdaDroppedRecords",
          "sampledOutLines", "redactions"}
MILLISECONDS = {"postRuntimeMedianMs", "postRuntimeMaxMs"}


def check_against_specification(doc: dict, line: str) -> None:
    """The schema, and the rules of the specification the schema cannot express."""
    jsonschema.Draft7Validator(EMF_SCHEMA).validate(doc)
    assert len(line.encode()) < 256 * 1024, "over CloudWatch Logs' event size"
    ts = doc["_aws"]["Timestamp"]
    assert abs(ts / 1000 - time.time()) < 600, f"Timestamp {ts} is not milliseconds of now"
    for directive in doc["_aws"]["CloudWatchMetrics"]:
        assert len(directive["Metrics"]) <= 100
        for dims in directive["Dimensions"]:
            for d in dims:
                assert isinstance(doc.get(d), str), f"dimension {d} is no string root member"
        for m in directive["Metrics"]:
            v = doc.get(m["Name"])
            assert isinstance(v, (int, float)) and not isinstance(v, bool), \
                f"metric {m['Name']} is not a numeric root member: {v!r}"


def emf_lines(sim) -> list[tuple[str, dict]]:
    """Everything on the extension's stdout: each line must be an EMF document."""
    out = []
    for line in sim.stdout_lines():
        doc = json.loads(line)  # nothing but EMF lines on stdout
        assert doc.get("type") == EMF_TYPE.decode(), line
        out.append((line, doc))
    return out


def units(doc: dict) -> dict[str, str]:
    return {m["Name"]: m["Unit"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}


def test_emf_lines_follow_the_specification_and_sum_to_the_metrics_records(ext_bin, kinesalite):
    """Periodic and final lines (invokes that run 40 ms, each end flushed, a
    record every 150 ms of thawed time), redaction on so `redactions` counts: every line validates; summed
    per interval as CloudWatch's Sum does, each equals the metrics record written
    with it; the post-runtime figures are the record's, and no larger than the
    post-runtime time the simulator measured; the extension's own lines are not
    on the stream (the simulator's deliveries less those, exactly once)."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_EMF="true",
                  KINESIS_TELEMETRY_EMF_VERSION_DIMENSION="true",
                  KINESIS_TELEMETRY_EMF_NAMESPACE="Team/Telemetry",
                  KINESIS_TELEMETRY_METRICS_INTERVAL_MS="150",
                  KINESIS_TELEMETRY_REDACT="email",
                  # (each invoke's end waited for and flushed: thawed time runs
                  # through the invokes, and there is post-runtime time)
                  KINESIS_TELEMETRY_FLUSH="end")
    with LambdaSim(ext_bin, env) as sim:
        sim.start()
        for _ in range(15):
            r = sim.invoke(log_lines=6, runtime_ms=40,
                           line_factory=lambda i, lid: f"mail a{i}@example.com {lid}")
            assert not r.timed_out, sim.stderr_text()
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=1, timeout=15)
    lines = emf_lines(sim)
    records = [m["record"] for m in own_records(recs, "metrics")]
    assert len(records) >= 3 and records[-1]["final"], records
    assert len(lines) == len(records), (len(lines), len(records))

    for line, doc in lines:
        check_against_specification(doc, line)
        directive = doc["_aws"]["CloudWatchMetrics"][0]
        assert directive["Namespace"] == "Team/Telemetry"
        assert directive["Dimensions"] == [["FunctionName"], ["FunctionName", "FunctionVersion"]]
        assert doc["FunctionName"] == sim.function_name
        assert doc["FunctionVersion"] == sim.function_version
        u = units(doc)
        assert {n for n, unit in u.items() if unit == "Count"} == COUNTS, u
        assert {n for n, unit in u.items() if unit == "Milliseconds"} <= MILLISECONDS, u

    # The consumer: CloudWatch sums the per-interval values; by each record the
    # sums are its counters, and its post-runtime figures are the line's.
    sums = collections.Counter()
    for (_, doc), record in zip(lines, records):
        assert doc["final"] == record["final"]
        for n in COUNTS:
            sums[n] += doc[n]
        expected = {n: record[n] for n in COUNTS - {"redactions"}}
        expected["redactions"] = sum(record["redactions"].values())
        assert dict(sums) == expected, (doc, record)
        for n in MILLISECONDS:
            assert doc.get(n) == record.get(n), (n, doc, record)
    assert sums["redactions"] >= 15 * 6, sums  # the lines did mention addresses
    assert sums["eventsReceived"] > 0 and sums["recordsSent"] > 0
    figures = [doc["postRuntimeMaxMs"] for _, doc in lines if "postRuntimeMaxMs" in doc]
    assert figures, "no interval with an invoke's end"
    assert max(figures) <= max(sim.post_runtime_ms) + 1.0, (figures, sim.post_runtime_ms)

    # The loop-back: our lines came back as extension events and stayed out of the
    # stream; everything else the simulator delivered is there exactly once.
    ours = [d for d in sim.delivered if EMF_TYPE in d]
    assert ours, "no EMF line came back through the Telemetry API (the path is untested)"
    assert all(json.loads(d)["type"] == "extension" for d in ours)
    assert not [r for r in recs if EMF_TYPE in r["data"]], "an EMF line reached Kinesis"
    assert records[-1]["ownEmfLines"] == len(ours), (records[-1], len(ours))
    on_stream = collections.Counter(r["data"] for r in recs if OWN_TYPES not in r["data"][:120])
    redacted = lambda d: re.sub(rb"a\d+@example\.com", b"[REDACTED:email]", d)  # noqa: E731
    expected = collections.Counter(redacted(d) for d in sim.delivered if EMF_TYPE not in d)
    assert on_stream == expected


def test_emf_lines_do_not_keep_an_idle_managed_instance_writing(ext_bin, kinesalite):
    """Lambda Managed Instances never freeze: were the extension's own EMF line,
    back as an `extension` event, counted as telemetry flowing, every line would
    make the next periodic record due, forever. Traffic for 1 s with a record
    every 200 ms, then 1.5 s idle: no line in the idle spell past the one
    interval that was already due, then the final one at SHUTDOWN."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_EMF="true",
                  KINESIS_TELEMETRY_METRICS_INTERVAL_MS="200",
                  KINESIS_TELEMETRY_FLUSH_INTERVAL_MS="100")
    with LambdaSim(ext_bin, env, managed_instances=True) as sim:
        sim.start()
        sim.run_traffic(200, 1.0, concurrency=2, log_lines=5)
        idle_from = time.time()
        time.sleep(1.5)  # the idle spell under test (nothing to wait for: nothing should happen)
        idle_to = time.time()
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    lines = emf_lines(sim)
    for line, doc in lines:
        check_against_specification(doc, line)
    stamps = [doc["_aws"]["Timestamp"] / 1000 for _, doc in lines]
    # One interval (and Lambda's buffering) after the traffic, the last
    # periodic line may still come; none after that until SHUTDOWN.
    late = [t for t in stamps if idle_from + 0.5 < t < idle_to]
    assert not late, f"{len(late)} lines while idle: {stamps}"
    assert lines[-1][1]["final"] is True
    recs = kinesalite.read_all(name, expect=1, timeout=15)
    final = [m["record"] for m in own_records(recs, "metrics") if m["record"]["final"]][-1]
    assert final["ownEmfLines"] >= 1, final  # the lines did come back, and were not forwarded
    assert not [r for r in recs if EMF_TYPE in r["data"]]
