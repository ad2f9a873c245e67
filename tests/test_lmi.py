"""The extension on Lambda Managed Instances (LMI, issue 13), under the
simulator's LMI mode (tests/lambda_sim.py, managed_instances=True; the facts
are in shared/docs/managed-instances.md).

The extension does not support LMI yet: it registers for INVOKE, Lambda
answers 403 Extension.InvalidEventType, and it exits, which on LMI is
Extension.Crash: the environment never comes up. The test below states what
issue 13 must achieve and fails until then (strict xfail: it must fail now)."""

from __future__ import annotations

import pytest

from conftest import assert_clean_exit, ext_env, new_stream
from delivery import assert_delivered_exactly_once
from lambda_sim import LambdaSim


@pytest.mark.xfail(strict=True, reason="issue 13")
def test_concurrent_invocations_on_managed_instances_all_reach_kinesis(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name), managed_instances=True) as sim:
        sim.start()
        sim.invoke_concurrent(40, log_lines=10, concurrency=8)
        res = sim.shutdown()
        assert sim.crash is None, sim.crash
        assert_clean_exit(sim, res)
        recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=15)
        assert_delivered_exactly_once(sim, recs)
