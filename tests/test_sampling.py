"""Outcome-aware sampling (KINESIS_TELEMETRY_SAMPLE_SUCCESS, issue 15),
end to end: the simulator ends a seeded share of invocations in error
(`error_fraction`), kinesalite stores what the extension sends.

The oracle is what the simulator emitted: which invocation each log line
belongs to (the order of events on default Lambda, the line's own request
id on Managed Instances) and how each invocation ended. Which successful
invocations are kept is recomputed here from the documented rule (`keeps`),
independently of the extension's code."""

from __future__ import annotations

import json
import math
import re

from conftest import assert_clean_exit, ext_env, new_stream, run_invokes
from delivery import final_metrics
from lambda_sim import LambdaSim
from stream_check import assert_exactly_once

M64 = 2**64
# The simulator's line ids: "line <id>" in its lines, "simulated failure <id>"
# in the error line of a failed invocation.
LINE_ID = re.compile(r"(?:line|simulated failure) ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def keeps(fraction: float, request_id: str) -> bool:
    """docs/sampling-and-redaction.md, "Sampling": FNV-1a 64 of the id's bytes, MurmurHash3's fmix64,
    modulo 1,000,000, below round(fraction x 1,000,000)."""
    h = 0xCBF29CE484222325
    for b in request_id.encode():
        h = ((h ^ b) * 0x100000001B3) % M64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) % M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) % M64
    h ^= h >> 33
    return h % 1_000_000 < round(fraction * 1_000_000)


def _events(sim) -> list[tuple[bytes, dict]]:
    return [(b, json.loads(b)) for b in sim.delivered]


def _owners_by_order(sim) -> dict[bytes, str | None]:
    """Default Lambda: a function or extension line belongs to the invocation
    between its platform.start and platform.runtimeDone (init lines to none)."""
    owner, current = {}, None
    for b, e in _events(sim):
        t = e["type"]
        if t == "platform.start":
            current = e["record"]["requestId"]
        elif t == "platform.runtimeDone":
            current = None
        elif t in ("function", "extension"):
            owner[b] = current
    return owner


def _owners_by_line(sim) -> dict[bytes, str | None]:
    """Managed Instances: a line belongs to the request its record names
    (the simulator's JSON lines); wrapped plain lines, init lines and the
    extension's own lines name none."""
    owner = {}
    for b, e in _events(sim):
        if e["type"] == "function":
            m = LINE_ID.search(json.dumps(e["record"]))
            rid, kind = sim.line_origin.get(m.group(1) if m else None, (None, "init"))
            owner[b] = rid if kind == "json" else None
    return owner


def _check(sim, recs, owner: dict[bytes, str | None], fraction: float) -> dict:
    """Every platform event, init/unnamed line and line of a failed invocation
    on the stream once; of the successful invocations' lines exactly those the
    rule keeps; the metrics record's counts agree. Returns figures."""
    failed = sim.failed_request_ids
    invocations = set(sim.request_ids)
    kept_ok = {r for r in invocations - failed if keeps(fraction, r)}
    expected, dropped = [], []
    for b in sim.delivered:
        rid = owner.get(b)
        if rid is None or rid in failed or rid in kept_ok:
            expected.append(b)
        else:
            dropped.append(b)
    events = [r["data"] for r in recs]
    assert_exactly_once(sim, events, expected=expected)
    m = final_metrics(recs)
    owned = {r for r in owner.values() if r}
    assert m["invocationsKeptFailed"] == len({r for r in failed & owned if not keeps(fraction, r)}), m
    assert m["sampledOutInvocations"] == len((invocations - failed - kept_ok) & owned), m
    assert m["sampledOutLines"] == len(dropped), m
    assert m["invocationsForwardedUndecided"] == 0, m
    successes = len(invocations - failed)
    return {"successes": successes, "kept": len(kept_ok), "failed": len(failed),
            "lines_dropped": len(dropped), "lines_kept": len(expected)}


def _share_ok(figures: dict, fraction: float) -> None:
    """The kept share of successful invocations is the fraction within four
    binomial standard deviations (the ids are random uuids)."""
    n, k = figures["successes"], figures["kept"]
    sd = math.sqrt(fraction * (1 - fraction) / n)
    assert abs(k / n - fraction) <= 4 * sd, (figures, sd)


def test_default_lambda_keeps_failed_invocations_and_a_tenth_of_the_rest(ext_bin, kinesalite):
    """SAMPLE_SUCCESS=0.1, 10 % of 300 invocations fail (seeded): every line of
    every failed invocation, the init line and every platform event arrive;
    of the successful invocations exactly those the documented rule keeps; nothing
    lost at SHUTDOWN; no invoke held to its deadline (the default flush mode)."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_SAMPLE_SUCCESS="0.1")
    with LambdaSim(ext_bin, env, error_fraction=0.1, seed=15) as sim:
        run_invokes(sim, 300, 6)
        res = sim.shutdown()
    assert_clean_exit(sim, res)
    assert 15 <= len(sim.failed_request_ids) <= 45, len(sim.failed_request_ids)
    recs = kinesalite.read_all(name, expect=len(sim.delivered) // 3, timeout=15)
    figures = _check(sim, recs, _owners_by_order(sim), 0.1)
    _share_ok(figures, 0.1)
    assert sim.invoke_timeouts == 0


def test_managed_instances_sample_by_the_request_each_line_names(ext_bin, kinesalite):
    """LMI: 2,000 interleaved invocations, 8 at a time (~5 s), 10 % failing: the
    outcome is each invocation's platform.report; JSON lines name their
    request, plain lines name none and are always forwarded."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_SAMPLE_SUCCESS="0.1")
    with LambdaSim(ext_bin, env, managed_instances=True, error_fraction=0.1, seed=3) as sim:
        sim.start()
        sim.invoke_concurrent(2000, log_lines=6, concurrency=8, runtime_ms=20)
        res = sim.shutdown()
    assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered) // 3, timeout=30)
    figures = _check(sim, recs, _owners_by_line(sim), 0.1)
    _share_ok(figures, 0.1)
    assert figures["lines_dropped"] > 2000 * 3 * 0.7, figures


def test_thousands_of_lines_beyond_the_hold_room_are_forwarded_not_lost(ext_bin, kinesalite):
    """Invocations of 5,000 lines (~2 MB each) with a 1 MiB buffer cap: held
    lines may fill half of it, the oldest hold is forwarded past that, so the
    listener keeps reading and Lambda drops nothing (a hold that filled the cap
    would stop the listener until SHUTDOWN). Every line is either on the stream
    or counted as sampled out, none twice, and no invoke is held to its
    deadline. (The cap may still be met while the extension has let Lambda
    freeze the environment: that delivery is refused and delivered again, so
    push-back is allowed, loss is not.)"""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_SAMPLE_SUCCESS="0",
                  KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES=str(1024 * 1024))
    with LambdaSim(ext_bin, env, timeout_ms=20000) as sim:
        run_invokes(sim, 3, 5000, fail=False)
        res = sim.shutdown()
    assert_clean_exit(sim, res, pushback=True)
    assert sim.lost_before_shutdown == [], f"Lambda dropped {len(sim.lost_before_shutdown)} events"
    recs = kinesalite.read_all(name, expect=100, timeout=15)
    m = final_metrics(recs)
    owner = _owners_by_order(sim)
    lines = [b for b in sim.delivered if owner.get(b)]
    on_stream = [r["data"] for r in recs if r["data"] in set(lines)]
    assert len(on_stream) == len(set(on_stream)), "no line twice"
    assert len(on_stream) + m["sampledOutLines"] == len(lines) >= 15000, (len(on_stream), m)
    assert m["invocationsForwardedUndecided"] >= 3, m
    assert m["sampledOutLines"] > 0, m
    assert m["droppedShutdown"] == 0 and m["droppedRejected"] == 0, m
    platform = [b for b, e in _events(sim) if e["type"].startswith("platform.")]
    assert set(platform) <= {r["data"] for r in recs}
