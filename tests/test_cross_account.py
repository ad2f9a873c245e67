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
the run every record arrives."""

from __future__ import annotations

import json
import urllib.request
import uuid

import boto3
from botocore.config import Config

import emulators
from conftest import assert_clean_exit, ext_env, new_stream, run_invokes
from delivery import assert_delivered_exactly_once, shutdown_counters
from lambda_sim import LambdaSim

EXTERNAL_ID = "team-42:telemetry"
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
