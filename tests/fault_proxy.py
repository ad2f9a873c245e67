"""A fault-injecting HTTP proxy in front of a real Kinesis emulator.

It speaks Kinesis' JSON wire format (and plain TCP underneath) so the extension
sees what AWS, or a broken network, would give it:

* per-record partial failures: a share of each PutRecords request's records is
  answered with ``ProvisionedThroughputExceededException`` / ``InternalFailure``
  entries (``Faults.record_fail_share``, ``Faults.record_codes``); the rest is
  forwarded to the emulator and the two answers are merged back in request order;
* whole-request errors for the next requests (``Faults.request_errors``, or
  ``fail_next()`` / ``expire_tokens()`` while running): ``(status, __type)``,
  e.g. ``(400, "ProvisionedThroughputExceededException")``, ``(503, ...)``;
* connection faults, as the same script entries (constants below): ``RESET``
  (read part of the request, then RST: ``SO_LINGER`` 0 + close), ``HANG`` (read
  it, never answer: the client's timeout fires), ``CLOSE`` (read it, close
  without an answer), and ``RESET_AFTER_UPSTREAM`` / ``HANG_AFTER_UPSTREAM``
  (the emulator got the records, the client never learns it: the one case
  where a resend legitimately duplicates records);
* ``Faults.rule(index, headers)``: an action for every request the script does
  not cover (e.g. a non-retryable error for the first N requests);
* ``Faults.token_check(token)``: requests whose ``X-Amz-Security-Token`` it
  refuses get ``400 ExpiredTokenException``;
* the endpoint going away: ``stop_listening()`` (close the listening socket and
  reset every connection: connections are refused), ``start_listening()``
  (re-bind the same port), ``refuse_for(seconds)`` (both, on a timer);
* ``kill_idle_connections(mode)``: connections waiting for their next request
  (pooled keep-alive connections) are reset (``"rst"``), closed (``"fin"``) or
  silently swallowed (``"blackhole"``: kept open, read, never answered, like a
  connection whose peer vanished during a long freeze);
* a slow sink: ``Faults.delay_ms`` before each PutRecords is forwarded and
  ``Faults.bandwidth_bps`` for reading request bodies;
* per-shard limits (``Faults.shard_limits=ShardLimits()``): 1,000 records/s
  and 1 MiB/s per shard, token buckets refilled continuously (capacity one
  second), using the stream's real hash-key ranges from ``ListShards``; records
  over the limit get per-record ``ProvisionedThroughputExceededException``.

Every PutRecords request is recorded in ``puts`` (record count, payload bytes,
outcome, timing) so tests can check batching limits and retry behaviour, and
the data of every record the emulator accepted is counted in ``accepted``;
records the emulator accepted but whose answer never reached the client are
counted in ``ambiguous`` as well, so duplicates on the stream can be explained.

Standard library (plus boto3 for ``ListShards`` in per-shard mode); binds
127.0.0.1 port 0.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import http.client
import json
import random
import re
import select
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import urlsplit

PUT_RECORDS = "Kinesis_20131202.PutRecords"

# Script actions (besides ``(status, "__type")`` and ``PASS``/None).
PASS = "pass"
RESET = "reset"  # read part of the request, then RST; never forwarded
HANG = "hang"  # read the request, never answer; never forwarded
CLOSE = "close"  # read the request, close (FIN) without answering; never forwarded
RESET_AFTER_UPSTREAM = "reset_after_upstream"  # forwarded, then RST instead of the answer
HANG_AFTER_UPSTREAM = "hang_after_upstream"  # forwarded, then no answer ever
# forwarded, then a 200 the client cannot use (not JSON, a Records count off by one, or
# Records of the wrong type, in turn)
GARBLED_AFTER_UPSTREAM = "garbled_after_upstream"
_GARBLED = (b"<html>ok</html>", None, b'{"FailedRecordCount":0,"Records":"yes"}')
_ACTIONS = {PASS, RESET, HANG, CLOSE, RESET_AFTER_UPSTREAM, HANG_AFTER_UPSTREAM, GARBLED_AFTER_UPSTREAM}

REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}

MESSAGES = {
    "ExpiredTokenException": "The security token included in the request is expired",
    "AccessDeniedException": "User: arn:aws:sts::123456789012:assumed-role/fn-role/fn is not authorized "
                             "to perform: kinesis:PutRecords on resource: arn:aws:kinesis:us-east-1:"
                             "123456789012:stream/telemetry because no identity-based policy allows it",
    "ResourceNotFoundException": "Stream telemetry under account 123456789012 not found.",
    "ValidationException": "1 validation error detected: Value at 'records' failed to satisfy constraint",
    "ProvisionedThroughputExceededException": "Rate exceeded for stream telemetry under account 123456789012.",
    "KMSThrottlingException": "Rate exceeded for KMS key (injected by fault_proxy)",
    "LimitExceededException": "Rate exceeded (injected by fault_proxy)",
}


@dataclass
class ShardLimits:
    records_per_s: int = 1000
    bytes_per_s: int = 1 << 20  # data + partition key, as Kinesis counts


@dataclass
class Faults:
    # Share of records (0..1) failed in each PutRecords request.
    record_fail_share: float = 0.0
    # Per-record codes to use, in turn.
    record_codes: tuple = ("ProvisionedThroughputExceededException", "InternalFailure")
    # Script for the next PutRecords requests, one entry each: (status, __type) for a
    # whole-request error, or one of the actions above (PASS / None: forward normally).
    request_errors: list = field(default_factory=list)
    # Action for requests the script does not cover: rule(put_index, headers) -> entry.
    rule: Optional[Callable[[int, dict], object]] = None
    # X-Amz-Security-Token check; False -> 400 ExpiredTokenException.
    token_check: Optional[Callable[[Optional[str]], bool]] = None
    # Slow sink: wait this long before forwarding each PutRecords ...
    delay_ms: float = 0.0
    # ... and read request bodies at this many bytes per second (None: no limit).
    bandwidth_bps: Optional[int] = None
    # Per-shard write limits (None: off).
    shard_limits: Optional[ShardLimits] = None
    # Count the data of accepted records (needed for duplicate accounting).
    keep_data: bool = True
    seed: int = 7


@dataclass
class PutLog:
    records: int
    payload_bytes: int  # data + partition keys, as Kinesis counts
    body_bytes: int
    failed_records: int  # records the client was told failed (all of them for a request error)
    status: int  # HTTP status answered; 0 when no answer was given (reset, hang, close)
    outcome: str = "ok"  # ok | error | reset | hang | close | reset_after_upstream | hang_after_upstream | client_gone
    error: Optional[str] = None  # __type of a whole-request error
    forwarded: int = 0  # records the emulator accepted
    throttled: int = 0  # records failed by the per-shard limits
    t_start: float = 0.0  # perf_counter when the request's head had arrived
    t_end: float = 0.0  # perf_counter when it was answered (or dropped)
    token: Optional[str] = None  # X-Amz-Security-Token
    access_key: Optional[str] = None  # the access key id of the SigV4 credential scope


class _Conn:
    __slots__ = ("sock", "state", "kill", "id", "alive_at")

    def __init__(self, sock: socket.socket, cid: int):
        self.sock = sock
        self.state = "idle"  # idle (waiting for a request) | busy | hung | closed
        self.kill: Optional[str] = None
        self.id = cid
        # perf_counter when the client's own socket was last seen open (see
        # _client_socket_open); None: not looked at yet
        self.alive_at: Optional[float] = None


def _client_socket_open(c: _Conn) -> Optional[bool]:
    """Whether the client's end of the connection is still open (ESTABLISHED), read
    from the kernel's table of the client's socket (the client runs on this host):
    None when that cannot be told (not IPv4 loopback, no /proc).

    Bytes the client wrote before it closed keep arriving after the close while the
    proxy reads slowly (``bandwidth_bps``: they wait in the socket buffers), so what
    the proxy reads says nothing of when the client gave up; its socket's state
    does (FIN_WAIT1 and after, or gone, from the close on)."""
    try:
        (cip, cport), (pip, pport) = c.sock.getpeername()[:2], c.sock.getsockname()[:2]
        enc = lambda ip, port: "%08X:%04X" % (struct.unpack("<I", socket.inet_aton(ip))[0], port)  # noqa: E731
        local, remote = enc(cip, cport), enc(pip, pport)
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == local and parts[2] == remote:
                    return parts[3] == "01"  # TCP_ESTABLISHED
        return False
    except (OSError, ValueError, struct.error):
        return None


class _Dropped(Exception):
    """The connection is gone (closed, reset, or killed by us)."""


def _rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    def __init__(self, upstream: str, faults: Faults | None = None, *, region: str = "us-east-1"):
        self.upstream = urlsplit(upstream)
        self.upstream_url = upstream
        self.region = region
        self.faults = faults or Faults()
        self.puts: list[PutLog] = []
        self.lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        # What reached the emulator (data bytes -> count), and what of that the client
        # never heard about.
        self.accepted: collections.Counter = collections.Counter()
        self.ambiguous: collections.Counter = collections.Counter()
        self.token_rejections = 0
        self.tokens_seen: collections.Counter = collections.Counter()
        self.access_keys_seen: collections.Counter = collections.Counter()
        self.throttled_records = 0
        self.throttled_by_shard: collections.Counter = collections.Counter()
        self.accepted_by_shard: collections.Counter = collections.Counter()
        self.shard_mismatches = 0
        self.connections_accepted = 0
        self.connections_killed = 0
        self.dead_connection_requests = 0  # requests sent on blackholed (dead) connections
        self.garbled = 0  # GARBLED_AFTER_UPSTREAM answers given
        self.other_requests: list[str] = []  # X-Amz-Target of non-PutRecords requests
        self._put_index = 0
        self._script: list = list(self.faults.request_errors)
        self._conns: set[_Conn] = set()
        self._cid = 0
        self._closing = False
        self._shards: dict[str, list[tuple[int, int, str]]] = {}
        self._buckets: dict[str, list[float]] = {}
        self._listener: Optional[socket.socket] = None
        self.port = 0
        self._listen()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------

    def close(self):
        self._closing = True
        self._close_listener()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            _rst(c.sock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _listen(self, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                s.close()
                if self.port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        s.listen(128)
        self.port = s.getsockname()[1]
        self._listener = s
        threading.Thread(target=self._accept_loop, args=(s,), daemon=True,
                         name=f"fault-proxy-{self.port}").start()

    def _close_listener(self) -> None:
        s, self._listener = self._listener, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes accept() in the loop
            except OSError:
                pass
            s.close()

    def _accept_loop(self, lsock: socket.socket) -> None:
        while not self._closing:
            try:
                sock, _ = lsock.accept()
            except OSError:
                return  # listener closed
            if self._listener is not lsock:
                _rst(sock)
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self._cid += 1
                c = _Conn(sock, self._cid)
                self._conns.add(c)
                self.connections_accepted += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    # -- faults driven by the test ----------------------------------------------------------

    def fail_next(self, n: int, status: int, typ: str) -> None:
        """The next n PutRecords requests get (status, __type)."""
        with self.lock:
            self._script[0:0] = [(status, typ)] * n

    def expire_tokens(self, n: int) -> None:
        """The next n PutRecords requests get 400 ExpiredTokenException, then OK."""
        self.fail_next(n, 400, "ExpiredTokenException")

    def inject(self, *entries) -> None:
        """Append entries to the script."""
        with self.lock:
            self._script.extend(entries)

    @property
    def script_left(self) -> int:
        with self.lock:
            return len(self._script)

    def stop_listening(self, reset_connections: bool = True) -> None:
        """Connections are refused from now on (the listening socket is closed); open
        connections are reset too, as when the host behind the endpoint goes away."""
        self._close_listener()
        if reset_connections:
            with self.lock:
                conns = list(self._conns)
            for c in conns:
                c.kill = "rst"
                _rst(c.sock)

    def start_listening(self) -> None:
        """Listen again on the same port."""
        if self._listener is None and not self._closing:
            self._listen()

    def refuse_for(self, seconds: float) -> threading.Thread:
        """Refuse connections for `seconds`, then come back on the same port."""
        self.stop_listening()

        def back():
            time.sleep(seconds)
            self.start_listening()

        t = threading.Thread(target=back, daemon=True)
        t.start()
        return t

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def idle_connections(self) -> int:
        with self.lock:
            return sum(1 for c in self._conns if c.state == "idle")

    def kill_idle_connections(self, mode: str = "rst") -> int:
        """Kill connections waiting for their next request: "rst" (reset), "fin"
        (orderly close) or "blackhole" (kept open, everything read and ignored, never
        answered). Returns how many."""
        if mode not in ("rst", "fin", "blackhole"):
            raise ValueError(mode)
        with self.lock:
            conns = [c for c in self._conns if c.state == "idle" and c.kill is None]
            for c in conns:
                c.kill = mode
            self.connections_killed += len(conns)
        if mode != "blackhole":
            # The serving thread polls; do the deed here so it happens now.
            for c in conns:
                if mode == "rst":
                    _rst(c.sock)
                else:
                    try:
                        c.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        return len(conns)

    # -- HTTP on a socket -------------------------------------------------------------------

    def _serve(self, c: _Conn) -> None:
        buf = bytearray()
        try:
            while True:
                c.state = "idle"
                head = self._read_head(c, buf)
                c.state = "busy"
                self._request(c, head, buf)
        except (_Dropped, OSError):
            pass
        finally:
            c.state = "closed"
            try:
                c.sock.close()
            except OSError:
                pass
            with self.lock:
                self._conns.discard(c)

    def _recv(self, c: _Conn, n: int = 65536, *, idle: bool = False) -> bytes:
        while True:
            if self._closing:
                raise _Dropped()
            if c.kill == "blackhole":
                self._swallow(c)
            if c.kill:
                raise _Dropped()
            try:
                r, _, _ = select.select([c.sock], [], [], 0.1 if idle else 1.0)
            except (OSError, ValueError):
                raise _Dropped()
            if not r:
                continue
            if c.kill:  # killed while we waited: the bytes go to the dead connection
                continue
            data = c.sock.recv(n)
            if not data:
                raise _Dropped()
            return data

    def _swallow(self, c: _Conn) -> None:
        """Read and ignore everything until the peer closes or the proxy does; never answer."""
        c.state = "hung"
        counted = c.kill != "blackhole"
        while not self._closing:
            try:
                r, _, _ = select.select([c.sock], [], [], 0.2)
                if not r:
                    continue
                data = c.sock.recv(65536)
                if not data:
                    break
                if not counted:  # a request sent on a dead pooled connection
                    counted = True
                    with self.lock:
                        self.dead_connection_requests += 1
            except (OSError, ValueError):
                break
        raise _Dropped()

    def _read_head(self, c: _Conn, buf: bytearray) -> bytes:
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(buf[:i])
                del buf[:i + 4]
                return head
            if len(buf) > 1 << 20:
                raise _Dropped()
            buf += self._recv(c, idle=not buf)

    def _read_exact(self, c: _Conn, buf: bytearray, n: int, bps: Optional[int] = None) -> bytes:
        out = bytearray(buf[:n])
        del buf[:n]
        t0 = time.perf_counter()
        while True:
            if bps:  # the whole body, including what came with the head, at bps
                # (in short steps, noting when the client was last seen there)
                while True:
                    now = time.perf_counter()
                    if _client_socket_open(c):
                        c.alive_at = now
                    pause = t0 + len(out) / bps - now
                    if pause <= 0:
                        break
                    time.sleep(min(pause, 0.005))
            if len(out) >= n:
                return bytes(out)
            chunk = n - len(out)
            if bps:
                chunk = min(chunk, max(1024, bps // 20))
            out += self._recv(c, chunk)

    def _read_chunked(self, c: _Conn, buf: bytearray) -> bytes:
        out = bytearray()
        while True:
            while b"\r\n" not in buf:
                buf += self._recv(c)
            i = buf.find(b"\r\n")
            size = int(bytes(buf[:i]).split(b";")[0].strip() or b"0", 16)
            del buf[:i + 2]
            if size == 0:
                while True:  # trailers
                    while b"\r\n" not in buf:
                        buf += self._recv(c)
                    i = buf.find(b"\r\n")
                    line = bytes(buf[:i])
                    del buf[:i + 2]
                    if not line:
                        return bytes(out)
            out += self._read_exact(c, buf, size, self.faults.bandwidth_bps)
            self._read_exact(c, buf, 2)

    def _send(self, c: _Conn, status: int, headers: dict, body: bytes, close: bool) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        headers = {**headers, "Content-Length": str(len(body)),
                   "x-amzn-RequestId": str(uuid.uuid4())}
        if close:
            headers["Connection"] = "close"
        lines += [f"{k}: {v}" for k, v in headers.items()]
        c.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _client_gone(self, c: _Conn) -> bool:
        try:
            r, _, _ = select.select([c.sock], [], [], 0)
            if not r:
                return False
            return c.sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _request(self, c: _Conn, head: bytes, buf: bytearray) -> None:
        t_start = time.perf_counter()
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip()] = v.strip()
        lower = {k.lower(): v for k, v in headers.items()}
        close = lower.get("connection", "").lower() == "close"
        if lower.get("expect", "").lower() == "100-continue":
            c.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunked = "chunked" in lower.get("transfer-encoding", "").lower()
        length = int(lower.get("content-length") or 0)

        if lower.get("x-amz-target") != PUT_RECORDS:
            body = self._read_chunked(c, buf) if chunked else self._read_exact(c, buf, length)
            with self.lock:
                self.other_requests.append(lower.get("x-amz-target", f"{method} {path}"))
            status, h, answer = self._forward(method, path, headers, body)
            self._send(c, status, h, answer, close)
            if close:
                raise _Dropped()
            return

        token = lower.get("x-amz-security-token")
        m = re.search(r"Credential=([^/,\s]+)/", lower.get("authorization", ""))
        access_key = m.group(1) if m else None
        with self.lock:
            self.access_keys_seen[access_key] += 1
            index = self._put_index
            self._put_index += 1
            self.tokens_seen[token] += 1
            if self._script:
                action = self._script.pop(0)
            elif self.faults.rule is not None:
                action = self.faults.rule(index, lower)
            else:
                action = None
        if action is None:
            action = PASS
        if not (isinstance(action, tuple) or action in _ACTIONS):
            raise ValueError(f"unknown fault action {action!r}")

        if action == RESET:
            # Part of the request, then a reset: the emulator never sees it.
            want = max(1, length // 2) if length else 1
            try:
                self._read_exact(c, buf, min(want, 64 * 1024))
            finally:
                self._log(PutLog(0, 0, length, 0, 0, outcome=RESET, t_start=t_start,
                                 t_end=time.perf_counter(), token=token))
                _rst(c.sock)
            raise _Dropped()

        try:
            body = self._read_chunked(c, buf) if chunked else \
                self._read_exact(c, buf, length, self.faults.bandwidth_bps)
        except (_Dropped, OSError):
            # it gave up while its body was read slowly: its window ends when its
            # socket was last seen open, not when the bytes it wrote ran out
            t_end = time.perf_counter()
            if self.faults.bandwidth_bps and c.alive_at is not None and c.alive_at >= t_start:
                t_end = c.alive_at
            self._log(PutLog(0, 0, length, 0, 0, outcome="client_gone", t_start=t_start,
                             t_end=t_end, token=token,
                             error=f"request body cut short ({action!r} was due)"))
            raise
        req = json.loads(body)
        recs = req["Records"]
        datas = [base64.b64decode(r["Data"]) for r in recs]
        payload = sum(len(d) + len(r["PartitionKey"].encode()) for d, r in zip(datas, recs))
        log = PutLog(len(recs), payload, len(body), 0, 0, t_start=t_start, token=token,
                     access_key=access_key)

        def finish(outcome, status, failed, error=None):
            log.outcome, log.status, log.failed_records, log.error = outcome, status, failed, error
            log.t_end = time.perf_counter()
            self._log(log)

        if self.faults.token_check is not None and not self.faults.token_check(token) \
                and action in (PASS, RESET_AFTER_UPSTREAM, HANG_AFTER_UPSTREAM):
            with self.lock:
                self.token_rejections += 1
            action = (400, "ExpiredTokenException")

        if action in (HANG, CLOSE):
            finish(action, 0, 0)
            if action == CLOSE:
                c.sock.shutdown(socket.SHUT_RDWR)
                raise _Dropped()
            self._swallow(c)

        if isinstance(action, tuple):
            status, typ = action
            finish("error", status, len(recs), typ or f"HTTP{status}")
            if typ is None:  # no error code at all: an empty body
                answer = ""
            else:
                short = typ.rsplit("#", 1)[-1]
                answer = json.dumps({"__type": typ, "message": MESSAGES.get(short, "injected by fault_proxy")})
            self._send(c, status, {"Content-Type": "application/x-amz-json-1.1"}, answer.encode(), close)
            if close:
                raise _Dropped()
            return

        if self.faults.delay_ms:
            # wait, watching the client: when it gives up, the request's window ends then
            until = time.perf_counter() + self.faults.delay_ms / 1000.0
            seen_alive = log.t_start
            while True:
                if self._client_gone(c):
                    finish("client_gone", 0, 0)
                    log.t_end = seen_alive  # gone since then: its window ends there
                    raise _Dropped()
                seen_alive = time.perf_counter()
                left = until - time.perf_counter()
                if left <= 0:
                    break
                time.sleep(min(left, 0.005))

        # Which records fail: per-shard limits first, then the random share.
        fail: list[Optional[str]] = [None] * len(recs)
        shard_of = None
        if self.faults.shard_limits is not None:
            shard_of = self._shard_picker(req)
            now = time.monotonic()
            with self.lock:
                for i, (r, d) in enumerate(zip(recs, datas)):
                    sid = shard_of(r)
                    if not self._take_tokens(sid, len(d) + len(r["PartitionKey"].encode()), now):
                        fail[i] = "ProvisionedThroughputExceededException"
                        self.throttled_records += 1
                        self.throttled_by_shard[sid] += 1
                        log.throttled += 1
        with self.lock:
            codes = self.faults.record_codes
            n_failed = sum(1 for f in fail if f)
            for i in range(len(recs)):
                if fail[i] is None and self._rng.random() < self.faults.record_fail_share:
                    fail[i] = codes[n_failed % len(codes)]
                    n_failed += 1

        keep = [i for i in range(len(recs)) if fail[i] is None]
        upstream_results: dict[int, dict] = {}
        if keep:
            fwd = json.dumps({**req, "Records": [recs[i] for i in keep]}).encode()
            status, h, answer = self._forward("POST", "/", headers, fwd)
            if status != 200:
                finish("error", status, len(recs), "upstream")
                self._send(c, status, h, answer, close)
                return
            for i, res in zip(keep, json.loads(answer)["Records"]):
                upstream_results[i] = res
        merged = []
        failed = 0
        accepted = []
        for i in range(len(recs)):
            if fail[i] is not None:
                failed += 1
                msg = MESSAGES.get(fail[i], "injected by fault_proxy")
                merged.append({"ErrorCode": fail[i], "ErrorMessage": msg})
            else:
                res = upstream_results[i]
                merged.append(res)
                if res.get("ErrorCode"):
                    failed += 1
                else:
                    accepted.append(i)
        log.forwarded = len(accepted)
        with self.lock:
            for i in accepted:
                if self.faults.keep_data:
                    self.accepted[datas[i]] += 1
                sid = upstream_results[i].get("ShardId")
                if sid:
                    self.accepted_by_shard[sid] += 1
                    if shard_of is not None and shard_of(recs[i]) != sid:
                        self.shard_mismatches += 1  # our hash-key mapping disagrees with the emulator

        def mark_ambiguous():
            with self.lock:
                for i in accepted:
                    self.ambiguous[datas[i]] += 1

        if action == RESET_AFTER_UPSTREAM:
            mark_ambiguous()
            finish(action, 0, 0)
            _rst(c.sock)
            raise _Dropped()
        if action == HANG_AFTER_UPSTREAM:
            mark_ambiguous()
            finish(action, 0, 0)
            self._swallow(c)

        answer = json.dumps({"FailedRecordCount": failed, "Records": merged}).encode()
        if action == GARBLED_AFTER_UPSTREAM:
            mark_ambiguous()
            with self.lock:
                garbled = _GARBLED[self.garbled % len(_GARBLED)]
                self.garbled += 1
            answer = garbled or json.dumps({"FailedRecordCount": failed, "Records": merged + merged[:1]}).encode()
            finish(action, 200, 0)
            self._send(c, 200, {"Content-Type": "application/x-amz-json-1.1"}, answer, close)
            return
        if self._client_gone(c):
            # it gave up (its timeout) while the emulator took the records: it will
            # resend them, and duplicates of those are explained
            mark_ambiguous()
            finish("client_gone", 0, 0)
            raise _Dropped()
        finish("ok", 200, failed)  # logged before the client can see the answer
        try:
            self._send(c, 200, {"Content-Type": "application/x-amz-json-1.1"}, answer, close)
        except OSError:
            mark_ambiguous()
            log.outcome, log.status = "client_gone", 0
            raise
        if close:
            raise _Dropped()

    # -- upstream ---------------------------------------------------------------------------

    def _forward(self, method: str, path: str, headers: dict, body: bytes):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            fwd = {k: v for k, v in headers.items()
                   if k.lower() not in ("content-length", "host", "connection", "transfer-encoding",
                                        "expect")}
            fwd["Content-Length"] = str(len(body))
            conn.request(method or "POST", path or "/", body=body, headers=fwd)
            r = conn.getresponse()
            return r.status, {"Content-Type": r.getheader("Content-Type", "application/x-amz-json-1.1")}, r.read()
        finally:
            conn.close()

    def _log(self, log: PutLog) -> None:
        with self.lock:
            self.puts.append(log)

    # -- per-shard limits -------------------------------------------------------------------

    def shard_ranges(self, stream: str) -> list[tuple[int, int, str]]:
        """(start, end, shard id) of the stream's open shards, from the emulator's ListShards."""
        with self.lock:
            got = self._shards.get(stream)
        if got is not None:
            return got
        import boto3
        from botocore.config import Config

        k = boto3.session.Session().client(
            "kinesis", endpoint_url=self.upstream_url, region_name=self.region,
            aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
            config=Config(retries={"total_max_attempts": 3}, proxies={}))
        ref = {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}
        shards, token = [], None
        while True:
            page = k.list_shards(NextToken=token) if token else k.list_shards(**ref)
            for s in page["Shards"]:
                if "EndingSequenceNumber" in s.get("SequenceNumberRange", {}):
                    continue  # closed
                hk = s["HashKeyRange"]
                shards.append((int(hk["StartingHashKey"]), int(hk["EndingHashKey"]), s["ShardId"]))
            token = page.get("NextToken")
            if not token:
                break
        k.close()
        shards.sort()
        with self.lock:
            self._shards[stream] = shards
        return shards

    def _shard_picker(self, req: dict):
        stream = req.get("StreamName") or req.get("StreamARN")
        ranges = self.shard_ranges(stream)

        def pick(rec: dict) -> str:
            if rec.get("ExplicitHashKey"):
                h = int(rec["ExplicitHashKey"])
            else:
                h = int(hashlib.md5(rec["PartitionKey"].encode("utf-8")).hexdigest(), 16)
            for start, end, sid in ranges:
                if start <= h <= end:
                    return sid
            raise AssertionError(f"no shard holds hash key {h}")

        return pick

    def _take_tokens(self, sid: str, size: int, now: float) -> bool:
        # caller holds self.lock
        lim = self.faults.shard_limits
        b = self._buckets.get(sid)
        if b is None:
            b = self._buckets[sid] = [float(lim.records_per_s), float(lim.bytes_per_s), now]
        dt = now - b[2]
        b[2] = now
        b[0] = min(lim.records_per_s, b[0] + dt * lim.records_per_s)
        b[1] = min(lim.bytes_per_s, b[1] + dt * lim.bytes_per_s)
        if b[0] >= 1 and b[1] >= size:
            b[0] -= 1
            b[1] -= size
            return True
        return False

    # -- summaries --------------------------------------------------------------------------

    def outcomes(self) -> collections.Counter:
        with self.lock:
            return collections.Counter(p.outcome for p in self.puts)

    def errors(self) -> collections.Counter:
        with self.lock:
            return collections.Counter(p.error for p in self.puts if p.error)
