"""A local container-credentials endpoint, as Lambda SnapStart (and ECS) provide.

`GET <url>` with header `Authorization: <token>` answers
`{"AccessKeyId","SecretAccessKey","Token","Expiration"}` (Expiration in ISO 8601,
whole seconds, UTC). Each fetch hands out fresh credentials (a new session token)
valid for `lifetime_s`. A wrong or missing Authorization header gets 403.

The fault proxy checks the session token the extension signs with through
`is_valid(token)`: a token this server never issued, one past its Expiration, or
one revoked with `revoke_all()` is refused there with ExpiredTokenException.

Standard library only; binds 127.0.0.1 port 0. Use as a context manager.
"""

from __future__ import annotations

import datetime as _dt
import http.server
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Optional


@dataclass
class Issued:
    access_key_id: str
    secret: str
    token: str
    expires: float  # epoch seconds (the Expiration handed out)
    issued_at: float
    revoked: bool = False


def iso(epoch_s: float) -> str:
    return _dt.datetime.fromtimestamp(epoch_s, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class CredServer:
    def __init__(self, auth_token: str = "container-auth-token-123", lifetime_s: float = 3600.0,
                 path: str = "/2021-04-23/credentials"):
        self.auth_token = auth_token
        self.lifetime_s = lifetime_s
        self.issued: list[Issued] = []
        self.fetches = 0  # answered 200
        self.refused = 0  # wrong / missing Authorization
        self.failures_left = 0  # next fetches answered 500
        self.lock = threading.Lock()
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                status, body = srv._answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.path = path
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _answer(self, path: str, auth: Optional[str]):
        with self.lock:
            if path != self.path:
                return 404, {"Error": "not found"}
            if auth != self.auth_token:
                self.refused += 1
                return 403, {"code": "AccessDenied", "message": "Authorization token is invalid"}
            if self.failures_left > 0:
                self.failures_left -= 1
                return 500, {"code": "InternalError", "message": "injected"}
            now = time.time()
            expires = math.floor(now + self.lifetime_s)
            c = Issued(access_key_id="ASIA" + secrets.token_hex(8).upper(),
                       secret=secrets.token_urlsafe(30), token="tok-" + secrets.token_urlsafe(24),
                       expires=expires, issued_at=now)
            self.issued.append(c)
            self.fetches += 1
            return 200, {"AccessKeyId": c.access_key_id, "SecretAccessKey": c.secret,
                         "Token": c.token, "Expiration": iso(expires)}

    # -- what the proxy asks ------------------------------------------------------------------

    def lookup(self, token: Optional[str]) -> Optional[Issued]:
        with self.lock:
            for c in self.issued:
                if c.token == token:
                    return c
        return None

    def is_valid(self, token: Optional[str]) -> bool:
        c = self.lookup(token)
        return c is not None and not c.revoked and time.time() < c.expires

    def revoke_all(self) -> None:
        """Every credential issued so far is refused from now on (as if expired early)."""
        with self.lock:
            for c in self.issued:
                c.revoked = True

    @property
    def current(self) -> Optional[Issued]:
        with self.lock:
            return self.issued[-1] if self.issued else None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
