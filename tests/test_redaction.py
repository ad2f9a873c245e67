"""Redaction (KINESIS_TELEMETRY_REDACT, _REDACT_PATTERNS; issue 15), end to
end: the simulated function (or another extension in the environment: the
docs promise both kinds of log lines, issue 22) writes lines seeded with
each rule's examples;
what arrives in kinesalite is compared with the redacted text worked out here
(where each secret was put), lines without secrets with the exact bytes Lambda
emitted."""

from __future__ import annotations

import collections
import itertools
import json

import pytest

from conftest import assert_clean_exit, ext_env, new_stream, run_invokes
from delivery import READ_TIMEOUT
from lambda_sim import LambdaSim
from stream_check import FORMATS, events_of, own_events

# (rule, secret, what it becomes): the secret is written into a line as is.
SEEDS = [
    ("aws-keys", "AKIAIOSFODNN7EXAMPLE", "[REDACTED:aws-keys]"),
    # Glued to what logs put around key ids (issue 22): a URL-encoded `=`, underscores.
    ("aws-keys", "GET /s?k%3DAKIAIOSFODNN7EXAMPLE", "GET /s?k%3D[REDACTED:aws-keys]"),
    ("aws-keys", "id_ASIAY34FZKBOKMUTVV7A_backup", "id_[REDACTED:aws-keys]_backup"),
    ("aws-keys", "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "aws_secret_access_key=[REDACTED:aws-keys]"),
    ("bearer", "Authorization: Bearer 2YotnFZFEjr1zCsicMWpAA", "Authorization: Bearer [REDACTED:bearer]"),
    ("jwt", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "[REDACTED:jwt]"),
    ("email", "jane.doe@example.com", "[REDACTED:email]"),
    ("card", "4242 4242 4242 4242", "[REDACTED:card]"),
    ("card", "5555-5555-5555-4444", "[REDACTED:card]"),
    ("ref", "ref-QX7", "[REDACTED:ref]"),
    ("pattern-1", "acct-00123456", "[REDACTED:pattern-1]"),
]
# Look-alikes that must stay: a card number failing Luhn, a timestamp, a hex digest.
LOOK_ALIKES = ["4242 4242 4242 4241", "1764460800123", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
               # a UUID whose leading 8-4-4 digits pass Luhn (random line ids hit this once)
               "30301377-3238-4423-81a1-9b7ca75d7afa"]
# A comma inside a pattern ({2,4}) survives the list format.
PATTERNS = json.dumps(["acct-[0-9]{8}", {"name": "ref", "pattern": "ref-[A-Z0-9]{2,4}\\b"}])


def _env(emu, name, fmt="json"):
    return ext_env(emu, name, KINESIS_TELEMETRY_REDACT="all", KINESIS_TELEMETRY_REDACT_PATTERNS=PATTERNS,
                   KINESIS_TELEMETRY_FORMAT=fmt)


# The kinds of log events redaction applies to: the function's, and other
# extensions' (the simulator's line_type="extension").
LINE_TYPES = ["function", "extension"]


@pytest.mark.parametrize("line_type", LINE_TYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_text_lines_arrive_redacted_and_clean_lines_byte_for_byte(ext_bin, kinesalite, fmt, line_type):
    """Text log lines: every seeded secret replaced where it stood, the rest of
    the line untouched; lines without secrets (the simulator's templates: unicode,
    escapes, control characters, embedded JSON) and every platform event byte
    for byte; the metrics record counts each rule's redactions."""
    expected_text: dict[str, str] = {}  # line id -> the record as it must arrive
    seeded = collections.Counter()

    alikes = itertools.cycle(LOOK_ALIKES)

    def line(i: int, lid: str) -> str:
        if i % 3:
            return f"line {lid} #{i} nothing to hide {next(alikes)}"
        rule, secret, becomes = SEEDS[(i // 3) % len(SEEDS)]
        seeded[rule] += 1
        expected_text[lid] = f"line {lid} #{i} user {becomes}, done"
        return f"line {lid} #{i} user {secret}, done"

    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, _env(kinesalite, name, fmt)) as sim:
        run_invokes(sim, 12, 9, line_factory=line, line_type=line_type)
        plain = sim.invoke(log_lines=14, line_type=line_type)  # the simulator's own templates
        assert not plain.timed_out
        res = sim.shutdown()
    assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=1, timeout=READ_TIMEOUT)
    events = [i.data for i in events_of(recs, fmt)]
    on_stream = collections.Counter(events)
    checked = collections.Counter()
    for b in sim.delivered:
        e = json.loads(b)
        lid = next((w for w in str(e.get("record")).split() if w.count("-") == 4), None)
        if e["type"] == line_type and lid in expected_text:
            # The event arrives with only its record string changed.
            want = dict(e, record=expected_text[lid])
            got = [json.loads(x) for x in events if lid.encode() in x]
            assert got == [want], (got, want)
            checked["redacted"] += 1
        else:
            assert on_stream[b] == 1, (f"not byte for byte: {b[:200]!r}",
                                       [x for x in events if lid and lid.encode() in x])
            checked["verbatim"] += 1
    assert checked["redacted"] == sum(seeded.values()) and checked["verbatim"] > 12 * 6, checked
    final = [m for m in own_events(events, "metrics") if m["record"]["final"]][0]["record"]
    assert final["redactions"] == {r: seeded.get(r, 0) for r in
                                   ["aws-keys", "bearer", "jwt", "email", "card", "pattern-1", "ref"]}, final
    assert not any(s.encode() in x for x in events for _, s, _ in SEEDS), "a secret reached the stream"


@pytest.mark.parametrize("line_type", LINE_TYPES)
def test_json_records_keep_their_keys_and_shape(ext_bin, kinesalite, line_type):
    """JSON log records (AWS_LAMBDA_LOG_FORMAT=JSON): string values anywhere in
    the record are redacted, keys and their order, numbers and nesting are not;
    each record stays valid JSON."""
    cases = {}

    def record(i: int, lid: str) -> dict:
        rec = {"timestamp": "2026-11-30T00:00:00Z", "level": "INFO", "message": f"line {lid} login",
               "user": {"email": "a.b@example.org", "jane.doe@example.com": i, "cards": ["4111111111111111", 7]},
               "AccessKeyId": "ASIAY34FZKBOKMUTVV7A",
               "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               "headers": {"authorization": "Bearer abc.def.ghi"}, "n": 1764460800123}
        want = json.loads(json.dumps(rec))
        want["user"]["email"] = "[REDACTED:email]"
        want["user"]["cards"][0] = "[REDACTED:card]"
        want["AccessKeyId"] = want["SecretAccessKey"] = "[REDACTED:aws-keys]"
        want["headers"]["authorization"] = "Bearer [REDACTED:bearer]"
        cases[lid] = want
        return rec

    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, _env(kinesalite, name), log_format="json") as sim:
        run_invokes(sim, 4, 5, line_factory=record, line_type=line_type)
        res = sim.shutdown()
    assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=READ_TIMEOUT)
    seen = 0
    for r in recs:
        e = json.loads(r["data"], object_pairs_hook=list)  # keeps key order
        d = dict(e)
        if d["type"] != line_type or not isinstance(d["record"], list):
            continue  # other events; the extension's own lines are text
        rec = json.loads(json.dumps(dict(e)["record"]), object_pairs_hook=list)
        lid = next((v.split()[1] for k, v in rec if k == "message"), None)
        if lid not in cases:
            continue  # the init phase's line
        want = cases[lid]
        assert [k for k, _ in rec] == list(want), "keys and their order unchanged"
        assert json.loads(r["data"])["record"] == want
        seen += 1
    assert seen == len(cases) == 20


def test_an_invalid_pattern_is_a_configuration_error_naming_it(ext_bin, kinesalite):
    """The error names the variable, the rule and its pattern, and the parser's
    message; the function runs on (nothing is sent, as for any invalid setting)."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_REDACT_PATTERNS=json.dumps(["ok-[0-9]+", "(unclosed"]))
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 2, 3)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    line = next((l for l in sim.stderr_text().splitlines() if "invalid configuration" in l), "")
    assert "KINESIS_TELEMETRY_REDACT_PATTERNS" in line and '"pattern-2"' in line, line
    assert "(unclosed" in line and "is not:" in line, line
    assert kinesalite.read_all(name) == []


@pytest.mark.parametrize("line_type", LINE_TYPES)
def test_a_lone_surrogate_escape_does_not_turn_redaction_off(ext_bin, kinesalite, line_type):
    """A cut emoji (a lone UTF-16 surrogate escape, as json.dumps and JSON.stringify
    write it) in a line with a key id (issue 22): the line is still redacted (the
    surrogate arrives as U+FFFD); the other lines of the invocation byte for byte."""
    lids = []

    def line(i: int, lid: str) -> str:
        lids.append(lid)
        # Only line 3 of 4 is serialised ASCII-only: a lone surrogate needs the escape.
        if i == 3:
            return f"{lid} key=AKIAIOSFODNN7EXAMPLE truncated emoji \ud83d end"
        return f"{lid} plain"

    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, _env(kinesalite, name)) as sim:
        run_invokes(sim, 1, 4, line_factory=line, line_type=line_type)
        res = sim.shutdown()
    assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=READ_TIMEOUT)
    events = [i.data for i in events_of(recs, "json")]
    sent = next(b for b in sim.delivered if lids[3].encode() in b)
    assert b"\\ud83d end" in sent, sent  # the simulator wrote the escape
    got = [json.loads(x) for x in events if lids[3].encode() in x]
    want = dict(json.loads(sent), record=f"{lids[3]} key=[REDACTED:aws-keys] truncated emoji \ufffd end")
    assert got == [want], got
    assert not any(b"AKIAIOSFODNN7EXAMPLE" in x for x in events)
    for lid in lids[:3]:
        assert [x for x in events if lid.encode() in x] == [b for b in sim.delivered if lid.encode() in b]


def test_a_zero_width_pattern_is_a_configuration_error_naming_it(ext_bin, kinesalite):
    """`\\b` matches no character, only between them: it would put a label at every
    word boundary (issue 22). Refused like an invalid pattern, naming it."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_REDACT_PATTERNS=json.dumps(
        ["ok-[0-9]+", {"name": "words", "pattern": "\\b"}]))
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 1, 3)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    line = next((l for l in sim.stderr_text().splitlines() if "invalid configuration" in l), "")
    assert "KINESIS_TELEMETRY_REDACT_PATTERNS" in line and '"words"' in line, line
    assert "empty string" in line and '"\\\\b"' in line, line
    assert kinesalite.read_all(name) == []
