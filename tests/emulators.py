"""Local Kinesis emulators for the integration tests (stdlib + boto3 only).

Three independently written emulators, each started as a child process on loopback
with a port the kernel picks (no fixed ports, so pytest-xdist workers and other
programs on 4243/4567/9001 never collide):

    start_kinesalite()    npm kinesalite 3.x, in memory, streams ACTIVE at once
    start_kinesis_local() npm kinesis-local 0.6 (kinesis-mock), accepts StreamARN
    start_moto()          PyPI moto server 5.2, accepts StreamARN, real SigV4 checks
                          once moto_enable_auth() is called

Each returns an Emulator (also a context manager) with .endpoint, .region, .client(),
.create_stream(), .read_all() and .stop(). Installed by tests/install_deps.sh into
<repo>/.deps (node packages in .deps/node, Python packages in .deps/venv).

Children run in their own process group and are stopped by stop(), at interpreter
exit (atexit), and, should this process die without running atexit (SIGKILL), by
themselves: each child's stdin is a pipe from us, and the child exits on its EOF.

Run `python tests/emulators.py [kinesalite|kinesis-local|moto]` to start one by hand.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
DEPS = ROOT / ".deps"
NODE_MODULES = DEPS / "node" / "node_modules"
VENV_PYTHON = DEPS / "venv" / "bin" / "python"

DEFAULT_REGION = "us-east-1"
STARTUP_TIMEOUT = 30.0  # seconds; generous for a loaded 2-core CI machine

__all__ = [
    "Emulator",
    "EmulatorError",
    "start_kinesalite",
    "start_kinesis_local",
    "start_moto",
    "start",
    "EMULATORS",
    "moto_enable_auth",
    "moto_disable_auth",
    "moto_make_credentials",
]


class EmulatorError(RuntimeError):
    """An emulator failed to start or misbehaved; the message carries its log tail."""


# --------------------------------------------------------------------------- processes

_live_lock = threading.Lock()
_live: set[subprocess.Popen] = set()


def _kill_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace` seconds."""
    if proc.stdin is not None:
        try:
            proc.stdin.close()  # the child's lifeline: EOF makes it exit by itself
        except OSError:
            pass
    steps = ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)) if grace > 0 else ((signal.SIGKILL, 5.0),)
    for sig, wait in steps:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # The group may hold stragglers even when the leader is gone.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    with _live_lock:
        _live.discard(proc)


@atexit.register
def _kill_all_at_exit() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:  # nothing to save: no grace period
        _kill_group(proc, grace=0)


def _spawn(argv: list[str], *, env: dict, cwd: Path, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,  # lifeline, see module docstring
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            env=env,
            start_new_session=True,  # own process group (and session)
            close_fds=True,
        )
    with _live_lock:
        _live.add(proc)
    return proc


def _child_env(**extra: str) -> dict:
    """The environment minus settings that would silently change an emulator."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "KINESIS_MOCK_", "MOTO_"))
        and k not in ("INITIAL_NO_AUTH_ACTION_COUNT", "INITIALIZE_STREAMS", "NODE_OPTIONS")
    }
    env.update(extra)
    return env


def _log_tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-limit:].decode("utf-8", "replace")


def _wait_for(what: str, probe, proc: subprocess.Popen, log_path: Path, timeout: float):
    """Poll probe() until it returns something truthy; fail early if the child exits."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = probe()
        if result:
            return result
        if proc.poll() is not None:
            raise EmulatorError(
                f"{what}: process exited with code {proc.returncode} before it was ready;"
                f" log {log_path}:\n{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise EmulatorError(
                f"{what}: not ready after {timeout:.0f}s; log {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def _grep_log(log_path: Path, pattern: str):
    def probe():
        try:
            text = log_path.read_text("utf-8", "replace")
        except OSError:
            return None
        m = re.search(pattern, text)
        return m.group(1) if m else None

    return probe


def _free_port() -> int:
    """A port that was free a moment ago (racy: only for programs that can't take 0)."""
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _listening_ports(pid: int) -> set[int] | None:
    """TCP ports `pid` listens on, read from /proc; None where /proc can't tell."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    inodes = set()
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports: set[int] = set()
    seen_table = False
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        seen_table = True
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT, st 0A is LISTEN, field 9 is the inode
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports if seen_table else None


def _speaks_plain_http(port: int, timeout: float = 2.0) -> bool:
    """True if an HTTP/1.1 server answers in clear text on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(5) == b"HTTP/"
    except OSError:
        return False


def _abort(proc: subprocess.Popen, workdir: Path, owned: bool) -> None:
    """A start failed: kill the child, drop the work dir if it is ours (the error
    message already carries the log's tail)."""
    _kill_group(proc, grace=0.2)
    if owned:
        shutil.rmtree(workdir, ignore_errors=True)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise EmulatorError(f"{what} not found at {path}; run `bash tests/install_deps.sh` first")
    return path


def _node() -> str:
    node = shutil.which("node")
    if not node:
        raise EmulatorError("node not found on PATH")
    return node


def _workdir(name: str, tmpdir) -> tuple[Path, bool]:
    if tmpdir is not None:
        path = Path(tmpdir) / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path, False
    return Path(tempfile.mkdtemp(prefix=f"{name}-")), True


# --------------------------------------------------------------------------- emulator


class Emulator:
    """A running emulator. Use as a context manager or call stop()."""

    name: str
    endpoint: str
    region: str
    supports_arn: bool
    account_id: str

    def __init__(
        self,
        *,
        name: str,
        proc: subprocess.Popen,
        port: int,
        region: str,
        supports_arn: bool,
        account_id: str,
        workdir: Path,
        owns_workdir: bool,
        log_path: Path,
        started_in: float,
    ):
        self.name = name
        self.proc = proc
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.region = region
        self.supports_arn = supports_arn
        self.account_id = account_id
        self.workdir = workdir
        self.log_path = log_path
        self.started_in = started_in  # seconds from spawn to ready
        self._owns_workdir = owns_workdir
        self._default_client = None

    def __repr__(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"<Emulator {self.name} {self.endpoint} pid={self.proc.pid} {state}>"

    def __enter__(self) -> "Emulator":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------------

    def client(self, access_key="AKIDEXAMPLE", secret="secret", token=None, **config):
        """A boto3 Kinesis client for this emulator. No retries, so that every emulator
        answer reaches the test as it was; extra kwargs go to botocore's Config."""
        cfg = dict(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            proxies={},  # loopback: never through an HTTP(S)_PROXY from the environment
        )
        cfg.update(config)
        return boto3.session.Session().client(
            "kinesis",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret,
            aws_session_token=token,
            config=Config(**cfg),
        )

    @property
    def kinesis(self):
        """A cached default client, used by the helpers below."""
        if self._default_client is None:
            self._default_client = self.client()
        return self._default_client

    def stream_ref(self, stream: str) -> dict:
        """{"StreamARN": ...} or {"StreamName": ...} for a name or an ARN; an ARN is
        turned into its name on emulators that don't take StreamARN."""
        if stream.startswith("arn:"):
            if self.supports_arn:
                return {"StreamARN": stream}
            return {"StreamName": stream.split(":stream/", 1)[1]}
        return {"StreamName": stream}

    def stream_arn(self, name: str) -> str:
        return f"arn:aws:kinesis:{self.region}:{self.account_id}:stream/{name}"

    # -- streams -------------------------------------------------------------------------

    def create_stream(self, name: str, shards: int = 1, *, timeout: float = 10.0) -> str:
        """Create a provisioned stream, wait until it is ACTIVE, return its ARN."""
        k = self.kinesis
        k.create_stream(StreamName=name, ShardCount=shards)
        deadline = time.monotonic() + timeout
        while True:
            summary = k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
            if summary["StreamStatus"] == "ACTIVE":
                return summary["StreamARN"]
            if time.monotonic() > deadline:
                raise EmulatorError(
                    f"{self.name}: stream {name} still {summary['StreamStatus']} after {timeout}s"
                )
            time.sleep(0.02)

    def _shard_ids(self, ref: dict) -> list[str]:
        ids, kwargs = [], dict(ref)
        while True:
            page = self.kinesis.list_shards(**kwargs)
            ids += [s["ShardId"] for s in page["Shards"]]
            token = page.get("NextToken")
            if not token:
                return ids
            kwargs = {"NextToken": token}

    def read_all(self, stream: str, *, expect: int | None = None, timeout: float = 10) -> list[dict]:
        """Every record on every shard of `stream` (a name or an ARN), oldest first per
        shard, as {"data": bytes, "partition_key": str, "shard": str, "sequence": str}.

        Reads each shard from TRIM_HORIZON until it is caught up. With `expect`, keeps
        polling (continuing from where it got to, picking up new shards) until at least
        that many records arrived or `timeout` seconds passed, then returns what it has;
        the caller asserts on the count."""
        k = self.kinesis
        ref = self.stream_ref(stream)
        # With an ARN, GetRecords is given it too: moto's GetShardIterator by StreamARN
        # makes iterators that name the stream "None" (moto 5.2.5).
        arn_kw = {"StreamARN": ref["StreamARN"]} if "StreamARN" in ref else {}
        deadline = time.monotonic() + timeout
        iterators: dict[str, str | None] = {}  # shard -> next iterator (None: closed)
        records: list[dict] = []
        while True:
            for shard in self._shard_ids(ref):
                if shard not in iterators:
                    iterators[shard] = k.get_shard_iterator(
                        **ref, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
                    )["ShardIterator"]
            for shard, it in iterators.items():
                while it is not None:
                    page = k.get_records(ShardIterator=it, Limit=10000, **arn_kw)
                    for r in page["Records"]:
                        records.append(
                            {
                                "data": bytes(r["Data"]),
                                "partition_key": r["PartitionKey"],
                                "shard": shard,
                                "sequence": r["SequenceNumber"],
                            }
                        )
                    it = page.get("NextShardIterator")
                    caught_up = not page["Records"] and not page.get("MillisBehindLatest")
                    if caught_up or time.monotonic() > deadline:
                        break
                iterators[shard] = it
            if expect is None or len(records) >= expect or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    # -- lifecycle -----------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return _log_tail(self.log_path, limit=1 << 20)

    def stop(self) -> None:
        """Stop the process group; idempotent. Removes the work dir if we made it.

        Nothing is persisted, so there is no point in a long graceful shutdown; and
        kinesis-local ignores SIGTERM (even exit) while a client keeps a connection open."""
        if self._default_client is not None:
            self._default_client.close()
            self._default_client = None
        _kill_group(self.proc, grace=0.5)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------- kinesalite

# kinesalite's CLI listens on all interfaces and on a fixed port; this wrapper calls its
# server factory directly, listens on 127.0.0.1 port 0 and prints the port it got.
_KINESALITE_WRAPPER = r"""
const [dir, opts] = process.argv.slice(1);
const server = require(dir)(JSON.parse(opts));
server.on('error', (e) => { console.error('KINESALITE_ERROR ' + e.stack); process.exit(1); });
server.listen(0, '127.0.0.1', () => console.log('KINESALITE_LISTENING ' + server.address().port));
const bye = () => process.exit(0);
process.stdin.on('end', bye); process.stdin.on('error', bye); process.stdin.resume();
process.on('SIGTERM', bye); process.on('SIGINT', bye);
"""


def _start_printing_port(name: str, argv: list[str], env: dict, workdir: Path, owned: bool,
                         log_path: Path, port_pattern: str, timeout: float, **fields) -> Emulator:
    """Starts an emulator that prints its kernel-picked port to its log."""
    t0 = time.monotonic()
    proc = _spawn(argv, env=env, cwd=workdir, log_path=log_path)
    try:
        port = int(_wait_for(name, _grep_log(log_path, port_pattern), proc, log_path, timeout))
    except BaseException:
        _abort(proc, workdir, owned)
        raise
    return Emulator(name=name, proc=proc, port=port, workdir=workdir, owns_workdir=owned,
                    log_path=log_path, started_in=time.monotonic() - t0, **fields)


def start_kinesalite(tmpdir=None, *, region: str = DEFAULT_REGION, shard_limit: int = 1000,
                     timeout: float = STARTUP_TIMEOUT) -> Emulator:
    """kinesalite in memory on 127.0.0.1:<kernel-picked port>; streams are ACTIVE at once.
    `tmpdir` only holds its log (a fresh temp dir, removed on stop, when None)."""
    pkg = _require(NODE_MODULES / "kinesalite", "kinesalite")
    workdir, owned = _workdir("kinesalite", tmpdir)
    log_path = workdir / "kinesalite.log"
    opts = {"createStreamMs": 0, "deleteStreamMs": 0, "updateStreamMs": 0, "shardLimit": shard_limit}
    return _start_printing_port(
        "kinesalite", [_node(), "-e", _KINESALITE_WRAPPER, str(pkg), json.dumps(opts)],
        _child_env(AWS_REGION=region, AWS_ACCOUNT_ID="000000000000"), workdir, owned, log_path,
        r"KINESALITE_LISTENING (\d+)", timeout,
        region=region, supports_arn=False, account_id="000000000000")


# --------------------------------------------------------------------------- kinesis-local

# Run main.js through a tiny wrapper only to give it the stdin lifeline.
_KINESIS_LOCAL_WRAPPER = r"""
const bye = () => process.exit(0);
process.stdin.on('end', bye); process.stdin.on('error', bye); process.stdin.resume();
require(process.argv[1]);
"""


def start_kinesis_local(tmpdir=None, *, region: str = DEFAULT_REGION, shard_limit: int = 1000,
                        timeout: float = STARTUP_TIMEOUT) -> Emulator:
    """kinesis-local (kinesis-mock) with plain HTTP on a kernel-picked port.

    It binds every interface (no option for a host) and prints no port, so both of its
    ports (plain and TLS) are given as 0 and the real ones are read from /proc; the
    plain one is the one that answers HTTP. Without /proc, free ports are picked in
    advance and the start is retried if one was taken meanwhile."""
    pkg = _require(NODE_MODULES / "kinesis-local", "kinesis-local")
    main_js = _require(pkg / "main.js", "kinesis-local main.js")
    cert = _require(pkg / "server.json", "kinesis-local server.json")  # needed even for HTTP
    workdir, owned = _workdir("kinesis-local", tmpdir)
    use_proc = _listening_ports(os.getpid()) is not None
    attempts = 1 if use_proc else 5
    for attempt in range(attempts):
        plain, tls = (0, 0) if use_proc else (_free_port(), _free_port())
        log_path = workdir / f"kinesis-local.{attempt}.log"
        env = _child_env(
            KINESIS_MOCK_CERT_PATH=str(cert),
            KINESIS_MOCK_PLAIN_PORT=str(plain),
            KINESIS_MOCK_TLS_PORT=str(tls),
            AWS_REGION=region,
            SHARD_LIMIT=str(shard_limit),
            CREATE_STREAM_DURATION="0ms",
            DELETE_STREAM_DURATION="0ms",
            UPDATE_SHARD_COUNT_DURATION="0ms",
            SHOULD_PERSIST_DATA="false",
            LOAD_DATA_IF_EXISTS="false",
            LOG_LEVEL="WARN",
        )
        t0 = time.monotonic()
        proc = _spawn([_node(), "-e", _KINESIS_LOCAL_WRAPPER, str(main_js)],
                      env=env, cwd=workdir, log_path=log_path)

        def probe():
            if use_proc:
                ports = _listening_ports(proc.pid) or set()
                if len(ports) < 2:
                    return None
                candidates = sorted(ports)
            else:
                candidates = [plain]
            for port in candidates:
                if _speaks_plain_http(port):
                    return port
            return None

        try:
            port = _wait_for("kinesis-local", probe, proc, log_path, timeout)
        except EmulatorError as e:
            _kill_group(proc, grace=0.2)
            if not use_proc and "EADDRINUSE" in str(e) and attempt < attempts - 1:
                continue  # a pre-picked port was taken meanwhile (no-/proc fallback only)
            _abort(proc, workdir, owned)
            raise
        except BaseException:
            _abort(proc, workdir, owned)
            raise
        return Emulator(name="kinesis-local", proc=proc, port=port, region=region,
                        supports_arn=True, account_id="000000000000", workdir=workdir,
                        owns_workdir=owned, log_path=log_path,
                        started_in=time.monotonic() - t0)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- moto

# moto.server.main behind a lifeline thread: exit when our end of stdin closes.
_MOTO_WRAPPER = r"""
import os, sys, threading
def _lifeline():
    try:
        while sys.stdin.buffer.read(65536):
            pass
    finally:
        os._exit(0)
threading.Thread(target=_lifeline, daemon=True).start()
behind = float(os.environ.get("STS_CLOCK_BEHIND_S") or 0)
if behind:
    # moto 5.2.5 has no clock API (no /moto-api time endpoint) and takes the
    # extension's DurationSeconds as asked: its STS model's clock is set back
    # instead, so a grant expires `behind` seconds sooner in real time. Each grant
    # also records when it was made and when it expires, real epoch seconds, for
    # /moto-api/data.json (which leaves out datetimes).
    import datetime, time
    import moto.sts.models as sts
    real_utcnow = sts.utcnow
    sts.utcnow = lambda: real_utcnow() - datetime.timedelta(seconds=behind)
    init = sts.AssumedRole.__init__
    def assumed_role(self, *a, **kw):
        self.issued_at = time.time()
        init(self, *a, **kw)
        self.expires_at = self.expiration.replace(tzinfo=datetime.timezone.utc).timestamp()
    sts.AssumedRole.__init__ = assumed_role
from moto.server import main
main(sys.argv[1:])
"""


def _moto_python() -> str:
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def start_moto(tmpdir=None, *, region: str = DEFAULT_REGION, sts_clock_behind_s: float = 0,
               timeout: float = STARTUP_TIMEOUT) -> Emulator:
    """moto's server on 127.0.0.1:<kernel-picked port> (werkzeug prints the real port).
    Auth is off until moto_enable_auth(). With `sts_clock_behind_s`, STS's clock runs
    that far behind: AssumeRole's credentials expire that much sooner than asked, and
    each grant in /moto-api/data.json has `issued_at` and `expires_at` (epoch seconds)."""
    workdir, owned = _workdir("moto", tmpdir)
    log_path = workdir / "moto.log"
    env = _child_env(PYTHONUNBUFFERED="1", STS_CLOCK_BEHIND_S=str(sts_clock_behind_s))
    # Let moto cache its byte code in the venv (a machine-wide PYTHONDONTWRITEBYTECODE=1
    # would make every start recompile the modules it imports, ~1 s).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return _start_printing_port(
        "moto", [_moto_python(), "-c", _MOTO_WRAPPER, "-H", "127.0.0.1", "-p", "0"],
        env, workdir, owned, log_path, r"Running on http://127\.0\.0\.1:(\d+)", timeout,
        region=region, supports_arn=True, account_id="123456789012")


def _moto_reset_auth(emulator: Emulator, count: str) -> str:
    """Set moto's INITIAL_NO_AUTH_ACTION_COUNT (and zero its counter); return the old one."""
    import urllib.request

    req = urllib.request.Request(
        f"{emulator.endpoint}/moto-api/reset-auth",
        data=count.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(req, timeout=10) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "ok":
        raise EmulatorError(f"moto reset-auth answered {body}")
    return body["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]


def moto_enable_auth(emulator: Emulator) -> None:
    """From now on moto verifies every request's SigV4 signature against its own IAM
    (and the IAM policies). Credentials: moto_make_credentials()."""
    _moto_reset_auth(emulator, "0")


def moto_disable_auth(emulator: Emulator) -> None:
    _moto_reset_auth(emulator, "inf")


def moto_make_credentials(emulator: Emulator, stream_arn: str) -> tuple[str, str, str]:
    """Temporary credentials (access key, secret, session token) that moto accepts for
    Kinesis on `stream_arn` once auth is on: an IAM user allowed kinesis:* and
    sts:AssumeRole, its access key, a role allowed kinesis:*, and sts.assume_role.

    Works whether or not auth is already on (it is switched off for the IAM setup and
    restored before the assume_role call, which the user's own keys then sign).

    Note: moto authorizes Kinesis calls against the resource "*", not the stream ARN,
    so a policy naming only the stream ARN would be refused; the policies list both."""
    uniq = uuid.uuid4().hex[:10]
    user, role = f"kinesis-writer-{uniq}", f"kinesis-writer-role-{uniq}"

    def make(service, **creds):
        creds = creds or {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secret"}
        return boto3.session.Session().client(
            service, endpoint_url=emulator.endpoint, region_name=emulator.region,
            config=Config(retries={"total_max_attempts": 1}, proxies={}), **creds)

    kinesis_stmt = {"Effect": "Allow", "Action": "kinesis:*",
                    "Resource": [stream_arn, f"{stream_arn}/*", "*"]}
    previous = _moto_reset_auth(emulator, "inf")
    try:
        iam = make("iam")
        user_arn = iam.create_user(UserName=user)["User"]["Arn"]
        iam.put_user_policy(UserName=user, PolicyName="kinesis-and-assume-role",
                            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                                kinesis_stmt,
                                {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"},
                            ]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        role_arn = iam.create_role(
            RoleName=role,
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": user_arn}, "Action": "sts:AssumeRole"},
            ]}),
        )["Role"]["Arn"]
        iam.put_role_policy(RoleName=role, PolicyName="kinesis",
                            PolicyDocument=json.dumps({"Version": "2012-10-17",
                                                       "Statement": [kinesis_stmt]}))
    finally:
        _moto_reset_auth(emulator, previous)
    sts = make("sts", aws_access_key_id=key["AccessKeyId"],
               aws_secret_access_key=key["SecretAccessKey"])
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=f"tests-{uniq}")["Credentials"]
    return creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]


# --------------------------------------------------------------------------- by name

EMULATORS = {
    "kinesalite": start_kinesalite,
    "kinesis-local": start_kinesis_local,
    "moto": start_moto,
}


def start(name: str, tmpdir=None, **kwargs) -> Emulator:
    try:
        factory = EMULATORS[name]
    except KeyError:
        raise ValueError(f"unknown emulator {name!r}; one of {sorted(EMULATORS)}") from None
    return factory(tmpdir, **kwargs)


if __name__ == "__main__":
    names = sys.argv[1:] or list(EMULATORS)
    running = []
    try:
        for n in names:
            emu = start(n)
            running.append(emu)
            print(f"{emu.name:14} {emu.endpoint}  region {emu.region}  pid {emu.proc.pid}"
                  f"  ready in {emu.started_in:.2f}s  StreamARN {'yes' if emu.supports_arn else 'no'}",
                  flush=True)
        print("Ctrl-C to stop.", flush=True)
        while all(e.alive() for e in running):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for e in running:
            e.stop()
