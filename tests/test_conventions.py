"""The AWS conventions users already rely on (issue 16): Lambda's JSON log
format for the extension's own log lines, and HTTP proxies (HTTPS_PROXY,
NO_PROXY) through a real proxy (proxy.py from PyPI) in front of kinesalite."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from conftest import assert_clean_exit, ext_env, new_stream, run_invokes
from delivery import assert_delivered_exactly_once
from lambda_sim import LambdaSim


def test_json_log_format_makes_every_log_line_a_json_object(ext_bin, kinesalite):
    """AWS_LAMBDA_LOG_FORMAT=JSON (the function's logging configuration; the
    simulator sets it as Lambda does): every line the extension writes is a JSON
    object with timestamp, level, message and the extension's name, so the
    function's log-level filtering and Logs Insights queries work on them. A
    debug line is among them (RUST_LOG=debug)."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, RUST_LOG="debug")
    with LambdaSim(ext_bin, env, log_format="json") as sim:
        run_invokes(sim, 3, 5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    lines = [l for l in sim.stderr_text().splitlines() if l.strip()]
    assert len(lines) > 5, lines
    levels = set()
    for line in lines:
        v = json.loads(line)  # raises on a line that is not JSON
        assert set(v) == {"timestamp", "level", "message", "extension"}, v
        assert v["extension"] == "kinesis-telemetry-extension", v
        assert v["timestamp"].endswith("Z") and "T" in v["timestamp"], v
        levels.add(v["level"])
    assert {"INFO", "DEBUG"} <= levels, levels
    assert any(json.loads(l)["message"].startswith("forwarding ") for l in lines)
    assert any(json.loads(l)["message"].startswith("shutdown (") for l in lines)


def test_text_log_format_by_default(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name)) as sim:
        run_invokes(sim, 1, 2)
        assert_clean_exit(sim, sim.shutdown())
    lines = [l for l in sim.stderr_text().splitlines() if l.strip()]
    assert lines and all(l.startswith("[kinesis-telemetry-extension] ") for l in lines), lines[:3]


# ----------------------------------------------------------------------------- HTTP proxies

PROXY_PASSWORD = "s3cret-proxy-pass"


class HttpProxy:
    """proxy.py (PyPI), a maintained forward proxy, on a kernel-picked port with basic
    auth; its access log says which requests went through it."""

    def __init__(self, tmp_path):
        self.port_file = tmp_path / "proxy.port"
        self.log_path = tmp_path / "proxy.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0",
             "--port-file", str(self.port_file), "--num-workers", "1", "--num-acceptors", "1",
             "--basic-auth", f"telemetry:{PROXY_PASSWORD}", "--log-level", "INFO"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (self.port_file.exists() and self.port_file.read_text().strip()):
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "proxy.py did not start"
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        self.url = f"http://telemetry:{PROXY_PASSWORD}@127.0.0.1:{self.port}"

    def tunnels_to(self, port: int) -> int:
        """Requests it carried to 127.0.0.1:`port`: CONNECT tunnels (what ureq opens,
        for http:// endpoints too; the PutRecords inside are opaque) or plain POSTs."""
        return sum(1 for l in self.log_path.read_text().splitlines()
                   if "access_log" in l and (f" - CONNECT 127.0.0.1:{port} " in l or f" - POST 127.0.0.1:{port}" in l))

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def http_proxy(tmp_path):
    p = HttpProxy(tmp_path)
    yield p
    p.close()


def _run_through(ext_bin, kinesalite, **env):
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, **env)) as sim:
        run_invokes(sim, 5, 10)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    return sim, name


def test_puts_go_through_the_https_proxy_which_is_named_without_its_password(ext_bin, kinesalite, http_proxy):
    sim, name = _run_through(ext_bin, kinesalite, HTTPS_PROXY=http_proxy.url)
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=10)
    assert_delivered_exactly_once(sim, recs)
    port = int(kinesalite.endpoint.rsplit(":", 1)[1])
    # proxy.py logs a tunnel when it closes, as the extension exits
    deadline = time.monotonic() + 5
    while http_proxy.tunnels_to(port) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http_proxy.tunnels_to(port) >= 1, http_proxy.log_path.read_text()[-2000:]
    err = sim.stderr_text()
    assert f"through the proxy http://127.0.0.1:{http_proxy.port}" in err, err[-2000:]
    assert PROXY_PASSWORD not in err


def test_no_proxy_matching_the_endpoint_bypasses_the_proxy(ext_bin, kinesalite, http_proxy):
    sim, name = _run_through(ext_bin, kinesalite, HTTPS_PROXY=http_proxy.url, NO_PROXY="localhost,127.0.0.1")
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=10)
    assert_delivered_exactly_once(sim, recs)
    port = int(kinesalite.endpoint.rsplit(":", 1)[1])
    assert http_proxy.tunnels_to(port) == 0, http_proxy.log_path.read_text()[-2000:]
    assert "through the proxy" not in sim.stderr_text()


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "10.0.0.0/8, 127.0.0.1/32", "{host}:{port}", "http://{host}:{port}/"],
                         ids=["cidr", "cidr-list", "host-port", "url"])
def test_no_proxy_cidr_ranges_host_port_and_urls_bypass_the_proxy(ext_bin, kinesalite, http_proxy, no_proxy):
    """NO_PROXY as the AWS SDKs read it (issue 22, item 9): a CIDR range covering the
    endpoint's address (ureq ignored those and sent through the proxy), and the
    host:port and URL forms; nothing goes through the proxy, every line arrives."""
    host, port = kinesalite.endpoint.split("://", 1)[1].rsplit(":", 1)
    sim, name = _run_through(ext_bin, kinesalite, HTTPS_PROXY=http_proxy.url,
                             NO_PROXY=no_proxy.format(host=host, port=port))
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=10)
    assert_delivered_exactly_once(sim, recs)
    assert http_proxy.tunnels_to(int(port)) == 0, http_proxy.log_path.read_text()[-2000:]
    assert "through the proxy" not in sim.stderr_text()


def test_no_proxy_for_another_port_still_goes_through_the_proxy(ext_bin, kinesalite, http_proxy):
    """A host:port entry holds for that port only (as Go and botocore read it)."""
    host, port = kinesalite.endpoint.split("://", 1)[1].rsplit(":", 1)
    sim, name = _run_through(ext_bin, kinesalite, HTTPS_PROXY=http_proxy.url,
                             NO_PROXY=f"{host}:{int(port) + 1}")
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=10)
    assert_delivered_exactly_once(sim, recs)
    assert f"through the proxy http://127.0.0.1:{http_proxy.port}" in sim.stderr_text()


def test_a_dead_proxy_is_named_in_the_connection_errors(ext_bin, kinesalite):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed when the block ends: connections are refused
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, HTTPS_PROXY=f"http://u:{PROXY_PASSWORD}@127.0.0.1:{dead}",
                  KINESIS_TELEMETRY_FLUSH="end", RUST_LOG="debug")
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 2, 3)
        res = sim.shutdown()
        assert res.exit_code == 0 and not res.killed, res
    err = sim.stderr_text()
    assert f"(through the proxy http://127.0.0.1:{dead})" in err, err[-3000:]
    assert PROXY_PASSWORD not in err


# ----------------------------------------------------------------------------- private CA

class TlsTerminator:
    """TLS in front of kinesalite (plain HTTP) with a certificate for `localhost`
    issued by a private CA made by trustme; relays bytes both ways."""

    def __init__(self, upstream_port: int, tmp_path):
        import ssl
        import threading

        import trustme
        self.ca = trustme.CA()
        self.ca_file = tmp_path / "private-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost").configure_cert(ctx)
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.upstream = upstream_port
        self.handshake_failures = 0
        self.connections = 0

        def pump(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def serve():
            while True:
                try:
                    raw, _ = self.lsock.accept()
                except OSError:
                    return
                try:
                    tls = ctx.wrap_socket(raw, server_side=True)
                except (ssl.SSLError, OSError):
                    self.handshake_failures += 1
                    raw.close()
                    continue
                self.connections += 1
                up = socket.create_connection(("127.0.0.1", self.upstream))
                threading.Thread(target=pump, args=(tls, up), daemon=True).start()
                threading.Thread(target=pump, args=(up, tls), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        self.endpoint = f"https://localhost:{self.port}"

    def close(self):
        self.lsock.close()


@pytest.fixture
def tls_kinesalite(kinesalite, tmp_path):
    t = TlsTerminator(int(kinesalite.endpoint.rsplit(":", 1)[1]), tmp_path)
    yield t
    t.close()


def test_a_private_ca_in_aws_ca_bundle_is_trusted(ext_bin, kinesalite, tls_kinesalite):
    """Kinesis behind TLS with a private CA (a TLS-inspecting proxy, a private
    endpoint): with AWS_CA_BUNDLE every line is delivered over TLS."""
    sim, name = _run_through(ext_bin, kinesalite, AWS_ENDPOINT_URL_KINESIS=tls_kinesalite.endpoint,
                             AWS_CA_BUNDLE=str(tls_kinesalite.ca_file))
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=10)
    assert_delivered_exactly_once(sim, recs)
    assert tls_kinesalite.connections >= 1 and tls_kinesalite.handshake_failures == 0
    assert "trusting its 1 certificates besides the built-in roots" in sim.stderr_text()


def test_without_the_bundle_one_clear_certificate_error_and_an_honest_count(ext_bin, kinesalite, tls_kinesalite):
    """The same endpoint without AWS_CA_BUNDLE: the handshake fails on the
    unknown issuer; the extension says so, keeps running, exits 0, and counts
    what it could not deliver."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=tls_kinesalite.endpoint,
                  KINESIS_TELEMETRY_FLUSH="end")
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 3, 4)
        res = sim.shutdown()
        assert res.exit_code == 0 and not res.killed, res
    err = sim.stderr_text()
    assert "UnknownIssuer" in err or "certificate" in err.lower(), err[-2000:]
    assert tls_kinesalite.connections == 0 and tls_kinesalite.handshake_failures >= 1
    assert kinesalite.read_all(name) == []
    from delivery import shutdown_counters
    counters = shutdown_counters(err)
    assert counters["droppedShutdown"] == counters["eventsReceived"] + 1, counters


def test_a_missing_ca_bundle_is_a_configuration_error_naming_the_path(ext_bin, kinesalite, tmp_path):
    name, _ = new_stream(kinesalite)
    missing = tmp_path / "no-such-bundle.pem"
    with LambdaSim(ext_bin, ext_env(kinesalite, name, AWS_CA_BUNDLE=str(missing))) as sim:
        run_invokes(sim, 1, 2)
        res = sim.shutdown()
        assert res.exit_code == 0, res
    err = sim.stderr_text()
    assert f'AWS_CA_BUNDLE="{missing}" is invalid: expected a readable PEM file' in err, err[-2000:]
