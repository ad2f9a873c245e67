"""Helpers for the format, filter and flush-mode tests (tests/test_formats.py,
tests/test_flush_modes.py) and the cost bench (bench/cost.py).

* ``unpack(data, fmt)``: the telemetry events inside one Kinesis record, decoded
  with implementations independent of the extension's: PyPI ``aws-kinesis-agg``
  for ``kpl`` and Python's ``gzip`` for ``ndjson-gzip``.
* ``TimedProxy``: a ``FaultProxy`` that also remembers, for every record the
  emulator accepted, when it was accepted and with which partition key and
  explicit hash key (the stream reader has no arrival timestamps).
* ``assert_exactly_once``: every event the simulator delivered to the extension
  (minus what a filter is meant to drop) is on the stream once, nothing else is
  but what the simulator emitted and the extension's own records.
"""

from __future__ import annotations

import base64
import collections
import gzip
import json
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from fault_proxy import PUT_RECORDS, FaultProxy

FORMATS = ("json", "kpl", "ndjson-gzip")
KPL_MAGIC = b"\xf3\x89\x9a\xc2"
OWN_PREFIX = "kinesis-telemetry-extension."


@dataclass
class Inner:
    """One telemetry event recovered from a Kinesis record."""
    data: bytes
    partition_key: Optional[str]  # KPL inner key; the record's own key otherwise
    explicit_hash_key: Optional[str] = None  # KPL inner explicit hash key


class NotAggregated(AssertionError):
    pass


def unpack_kpl(data: bytes, partition_key: str = "pk", allow_plain: bool = False) -> list[Inner]:
    """De-aggregate with aws-kinesis-agg; fail if the library did not see an aggregate
    (it passes non-aggregates through with ``aggregated`` unset), unless `allow_plain`:
    then such a record is one event."""
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records

    event = {"kinesis": {"kinesisSchemaVersion": "1.0", "sequenceNumber": "0",
                         "approximateArrivalTimestamp": 0.0, "partitionKey": partition_key,
                         "data": base64.b64encode(data).decode()}}
    out = []
    for r in iter_deaggregate_records([event]):
        k = r["kinesis"]
        if not k.get("aggregated"):
            if allow_plain:
                return [Inner(data, partition_key)]
            raise NotAggregated(f"record is not a KPL aggregate: {data[:60]!r}")
        out.append(Inner(base64.b64decode(k["data"]), k["partitionKey"], k.get("explicitHashKey")))
    return out


def unpack_gzip(data: bytes) -> list[bytes]:
    """gzip → NDJSON → the events, one per line. Lines are "\\n"-terminated (the
    extension ends the last one too; joined without a final newline is accepted
    as well); no empty line anywhere else."""
    assert data[:2] == b"\x1f\x8b", f"not gzip: {data[:20]!r}"
    text = gzip.decompress(data)
    body = text[:-1] if text.endswith(b"\n") else text
    lines = body.split(b"\n")
    assert all(lines), f"empty line in NDJSON: {text[:200]!r}"
    return lines


def unpack(data: bytes, fmt: str, partition_key: str = "pk", allow_plain: bool = False) -> list[Inner]:
    if fmt == "json":
        return [Inner(data, partition_key)]
    if fmt == "kpl":
        return unpack_kpl(data, partition_key, allow_plain)
    if fmt == "ndjson-gzip":
        return [Inner(line, partition_key) for line in unpack_gzip(data)]
    if fmt == "cwlogs":  # the log events' messages (not the events' bytes: see test_formats.py)
        message = json.loads(gzip.decompress(data))
        assert message["messageType"] == "DATA_MESSAGE", message
        return [Inner(e["message"].encode(), partition_key) for e in message["logEvents"]]
    if fmt == "otlp-json":  # the log records (not the events' bytes: see test_otlp.py)
        if data[:2] == b"\x1f\x8b":  # KINESIS_TELEMETRY_OTLP_COMPRESSION=gzip
            data = gzip.decompress(data)
        [rl] = json.loads(data)["resourceLogs"]
        [sl] = rl["scopeLogs"]
        return [Inner(json.dumps(lr).encode(), partition_key) for lr in sl["logRecords"]]
    raise ValueError(fmt)


def events_of(recs: Iterable[dict], fmt: str, allow_plain: bool = False) -> list[Inner]:
    """All events in stream records as returned by ``Emulator.read_all``."""
    out: list[Inner] = []
    for r in recs:
        out.extend(unpack(r["data"], fmt, r["partition_key"], allow_plain))
    return out


def is_own(data: bytes) -> bool:
    return b'"type":"' + OWN_PREFIX.encode() in data[:160]


def own_events(events: Iterable[bytes], kind: str) -> list[dict]:
    vals = [json.loads(d) for d in events if is_own(d)]
    return [v for v in vals if v.get("type") == OWN_PREFIX + kind]


def assert_exactly_once(sim, events: list[bytes], *, expected: Optional[list[bytes]] = None,
                        metrics: bool = True) -> None:
    """`expected` (default: everything the simulator delivered) is on the stream exactly
    once; nothing else is there but the extension's own records (exactly one final
    metrics record with no losses when `metrics`)."""
    if metrics:
        m = [v for v in own_events(events, "metrics") if v["record"].get("final")]
        assert len(m) == 1, m  # (periodic non-final ones, every METRICS_INTERVAL_MS, may be there too)
        rec = m[0]["record"]
        assert rec["droppedRejected"] == 0 and rec["droppedShutdown"] == 0, rec
    theirs = [d for d in events if not is_own(d)]
    on_stream = collections.Counter(theirs)
    want = collections.Counter(sim.delivered if expected is None else expected)
    missing = want - on_stream
    assert not missing, (f"{sum(missing.values())} of {sum(want.values())} expected events missing, "
                         f"e.g. {next(iter(missing))[:200]!r}")
    # (identical bytes can legitimately be there twice: two equal log lines in one millisecond)
    extra = on_stream - want
    dupes = {d: n for d, n in extra.items() if d in want}
    assert not dupes, f"{len(dupes)} duplicated events, e.g. {next(iter(dupes))[:200]!r}"
    assert not extra, (f"{sum(extra.values())} events on the stream that were not expected, "
                       f"e.g. {next(iter(extra))[:200]!r}")


# ------------------------------------------------------------------------- the proxy


@dataclass
class Accepted:
    t: float  # perf_counter when the emulator's answer came back (before the client's)
    wall: float  # time.time() at the same moment
    data: bytes
    partition_key: str
    explicit_hash_key: Optional[str]
    shard: Optional[str]
    put_index: int  # which accepted PutRecords request (0-based) carried it


class TimedProxy(FaultProxy):
    """FaultProxy that records every record the emulator accepted, with a timestamp."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.accepted_log: list[Accepted] = []
        self.put_windows: list[tuple[float, float]] = []  # (sent upstream, answered) per PutRecords
        self._n_ok = 0

    def _forward(self, method, path, headers, body):
        target = next((v for k, v in headers.items() if k.lower() == "x-amz-target"), None)
        if target != PUT_RECORDS:
            return super()._forward(method, path, headers, body)
        t0 = time.perf_counter()
        status, h, answer = super()._forward(method, path, headers, body)
        t, wall = time.perf_counter(), time.time()
        if status == 200:
            req = json.loads(body)
            res = json.loads(answer)["Records"]
            with self.lock:
                idx = self._n_ok
                self._n_ok += 1
                self.put_windows.append((t0, t))
                for r, a in zip(req["Records"], res):
                    if a.get("ErrorCode"):
                        continue
                    self.accepted_log.append(Accepted(
                        t, wall, base64.b64decode(r["Data"]), r["PartitionKey"],
                        r.get("ExplicitHashKey"), a.get("ShardId"), idx))
        return status, h, answer

    def arrivals(self, fmt: str) -> dict[bytes, float]:
        """Event bytes → perf_counter when the emulator accepted the record carrying it
        (the first time, should it be there twice)."""
        out: dict[bytes, float] = {}
        with self.lock:
            log = list(self.accepted_log)
        for a in log:
            for inner in unpack(a.data, fmt, a.partition_key):
                out.setdefault(inner.data, a.t)
        return out


def received_at(sim) -> dict[bytes, float]:
    """Event bytes → perf_counter when the simulator's POST carrying it to the
    extension was answered (the earliest moment the extension could send it)."""
    out: dict[bytes, float] = {}
    for t, batch in sim.delivery_log:
        for b in batch:
            out.setdefault(b, t)
    return out


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
