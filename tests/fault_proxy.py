"""A fault-injecting HTTP proxy in front of a real Kinesis emulator.

It speaks Kinesis' JSON wire format so the extension sees what AWS would send:

* per-record partial failures: a share of each PutRecords request's records is
  answered with ``ProvisionedThroughputExceededException`` / ``InternalFailure``
  entries; the rest is forwarded to the emulator and the two answers are merged
  back in request order;
* whole-request errors: the next N requests answered with a given status and
  ``__type`` (throttling, 5xx...).

Every PutRecords request is recorded (record count, payload bytes) so tests
can check the extension's batching limits. Standard library only; binds
127.0.0.1 port 0.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import random
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PUT_RECORDS = "Kinesis_20131202.PutRecords"


@dataclass
class Faults:
    # Share of records (0..1) failed in each PutRecords request.
    record_fail_share: float = 0.0
    # Per-record codes to use, in turn.
    record_codes: tuple = ("ProvisionedThroughputExceededException", "InternalFailure")
    # Whole-request errors for the next requests: list of (status, __type).
    request_errors: list = field(default_factory=list)
    seed: int = 7


@dataclass
class PutLog:
    records: int
    payload_bytes: int  # data + partition keys, as Kinesis counts
    body_bytes: int
    failed_records: int
    status: int


class FaultProxy:
    def __init__(self, upstream: str, faults: Faults | None = None):
        self.upstream = urlsplit(upstream)
        self.faults = faults or Faults()
        self.puts: list[PutLog] = []
        self.lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                status, headers, answer = proxy._handle(self.headers, body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- forwarding -------------------------------------------------------------------

    def _forward(self, headers, body: bytes):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "host")}
            fwd["Content-Length"] = str(len(body))
            conn.request("POST", "/", body=body, headers=fwd)
            r = conn.getresponse()
            return r.status, {"Content-Type": r.getheader("Content-Type", "application/x-amz-json-1.1")}, r.read()
        finally:
            conn.close()

    def _handle(self, headers, body: bytes):
        if headers.get("X-Amz-Target") != PUT_RECORDS:
            return self._forward(headers, body)
        req = json.loads(body)
        recs = req["Records"]
        payload = sum(len(base64.b64decode(r["Data"])) + len(r["PartitionKey"].encode()) for r in recs)
        with self.lock:
            err = self.faults.request_errors.pop(0) if self.faults.request_errors else None
            fail = [self._rng.random() < self.faults.record_fail_share for _ in recs]
        ctype = {"Content-Type": "application/x-amz-json-1.1"}
        if err:
            status, typ = err
            self._log(len(recs), payload, len(body), len(recs), status)
            return status, ctype, json.dumps({"__type": typ, "message": "injected by fault_proxy"}).encode()
        keep = [r for r, f in zip(recs, fail) if not f]
        merged = []
        if keep:
            status, h, answer = self._forward(headers, json.dumps({**req, "Records": keep}).encode())
            if status != 200:
                self._log(len(recs), payload, len(body), len(recs), status)
                return status, h, answer
            upstream = iter(json.loads(answer)["Records"])
        codes = self.faults.record_codes
        failed = 0
        for i, f in enumerate(fail):
            if f:
                code = codes[failed % len(codes)]
                failed += 1
                merged.append({"ErrorCode": code, "ErrorMessage": "injected by fault_proxy"})
            else:
                merged.append(next(upstream))
        self._log(len(recs), payload, len(body), failed, 200)
        return 200, ctype, json.dumps({"FailedRecordCount": failed, "Records": merged}).encode()

    def _log(self, records, payload, body_bytes, failed, status):
        with self.lock:
            self.puts.append(PutLog(records, payload, body_bytes, failed, status))
