"""Writing to a stream through a role to assume (issue 25 part 1,
docs/cross-account.md), against moto's server with its access control on: moto
checks every request's SigV4 signature against its own IAM and authorizes it
with the caller's IAM policies.

The function's IAM user may assume the role but has no Kinesis permission at
all; the role may write to the stream. So a record on the stream got there
only through the assumed role's credentials. moto records every successful
`AssumeRole` (its `/moto-api/data.json`, `sts.AssumedRole`): the oracle for
how many calls the extension made, and with which session name and external
id.

moto does not evaluate trust policies or external ids (its `assume_role`
accepts any role ARN), so the refusal tested here is the other half of the
pair an operator must get right: the function's own policy without
`sts:AssumeRole`. It is refused (`AccessDenied`), the records are parked,
one ERROR line names both policies, and once the policy is attached during
the run every record arrives.

Two more: one grant for 1,000 invokes (the soak tier), and the refresh ahead of
expiry end to end (the timing tier). moto issues the hour asked for and has no
clock API, so `emulators.start_moto(sts_clock_behind_s=...)` sets its STS
clock back: the credentials come due within seconds, and moto's record of each
grant gains when it was made and when it expires. moto never refuses expired
credentials (nothing in it checks `Expiration`), so that record is also the
oracle for "never signed with expired credentials"."""

from __future__ import annotations

import json
import math
import time
import urllib.request
import uuid

import boto3
import pytest
from botocore.config import Config

import emulators
from conftest import assert_clean_exit, ext_env, new_stream, run_invokes
from delivery import assert_delivered_exactly_once, final_metrics, own_records, shutdown_counters
from lambda_sim import LambdaSim

EXTERNAL_ID = "team-42:telemetry"
INVOKES = 1000
ASSUME = {"Version": "2012-10-17",
          "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}


def client(moto, service, **creds):
    creds = creds or {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secret"}
    return boto3.session.Session().client(
        service, endpoint_url=moto.endpoint, region_name=moto.region,
        config=Config(retries={"total_max_attempts": 1}, proxies={}), **creds)


def setup(moto, stream_arn, *, may_assume: bool):
    """The function's IAM user (allowed sts:AssumeRole or not, never Kinesis) and
    a role trusted by it (with an external id condition) allowed kinesis:*.
    Returns (user name, access key, role ARN)."""
    uniq = uuid.uuid4().hex[:8]
    user, role = f"function-{uniq}", f"telemetry-writer-{uniq}"
    iam = client(moto, "iam")
    user_arn = iam.create_user(UserName=user)["User"]["Arn"]
    if may_assume:
        iam.put_user_policy(UserName=user, PolicyName="assume", PolicyDocument=json.dumps(ASSUME))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": user_arn}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}}}]}
    role_arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    # moto authorizes Kinesis calls against "*" (see emulators.moto_make_credentials).
    iam.put_role_policy(RoleName=role, PolicyName="kinesis", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "kinesis:*", "Resource": [stream_arn, "*"]}]}))
    return user, key, role_arn


def assumed(moto, role_arn) -> list[dict]:
    """moto's record of each AssumeRole it granted for `role_arn`."""
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(f"{moto.endpoint}/moto-api/data.json", timeout=10) as resp:
        data = json.loads(resp.read())
    return [r for r in data.get("sts", {}).get("AssumedRole", []) if r.get("role_arn") == role_arn]


def role_env(moto, name, key, role_arn, **extra):
    # STS is reached through AWS_ENDPOINT_URL (AWS_ENDPOINT_URL_STS unset).
    return ext_env(moto, name, AWS_ENDPOINT_URL=moto.endpoint,
                   AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
                   AWS_SESSION_TOKEN=None,
                   KINESIS_TELEMETRY_ROLE_ARN=role_arn, KINESIS_TELEMETRY_ROLE_EXTERNAL_ID=EXTERNAL_ID,
                   AWS_LAMBDA_FUNCTION_NAME="my-function", **extra)


def test_records_arrive_only_through_the_assumed_role_with_one_sts_call(ext_bin, moto):
    name, arn = new_stream(moto)
    _, key, role_arn = setup(moto, arn, may_assume=True)
    emulators.moto_enable_auth(moto)
    with LambdaSim(ext_bin, role_env(moto, name, key, role_arn)) as sim:
        run_invokes(sim, 20, 5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
        err = sim.stderr_text()
    emulators.moto_disable_auth(moto)
    assert "ERROR" not in err, err
    recs = moto.read_all(name, expect=len(sim.delivered))
    assert_delivered_exactly_once(sim, recs)
    # One call for the run (the credentials last an hour), with the settings.
    calls = assumed(moto, role_arn)
    assert len(calls) == 1, calls
    assert calls[0]["session_name"] == "my-function"
    assert calls[0]["external_id"] == EXTERNAL_ID


def test_a_refused_assume_role_parks_the_records_until_the_policy_is_fixed(ext_bin, moto):
    name, arn = new_stream(moto)
    user, key, role_arn = setup(moto, arn, may_assume=False)
    emulators.moto_enable_auth(moto)
    env = role_env(moto, name, key, role_arn, KINESIS_TELEMETRY_PROBE_INTERVAL_MS="100")
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 5, 5)
        err = sim.stderr_text()
        assert "AccessDenied" in err, err
        emulators.moto_disable_auth(moto)
        assert moto.read_all(name) == []
        # The operator attaches the policy the ERROR line names.
        client(moto, "iam").put_user_policy(UserName=user, PolicyName="assume",
                                            PolicyDocument=json.dumps(ASSUME))
        emulators.moto_enable_auth(moto)
        for _ in range(5):
            sim.invoke(log_lines=5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
        err = sim.stderr_text()
    emulators.moto_disable_auth(moto)
    refusals = [line for line in err.splitlines() if "ERROR" in line and "AccessDenied" in line]
    assert len(refusals) == 1, err  # once, not per probe
    assert "sts:AssumeRole" in refusals[0] and "trust policy" in refusals[0], refusals[0]
    counters = shutdown_counters(err)
    assert counters["droppedAccessDenied"] == 0, counters
    recs = moto.read_all(name, expect=len(sim.delivered))
    assert_delivered_exactly_once(sim, recs)
    assert len(assumed(moto, role_arn)) == 1


@pytest.mark.soak
def test_one_assume_role_per_credential_lifetime_over_1000_invokes(ext_bin, moto):
    """Issue 25's figure: one STS call per credential lifetime in a 1,000-invoke
    run (default Lambda, frozen between invokes), every line once. FLUSH=end makes
    a PutRecords at the end of each invoke: 1,000 requests signed with the role's
    credentials, thawed and frozen 1,000 times, from one grant. About 30 s on 2
    busy cores (moto checks each signature), hence the soak tier."""
    name, arn = new_stream(moto)
    _, key, role_arn = setup(moto, arn, may_assume=True)
    emulators.moto_enable_auth(moto)
    with LambdaSim(ext_bin, role_env(moto, name, key, role_arn, KINESIS_TELEMETRY_FLUSH="end")) as sim:
        run_invokes(sim, INVOKES, 5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
        err = sim.stderr_text()
    emulators.moto_disable_auth(moto)
    assert "ERROR" not in err, err
    recs = moto.read_all(name, expect=len(sim.delivered), timeout=30)
    assert_delivered_exactly_once(sim, recs)
    assert len(assumed(moto, role_arn)) == 1
    # The run is what it claims: the one grant signed every invoke's request.
    # (The final record's count: a periodic one comes first if the run takes
    # longer than a metrics interval.)
    final = final_metrics(recs)
    assert final is not None and final["requests"] >= INVOKES, final


# The refresh rule (kinesis::sts): the role is assumed again REFRESH_BEFORE_S before
# its credentials expire. moto's STS clock set back (emulators.start_moto) makes the
# asked-for hour last LIFETIME_S of real time: a refresh is due REFRESH_DUE_S after
# each grant, and the credentials would expire REFRESH_BEFORE_S later.
DURATION_S = 3600
REFRESH_BEFORE_S = 300
REFRESH_DUE_S = 2.0
LIFETIME_S = REFRESH_BEFORE_S + REFRESH_DUE_S


@pytest.mark.timing
def test_role_credentials_are_refreshed_ahead_of_expiry(ext_bin, tmp_path):
    """Credentials that come due inside the run: the extension assumes the role
    again once they are within REFRESH_BEFORE_S of expiry, not sooner, and always
    before they expire (moto does not check expiry, so moto's record of each grant
    is the oracle: every PutRecords was signed with credentials not expired), and
    every line arrives once."""
    with emulators.start_moto(tmp_path, sts_clock_behind_s=DURATION_S - LIFETIME_S) as moto:
        name, arn = new_stream(moto)
        _, key, role_arn = setup(moto, arn, may_assume=True)
        emulators.moto_enable_auth(moto)
        env = role_env(moto, name, key, role_arn, KINESIS_TELEMETRY_FLUSH="end")
        with LambdaSim(ext_bin, env) as sim:
            sim.start()
            # A PutRecords at the end of each invoke, every ~0.2 s, for ~3 refresh periods.
            until = time.monotonic() + 3.5 * REFRESH_DUE_S
            while time.monotonic() < until:
                r = sim.invoke(log_lines=3, idle_ms=150)
                assert not r.timed_out, sim.stderr_text()
            res = sim.shutdown()
            ended = time.time()
            assert_clean_exit(sim, res)
            err = sim.stderr_text()
        emulators.moto_disable_auth(moto)
        assert "ERROR" not in err and "WARN" not in err, err
        recs = moto.read_all(name, expect=len(sim.delivered))
        assert_delivered_exactly_once(sim, recs)
        calls = sorted(assumed(moto, role_arn), key=lambda c: c["issued_at"])
    grants = [(round(c["issued_at"], 3), round(c["expires_at"] - c["issued_at"], 3)) for c in calls]
    assert len(calls) >= 3, grants
    for c in calls:  # the hour the extension asked for, less moto's clock shift
        assert abs(c["expires_at"] - c["issued_at"] - LIFETIME_S) < 1, grants
    for prev, nxt in zip(calls, calls[1:]):
        # Not before the rule says (the extension reads Expiration's whole seconds,
        # its fraction ignored: due up to 1 s sooner), at the next PutRecords after
        # that (one every ~0.2 s), and before the old credentials expire.
        due = math.floor(prev["expires_at"]) - REFRESH_BEFORE_S
        assert due <= nxt["issued_at"] <= due + 1.5, grants
        assert nxt["issued_at"] < prev["expires_at"], grants
    assert calls[-1]["expires_at"] > ended, grants
