"""Container credentials (issue 3, item 4): as with SnapStart, the three
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN variables are absent
and credentials come from `AWS_CONTAINER_CREDENTIALS_FULL_URI` with the header
`Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN` (`cred_server.CredServer`).

The fault proxy checks the session token of every PutRecords request against
the credentials server (unknown, expired or revoked tokens get 400
ExpiredTokenException), so the tests see which credentials the extension really
signs with, and when it refreshes them."""

from __future__ import annotations

import contextlib

from conftest import ext_env, new_stream
from cred_server import CredServer
from delivery import READ_TIMEOUT, assert_run_ok, check_delivery, final_metrics, shutdown_counters
from fault_proxy import Faults, FaultProxy
from lambda_sim import LambdaSim


def container_env(emu, stream, creds: CredServer, proxy: FaultProxy, token=None, **extra):
    return ext_env(emu, stream, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                   AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, AWS_SESSION_TOKEN=None,
                   AWS_CONTAINER_CREDENTIALS_FULL_URI=creds.url,
                   AWS_CONTAINER_AUTHORIZATION_TOKEN=token or creds.auth_token,
                   KINESIS_TELEMETRY_FLUSH="end", **extra)


@contextlib.contextmanager
def container_setup(kinesalite, name, lifetime_s, **env_kw):
    """A credentials endpoint, a proxy that refuses tokens it did not issue,
    and the extension's environment pointing at both: (creds, proxy, env)."""
    with CredServer(lifetime_s=lifetime_s) as creds, \
            FaultProxy(kinesalite.endpoint, Faults(token_check=creds.is_valid)) as proxy:
        yield creds, proxy, container_env(kinesalite, name, creds, proxy, **env_kw)


def assert_signed_with_issued_credentials(proxy: FaultProxy, creds: CredServer) -> None:
    """Every request carried a session token the server issued, with its access key."""
    for p in proxy.puts:
        issued = creds.lookup(p.token)
        assert issued is not None, f"a request carried a token nobody issued: {p.token!r}"
        assert p.access_key == issued.access_key_id, (p.access_key, issued)


def test_container_credentials_are_fetched_and_used(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    with container_setup(kinesalite, name, 3600) as (creds, proxy, env):
        with LambdaSim(ext_bin, env) as sim:
            sim.start()
            for _ in range(8):
                sim.invoke(log_lines=10)
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
        assert creds.refused == 0
        assert 1 <= creds.fetches <= 2, creds.fetches  # fetched once, cached
        assert proxy.token_rejections == 0
        assert_signed_with_issued_credentials(proxy, creds)
        recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
        d = check_delivery(sim, recs, proxy)
        assert d.duplicates == 0
        assert final_metrics(recs) is not None


def test_short_lived_credentials_are_refreshed_before_expiration(ext_bin, kinesalite):
    """Credentials valid for ~3 s, over a run of ~8 s with freezes in between: the
    extension never signs with an expired token (it refreshes before Expiration,
    also right after a thaw), and does not fetch more than once per request."""
    name, _ = new_stream(kinesalite)
    with container_setup(kinesalite, name, 3.5) as (creds, proxy, env):
        with LambdaSim(ext_bin, env) as sim:
            sim.start()
            for _ in range(12):
                sim.invoke(log_lines=10, idle_ms=600)
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
        assert proxy.token_rejections == 0, [(p.token, p.outcome) for p in proxy.puts]
        assert_signed_with_issued_credentials(proxy, creds)
        assert creds.fetches >= 2, creds.fetches
        assert creds.fetches <= len(proxy.puts) + 2, (creds.fetches, len(proxy.puts))
        assert len({p.token for p in proxy.puts}) >= 2
        recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
        d = check_delivery(sim, recs, proxy)
        assert d.duplicates == 0


def test_expired_token_exception_makes_it_fetch_new_credentials(ext_bin, kinesalite):
    """Kinesis answers ExpiredTokenException although Expiration is an hour away
    (credentials revoked early; then twice regardless of the token): the extension
    fetches new credentials and resends; nothing lost, nothing duplicated."""
    name, _ = new_stream(kinesalite)
    with container_setup(kinesalite, name, 3600) as (creds, proxy, env):

        with LambdaSim(ext_bin, env) as sim:
            sim.start()
            for i in range(10):
                sim.invoke(log_lines=10)
                if i in (2, 5):
                    creds.revoke_all()  # while frozen: the cached token is now refused
                if i == 7:
                    proxy.expire_tokens(2)  # the next two requests, whatever the token
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
        assert proxy.script_left == 0
        assert 1 <= proxy.token_rejections <= 4, proxy.token_rejections  # ~one per revocation
        assert creds.fetches >= 1 + 2 + 1, creds.fetches
        assert creds.fetches <= 1 + 2 * 2 + 2 + 2, creds.fetches  # no fetch storm
        assert_signed_with_issued_credentials(proxy, creds)
        err = sim.stderr_text()
        assert "ERROR" not in err, err
        recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
        d = check_delivery(sim, recs, proxy)
        assert d.duplicates == 0
        m = final_metrics(recs)
        assert m is not None and m["droppedRejected"] == 0 and m["droppedShutdown"] == 0, m


def test_wrong_authorization_token_is_logged_clearly(ext_bin, kinesalite):
    """A wrong AWS_CONTAINER_AUTHORIZATION_TOKEN: the endpoint answers 403. The
    extension says so clearly (naming the variable), once, does not hammer the
    endpoint, keeps the function's lifecycle, and counts what it could not send."""
    name, _ = new_stream(kinesalite)
    with container_setup(kinesalite, name, 3600, token="not-the-token") as (creds, proxy, env):
        with LambdaSim(ext_bin, env) as sim:
            sim.start()
            for _ in range(6):
                sim.invoke(log_lines=10)
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
        err = sim.stderr_text()
        assert creds.fetches == 0 and creds.refused >= 1
        # a 403 will not go away by asking again within a flush: about one try per flush
        assert creds.refused <= 6 + 3, f"{creds.refused} credential fetches for 7 flushes"
        lines = [l for l in err.splitlines() if "AWS_CONTAINER_AUTHORIZATION_TOKEN" in l]
        errors = [l for l in lines if "ERROR" in l]
        assert errors and "403" in errors[0], err[-3000:]
        # said clearly once (plus, at most, the shutdown loss line), not once per flush
        assert len(lines) <= 2, f"{len(lines)} lines name the token:\n" + "\n".join(lines[:4])
        assert proxy.token_rejections == 0  # it never sent a request it could not sign
        counters = shutdown_counters(err)
        lost = counters.get("droppedRejected", 0) + counters.get("droppedShutdown", 0)
        assert lost >= len(sim.delivered), (counters, len(sim.delivered))
    assert kinesalite.read_all(name) == []
