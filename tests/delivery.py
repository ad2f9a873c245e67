"""Delivery bookkeeping shared by the fault, scale and hostile-input tests.

`assert_delivered_exactly_once` demands exactly once. Under network
faults the honest guarantee is at least once: a request whose answer was lost
after Kinesis took it (a reset or a timeout after the emulator got it) must be
resent, and then its records are on the stream twice. `check_delivery` allows
exactly those duplicates: each extra copy of a record must be matched by a
copy the fault proxy counted as *ambiguous* (accepted by the emulator, answer
never delivered); any other duplicate, and any missing record, fails.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass

OWN_TYPES = b'"type":"kinesis-telemetry-extension.'
METRICS = "kinesis-telemetry-extension.metrics"
SHUTDOWN_LIMIT_MS = 2000
# kinesalite stores a PutRecords before answering it, and the extension has exited
# when the tests read the stream: whatever is missing by then will not come. A short
# wait keeps failing runs short.
READ_TIMEOUT = 5


def own_records(recs, kind: str | None = None) -> list[dict]:
    """The extension's own records (metrics, fragment, unparsed), parsed."""
    out = [json.loads(r["data"]) for r in recs if OWN_TYPES in r["data"][:120]]
    if kind is None:
        return out
    return [v for v in out if v["type"] == f"kinesis-telemetry-extension.{kind}"]


def final_metrics(recs) -> dict | None:
    """The `record` of the final metrics record on the stream (None if absent)."""
    finals = [m["record"] for m in own_records(recs, "metrics") if m["record"].get("final")]
    return finals[-1] if finals else None


def lambda_records(recs) -> list[dict]:
    return [r for r in recs if OWN_TYPES not in r["data"][:120]]


def shutdown_counters(stderr: str) -> dict[str, int]:
    """Counters of the extension's shutdown summary log line.

    Understands `shutdown (...): eventsReceived=N ... droppedRejected=N droppedShutdown=N`
    and the older `shutdown: events received N ..., lost: rejected N, at shutdown N`
    (mapped to the camelCase names)."""
    lines = [l for l in stderr.splitlines() if re.search(r"\bshutdown\b[^:]*:", l)
             and ("=" in l or "lost:" in l)]
    if not lines:
        return {}
    line = lines[-1]
    out = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    old = {"eventsReceived": r"events received (\d+)", "recordsSent": r"records sent (\d+)",
           "droppedRejected": r"rejected (\d+)", "droppedShutdown": r"at shutdown (\d+)",
           "requests": r"(\d+) requests", "requestErrors": r"(\d+) request errors"}
    for k, pat in old.items():
        m = re.search(pat, line)
        if k not in out and m:
            out[k] = int(m.group(1))
    return out


def requests_across_next(sim, proxy) -> list[str]:
    """PutRecords requests that were in flight at an `event/next` (head received by
    the proxy → answer sent, whatever the answer). The core invariant: Lambda may
    freeze the sandbox from `event/next` on, and a request in flight then breaks."""
    out = []
    for p in proxy.puts:
        for n in sim.next_call_times:
            if p.t_start < n < p.t_end:
                out.append(f"event/next at {n:.4f} during a PutRecords ({p.outcome}, {p.status}) "
                           f"{p.t_start:.4f}..{p.t_end:.4f}")
    return out


def assert_run_ok(sim, res, proxy=None, *, pushback: bool = False) -> None:
    """Exit 0 before the shutdown deadline, no protocol violations, no request in
    flight at any `event/next` (with the fault `proxy` that saw the requests), and
    (unless the test expects Lambda to drop telemetry: `pushback`) everything
    Lambda emitted before SHUTDOWN reached the extension."""
    tail = sim.stderr_text()[-4000:]
    if proxy is not None:
        across = requests_across_next(sim, proxy)
        assert across == [], (across[:5], tail)
    if not pushback:
        assert sim.refusals == 0, f"{sim.refusals} deliveries refused (503) before SHUTDOWN\n{tail}"
        lost = sim.lost_before_shutdown
        assert lost == [], (f"{len(lost)} events Lambda emitted never reached the extension "
                            f"(dropped {len(sim.dropped)}), e.g. {lost[0][:200]!r}\n{tail}")
    assert not res.killed, f"SIGKILLed at the shutdown deadline: {res}\n{tail}"
    assert res.exit_code == 0, f"exit code {res.exit_code}\n{tail}"
    assert res.shutdown_ms is not None and res.shutdown_ms < SHUTDOWN_LIMIT_MS, (res, tail)
    assert sim.violations == [], f"{sim.violations}\n{tail}"
    assert not any(r.timed_out for r in sim.invoke_results), \
        f"{[r for r in sim.invoke_results if r.timed_out]}\n{tail}"


@dataclass
class Delivery:
    delivered: int  # events the extension received from the simulator
    on_stream: int  # Lambda events on the stream (copies counted)
    missing: int  # delivered events not on the stream (after allowed losses)
    duplicates: int  # extra copies on the stream
    explained_duplicates: int  # extra copies matched by ambiguous outcomes at the proxy
    own_records: int  # the extension's own records (metrics...)


def assert_in_order(sim, recs) -> None:
    """Per partition key, the first copy of each event on the stream (in sequence
    number order) comes in the order the extension received the events: resends
    go back to the front of the queue, in order. (Per-record failures inside one
    request are the exception Kinesis makes: its PutRecords keeps no order among
    the records of a request, so tests with them do not ask for this.)"""
    first = {}
    for i, e in enumerate(sim.delivered):
        first.setdefault(e, i)
    by_key = collections.defaultdict(list)
    for r in sorted(recs, key=lambda r: (r["shard"], int(r["sequence"]))):
        if r["data"] in first:
            by_key[r["partition_key"]].append(first[r["data"]])
    for key, idx in by_key.items():
        seen = set()
        firsts = [i for i in idx if not (i in seen or seen.add(i))]
        bad = next((j for j in range(1, len(firsts)) if firsts[j] < firsts[j - 1]), None)
        assert bad is None, (f"partition key {key}: event #{firsts[bad]} (received) is on the stream "
                             f"after event #{firsts[bad - 1]}")


def check_delivery(sim, recs, proxy=None, *, lost=None, max_dup_share: float | None = None,
                   allow_strangers: bool = False, ordered: bool = True) -> Delivery:
    """At-least-once check (see module docstring).

    `lost`: a Counter of event bytes that may legitimately be missing (records the
    test knows were lost, e.g. rejected with a non-retryable error). Duplicates must
    be explained by `proxy.ambiguous` (so a test that injects no ambiguous outcome
    demands exactly once; the extension's own duplicateRisk counter vouches for
    nothing) and, with `max_dup_share`, stay under that share of the events. With `ordered`, each
    partition key's events are on the stream in the order they were received
    (`assert_in_order`)."""
    if ordered:
        assert_in_order(sim, recs)
    own = own_records(recs)
    recs = lambda_records(recs)
    on_stream = collections.Counter(r["data"] for r in recs)
    delivered = collections.Counter(sim.delivered)
    missing = delivered - on_stream
    if lost:
        missing = missing - lost
    assert not missing, (f"{sum(missing.values())} of {sum(delivered.values())} delivered events missing "
                         f"from the stream, e.g. {next(iter(missing))[:200]!r}\n"
                         + sim.stderr_text()[-3000:])
    extra = on_stream - delivered  # copies beyond what the extension received
    emitted = set(sim.emitted)
    strangers = [d for d in extra if d not in emitted]
    if not allow_strangers:
        assert not strangers, f"records nobody emitted: {strangers[:2]!r}"
    dupes = collections.Counter({d: n for d, n in extra.items() if d in emitted})
    ambiguous = proxy.ambiguous if proxy is not None else collections.Counter()
    unexplained = dupes - ambiguous
    assert not unexplained, (
        f"{sum(unexplained.values())} duplicate records not explained by an ambiguous outcome "
        f"the proxy saw (the emulator got the request but the extension never had the answer), "
        f"e.g. {next(iter(unexplained))[:200]!r}")
    n_dup = sum(dupes.values())
    if max_dup_share is not None:
        assert n_dup <= max(2, max_dup_share * sum(delivered.values())), \
            f"{n_dup} duplicates for {sum(delivered.values())} events: not rare"
    result = Delivery(delivered=sum(delivered.values()), on_stream=sum(on_stream.values()),
                      missing=0, duplicates=n_dup, explained_duplicates=n_dup, own_records=len(own))
    LAST_CHECK.append(result)
    return result


# Every check_delivery result of the running test, for the scenario report
# (conftest.py writes it out when E2E_REPORT names a file).
LAST_CHECK: list = []


def assert_delivered_exactly_once(sim, recs: list[dict]) -> None:
    """Everything the extension received is on the stream once; nothing else is
    there but what the simulator emitted and one final metrics record with no
    losses counted."""
    metrics = own_records(recs, "metrics")
    assert len(metrics) == 1 and metrics[0]["record"]["final"], metrics
    m = metrics[0]["record"]
    assert m["droppedRejected"] == 0 and m["droppedShutdown"] == 0, m
    assert m["recordsSent"] >= len(sim.delivered) - 5, (m, len(sim.delivered))
    recs = [r for r in recs if OWN_TYPES not in r["data"][:120]]
    on_stream = collections.Counter(r["data"] for r in recs)
    delivered = collections.Counter(sim.delivered)
    missing = delivered - on_stream
    assert not missing, f"{sum(missing.values())} delivered events missing, e.g. {next(iter(missing))[:200]!r}"
    dupes = {d: n for d, n in on_stream.items() if n > 1}
    assert not dupes, f"{len(dupes)} duplicated records, e.g. {next(iter(dupes))[:200]!r}"
    emitted = set(sim.emitted)
    strangers = [d for d in on_stream if d not in emitted]
    assert not strangers, f"records nobody emitted: {strangers[:2]!r}"
