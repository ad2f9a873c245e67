#!/usr/bin/env python3
"""Local simulator of the AWS Lambda side of an external extension.

It runs the real extension executable as a child process and plays Lambda:

* the Extensions API (``/2020-01-01/extension/...``: register, event/next,
  init/error, exit/error),
* the Telemetry API (``PUT /2022-07-01/telemetry``) and the delivery of
  telemetry batches (JSON arrays POSTed to the subscriber) with Lambda's
  buffering rules (maxItems / maxBytes / timeoutMs), retries with backoff,
  a bounded buffer with ``platform.logsDropped``,
* the lifecycle: init (register -> runtime init -> first next), invokes
  (INVOKE, platform.start, function logs, platform.runtimeDone, wait for the
  extension's next, platform.report queued for later delivery), the freeze
  between invokes (SIGSTOP of the extension's process group, SIGCONT on
  thaw; no telemetry delivery while frozen), and shutdown (SHUTDOWN event,
  deadline, SIGKILL after it).

With ``managed_instances=True`` it plays Lambda Managed Instances (LMI), the
second execution model (shared/docs/managed-instances.md has every fact and
its source): ``AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances``,
SHUTDOWN-only registration (INVOKE gets 403 ``Extension.InvalidEventType``),
no freeze ever, ``event/next`` pending until SHUTDOWN, telemetry schema
``2025-01-29`` only, JSON log format, no ``platform.runtimeDone``, a
``platform.report`` whose metrics carry only ``durationMs``, concurrent
invocations whose events interleave (``invoke_concurrent``, ``run_traffic``),
and any extension exit before SHUTDOWN recorded as ``Extension.Crash`` (the
environment is torn down with every invocation in flight: ``sim.crash``) but
one: an exit after ``init/error`` during init, which ends the init with the
error the extension reported (``sim.init_failed``), as the Extensions API asks.

On both models ``init/error`` during init is final, as in AWS's runtime
interface emulator (``core/externalagent_states.go``: the InitError state
allows nothing): a later ``event/next`` is answered 403
``Extension.InvalidExtensionState`` and recorded as a violation (the extension
should exit), and init never completes without the exit (``start()`` raises
``ExtensionInitError`` once the extension exits, or at the init timeout).
On LMI the exit is not ``Extension.Crash``: the emulator keeps the first fatal
error, the reported one (``rapi/handler/agentiniterror.go``,
``appctx.StoreFirstFatalError``), and ends the init flow when the extension
exits (``rapid/shutdown.go`` ``processTermination``); no invocation has run.

Environment values given as ``bytes`` are passed as they are (values need not
be UTF-8).

With ``error_fraction=`` a chosen fraction of invocations ends in error, on
either model, the same ones for the same ``seed``: ``platform.runtimeDone``
(when there is one) and ``platform.report`` carry ``"status": "error"`` and
``"errorType": "Runtime.HandlerError"``, the function writes one ``[ERROR]``
line last, and ``sim.failed_request_ids`` / ``InvokeResult.failed`` say which.

What AWS's own runtime interface emulator does in LMI mode, where it differs from
real Lambda or real Lambda is silent (shared/docs/managed-instances.md, last
section), is available as options, defaults unchanged (``RIE_LMI`` bundles the
first three): function lines as strings, the logger's JSON lines as JSON text
inside a string (``lmi_plain_lines="string"``, ``lmi_json_lines="string"``); a
batch that is ready while the last is unanswered dropped and reported as
``platform.logsDropped`` (``busy_batches="drop"``; real Lambda, the default,
holds it: one batch in flight either way); the extension run as uid 993 / gid
990 (``run_as=RIE_UID_GID``, root only); merged and empty lines from workers
sharing stdout (``merged_lines=``); a worker pool whose exhaustion refuses
invocations with ``400 Runtime.Unavailable`` (``max_concurrency=``).
``sim.resources()`` reads the process's RSS, open files, threads and CPU time
from /proc; ``sim.sample_resources()`` records them over time.

Protocol misbehaviour of the extension is answered the way Lambda answers it
(4xx with ``{"errorType","errorMessage"}``) *and* recorded in
``sim.violations`` so tests can assert that list is empty.

Standard library only (Python 3.11). Every instance is independent (no fixed
ports, no module-level mutable state), so many can run in parallel.

Library use::

    with LambdaSim("layer/extensions/my-ext", env={...}) as sim:
        sim.start()
        for _ in range(5):
            sim.invoke(log_lines=100, runtime_ms=5, idle_ms=50)
        res = sim.shutdown()
        assert not sim.violations

    with LambdaSim("layer/extensions/my-ext", env={...}, managed_instances=True) as sim:
        sim.start()
        sim.invoke_concurrent(50, log_lines=20, concurrency=8)
        sim.run_traffic(events_per_second=5000, seconds=3)
        sim.shutdown()
        assert not sim.violations and sim.lost_before_shutdown == []

CLI::

    python3 tests/lambda_sim.py --extension PATH --invokes N --lines M [--env K=V ...]

Notes on sources: AWS Lambda Developer Guide pages runtimes-extensions-api,
telemetry-api, telemetry-api-reference, telemetry-schema-reference (see also
shared/docs/protocol-notes.md). Where the docs are silent the simulator picks
the stricter reading and says so in comments.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import http.client
import http.server
import json
import math
import os
import random
import resource
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = [
    "LambdaSim",
    "InvokeResult",
    "TrafficResult",
    "ShutdownResult",
    "Resources",
    "RIE_LMI",
    "RIE_UID_GID",
    "SimError",
    "SimTimeout",
    "ExtensionExited",
    "ExtensionInitError",
]

SCHEMA_VERSIONS = ("2022-07-01", "2022-12-13", "2025-01-29")
# Lambda Managed Instances (shared/docs/managed-instances.md): the value of
# AWS_LAMBDA_INITIALIZATION_TYPE and of platform.initStart.initializationType,
# the only subscription schema the emulator's LMI schema accepts, the only
# event an extension may register for, and the SHUTDOWN reasons
# (emulator rapi/model/agentevent.go: no "timeout", invocations time out alone).
LMI_INIT_TYPE = "lambda-managed-instances"
LMI_SCHEMA_VERSIONS = ("2025-01-29",)
LMI_EXTENSION_EVENTS = ("SHUTDOWN",)
LMI_SHUTDOWN_REASONS = ("spindown", "failure")
# Emulator rapid/shutdown.go: the runtime gets SIGTERM and up to 600 ms of the 2 s.
LMI_RUNTIME_SHUTDOWN_MAX_MS = 600
# LMI init timeout: max(130 s, the function timeout) (LMI execution environment page).
LMI_INIT_TIMEOUT_MIN_MS = 130000
# Function log lines of a concurrent invocation: 3 JSON lines of the runtime's
# logger (with requestId) for 1 plain stdout line (without one).
LMI_LINE_KINDS = ("json", "json", "json", "text")
# AWS's runtime interface emulator in LMI mode (shared/docs/managed-instances.md, last
# section; emulator supervisor/local/process.go): runtime and extensions run as this
# uid/gid, with no supplementary groups.
RIE_UID_GID = (993, 990)
# Its telemetry subscriber keeps one batch in flight and drops the next one when it is
# ready before the last was answered (emulator aws-lambda-rie/internal/telemetry/
# internal/subscriber.go sendCurrentBatchAsync): the logsDropped reason it gives.
BUSY_DROP_REASON = ("Some logs were dropped because the downstream consumer is slower "
                    "than the logs production rate")
CAP_DROP_REASON = "Consumer seems to have fallen behind as it has not acknowledged receipt of logs."
# What the emulator's LMI mode does where real Lambda's documented behaviour differs or
# is silent: LambdaSim(..., managed_instances=True, **RIE_LMI). Function lines as
# strings (plain and JSON alike), a batch ready while one is in flight dropped, and a
# worker per concurrent invocation (max_concurrency: more at once get
# 400 Runtime.Unavailable). run_as=RIE_UID_GID and merged_lines are separate (root
# only; a fraction of your choice).
RIE_LMI = {"lmi_plain_lines": "string", "lmi_json_lines": "string", "busy_batches": "drop"}
TELEMETRY_TYPES = ("platform", "function", "extension")
EXTENSION_EVENTS = ("INVOKE", "SHUTDOWN")
BUFFERING_DEFAULTS = {"maxItems": 10000, "maxBytes": 262144, "timeoutMs": 1000}
BUFFERING_RANGES = {
    "maxItems": (1000, 10000),
    "maxBytes": (262144, 1048576),
    "timeoutMs": (25, 30000),
}
# A failed invocation (error_fraction, fail=): the function raised. Telemetry API
# schema reference: platform.runtimeDone and platform.report carry a Status
# (success | failure | error | timeout) and, when it is not success, an errorType.
# The docs name no value for a handler's exception: the errorType is what the
# runtime sends in Lambda-Runtime-Function-Error-Type, any string, "Category.Reason"
# recommended (Runtime API page, invocation error). This one follows that advice.
HANDLER_ERROR_TYPE = "Runtime.HandlerError"
# Seed of the failure choice's generator: f(seed), apart from the interleaving one.
_FAIL_SEED_MUL, _FAIL_SEED_ADD = 7919, 17

P_REGISTER = "/2020-01-01/extension/register"
P_NEXT = "/2020-01-01/extension/event/next"
P_INIT_ERROR = "/2020-01-01/extension/init/error"
P_EXIT_ERROR = "/2020-01-01/extension/exit/error"
P_TELEMETRY = "/2022-07-01/telemetry"
P_LOGS = "/2020-08-15/logs"  # deprecated Logs API: not simulated

H_NAME = "Lambda-Extension-Name"
H_ID = "Lambda-Extension-Identifier"
H_FEATURE = "Lambda-Extension-Accept-Feature"
H_ERRTYPE = "Lambda-Extension-Function-Error-Type"
H_EVENT_ID = "Lambda-Extension-Event-Identifier"


class SimError(RuntimeError):
    """The simulation could not proceed (the message carries the extension's output tail)."""


class SimTimeout(SimError):
    """A bounded wait for the extension ran out."""


class ExtensionExited(SimError):
    """The extension process exited while the simulator was waiting for it."""


class ExtensionInitError(SimError):
    """The extension reported /init/error (see ``sim.init_errors``) and did not finish init."""


@dataclass
class InvokeResult:
    request_id: str
    post_runtime_ms: Optional[float]  # None when the extension missed the deadline
    timed_out: bool
    runtime_ms: float = 0.0  # measured platform.start -> platform.runtimeDone
    duration_ms: float = 0.0  # INVOKE answered -> extension's next (or deadline)
    failed: bool = False  # the function ended in error (error_fraction / fail=)


@dataclass
class TrafficResult:
    """What run_traffic() produced (LMI)."""
    invocations: int
    events: int  # platform and function events produced (what a subscriber to all types gets)
    seconds: float  # first event -> last event
    rate: float  # events / seconds: the rate actually sustained
    target_rate: float
    max_lag_ms: float  # how far the producer fell behind its schedule at worst


@dataclass
class Resources:
    """The extension process as /proc shows it at one moment (sim.resources())."""
    t: float  # perf_counter when read
    rss_kb: int  # VmRSS
    fds: int  # entries of /proc/PID/fd
    threads: int  # entries of /proc/PID/task
    cpu_ticks: int  # utime + stime of /proc/PID/stat (clock ticks, SC_CLK_TCK a second)
    cpu_ns: Optional[int]  # sum of the threads' /proc/PID/task/*/schedstat run time (ns); None if absent


@dataclass
class ShutdownResult:
    exit_code: Optional[int]
    killed: bool
    shutdown_ms: Optional[float]  # SHUTDOWN answered -> process exit


def _iso_now() -> str:
    d = _dt.datetime.now(_dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def _iso_at(epoch_s: float) -> str:
    d = _dt.datetime.fromtimestamp(epoch_s, _dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def _kill_group(pgid: int, state: dict) -> None:
    """Finalizer: make sure a stopped/orphaned extension does not outlive us."""
    if state.get("reaped"):
        return
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return


# Function log line templates (text format). Each carries the unique id; several
# carry bytes that break naive re-serialisation: non-ASCII, emoji, escaped
# quotes, backslashes, tabs, ANSI escapes (serialised as \u001b), U+2028, and
# embedded JSON.
def _tpl_plain(i: int, lid: str) -> str:
    return f"line {lid} #{i} plain ascii payload for the log pipeline"


def _tpl_unicode(i: int, lid: str) -> str:
    return f'line {lid} #{i} unicode café naïve Zürich 🚀🎉 "quoted" and \\backslash\\ ok'


def _tpl_control(i: int, lid: str) -> str:
    return f"line {lid} #{i}\ttab\tseparated \x1b[32mansi green\x1b[0m </script> \u2028 line-sep <&>"


def _tpl_json(i: int, lid: str) -> str:
    return f'line {lid} #{i} {{"embedded":"json with \\"escaped\\" quotes","n":{i},"ok":true}}'


def _tpl_long(i: int, lid: str) -> str:
    return f"line {lid} #{i} long " + ("0123456789abcdef" * 64) + " é end"


_TEXT_TEMPLATES = (_tpl_plain, _tpl_unicode, _tpl_control, _tpl_json, _tpl_plain, _tpl_unicode, _tpl_long)


class LambdaSim:
    """Simulates Lambda around one external extension process. See module docstring."""

    def __init__(
        self,
        extension_path: str,
        env: Optional[dict] = None,
        *,
        function_name: str = "demo-fn",
        function_version: str = "$LATEST",
        account_id: str = "123456789012",
        memory_mb: int = 128,
        timeout_ms: int = 3000,
        telemetry_mode: str = "ok",
        freeze: Optional[bool] = None,  # default True; LMI never freezes (True is refused there)
        log_format: Optional[str] = None,  # default "text"; LMI forces "json" ("text" is refused there)
        capture_extension_logs: bool = True,
        shutdown_deadline_ms: int = 2000,
        init_timeout_ms: Optional[int] = None,  # default 10 s; LMI: max(130 s, timeout_ms)
        # --- extra options -------------------------------------------------
        handler: str = "index.handler",
        runtime_version: str = "python:3.11.v40",
        init_log_lines: int = 1,
        buffer_cap_bytes: Optional[int] = None,  # pending-buffer cap; default 10 x maxBytes
        retry_backoff_ms: tuple = (50, 1000),  # first and max delay between retries of a batch
        telemetry_post_timeout_s: float = 5.0,
        telemetry_keepalive: bool = True,
        next_wait_timeout_s: float = 10.0,  # bound for "extension is waiting in next" before an invoke
        freeze_wait_s: float = 5.0,  # bound for an in-flight telemetry POST to finish before SIGSTOP
        inherit_env: bool = False,  # start from os.environ instead of a minimal Lambda-like env
        echo_output: bool = False,  # tee the extension's stdout/stderr to our stderr (demo/debug)
        cwd: Optional[str] = None,
        open_files: Optional[int] = 1024,  # RLIMIT_NOFILE, as Lambda sets it (None: inherit)
        # /etc/hosts as the extension sees it (a private mount namespace; needs root and
        # unshare), and the address telemetry is delivered to for sandbox.localdomain.
        hosts_file: Optional[str] = None,
        sandbox_address: str = "127.0.0.1",
        # Time the runtime takes to exit on SIGTERM before SHUTDOWN reaches the
        # extension, out of the same shutdown deadline (Lambda: up to 300 ms; LMI
        # emulator: up to 600 ms). 0: SHUTDOWN at once.
        runtime_shutdown_ms: float = 0,
        # --- Lambda Managed Instances (shared/docs/managed-instances.md) -----
        managed_instances: bool = False,
        # Set AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances (False: omit the
        # variable, to test an extension's fallback detection).
        lmi_init_type_env: bool = True,
        # Subscription schemaVersions LMI accepts (the emulator: 2025-01-29 only).
        lmi_schema_versions: tuple = LMI_SCHEMA_VERSIONS,
        # Unconfirmed details, each set to the documented-most-likely behaviour:
        lmi_runtime_done: bool = False,  # emit platform.runtimeDone per invocation (doc: never on LMI)
        lmi_plain_lines: str = "wrapped",  # plain stdout lines: "wrapped" {"timestamp","level","message"} or "string"
        lmi_request_id_key: str = "requestId",  # key of JSON logger lines (Datadog also checks "AWSRequestId")
        # The LMI emulator flushes Lambda's telemetry buffers (bounded by 1 s) before it
        # sends SHUTDOWN (rapid/shutdown.go); real Lambda unconfirmed, so off by default
        # (the stricter reading: the extension must wait for late events itself).
        flush_before_shutdown: bool = False,
        seed: Optional[int] = None,  # interleaving of concurrent invocations (LMI), failed invocations
        # Fraction (0..1) of invocations that end in error (status "error", errorType
        # Runtime.HandlerError, an [ERROR] line). Invocation k (0-based, in start order)
        # fails iff the k-th random() of a generator seeded from `seed` (None: 0) is
        # below it: the same invocations fail for the same seed, run after run.
        error_fraction: float = 0.0,
        # --- what AWS's runtime interface emulator does (see RIE_LMI) ---------
        # JSON logger lines on LMI: "object" (real Lambda's JSON log format) or "string",
        # the line's JSON text as a string record, as the emulator sends it (a request
        # id then sits inside a string).
        lmi_json_lines: str = "object",
        # A batch ready while the last one is still unanswered: "hold" it until the
        # answer (real Lambda) or "drop" it, reported as platform.logsDropped in the
        # next batch (the emulator). Either way one batch is in flight at a time.
        busy_batches: str = "hold",
        # Run the extension as (uid, gid) with no supplementary groups (the emulator:
        # RIE_UID_GID); needs the simulator to run as root.
        run_as: Optional[tuple] = None,
        # LMI: concurrent workers share one stdout pipe, and a runtime that writes a
        # line's text and its newline in two writes lets another worker's line in
        # between: this fraction (0..1) of function lines is followed by the next line
        # any other invocation writes in the same record (a merged line), then an empty
        # record (the late newline). Function lines must be strings (lmi_plain_lines
        # and lmi_json_lines "string").
        merged_lines: float = 0.0,
        # LMI: the number of runtime workers (the emulator's AWS_LAMBDA_MAX_CONCURRENCY).
        # An invocation that finds none idle is refused at once, 400
        # Runtime.Unavailable, with no telemetry (sim.unavailable); None: no limit.
        max_concurrency: Optional[int] = None,
    ) -> None:
        try:
            error_fraction = float(error_fraction)
        except (TypeError, ValueError):
            raise ValueError(f"error_fraction must be a number in [0, 1], not {error_fraction!r}") from None
        if not 0.0 <= error_fraction <= 1.0:  # (NaN fails this too)
            raise ValueError(f"error_fraction must be in [0, 1], not {error_fraction!r}")
        if lmi_json_lines not in ("object", "string"):
            raise ValueError("lmi_json_lines must be 'object' or 'string'")
        if busy_batches not in ("hold", "drop"):
            raise ValueError("busy_batches must be 'hold' (real Lambda) or 'drop' (the emulator)")
        if run_as is not None:
            if (not isinstance(run_as, (tuple, list)) or len(run_as) != 2
                    or not all(isinstance(x, int) and x >= 0 for x in run_as)):
                raise ValueError(f"run_as must be (uid, gid), not {run_as!r}")
            if os.geteuid() != 0:
                raise ValueError(f"run_as={tuple(run_as)!r} needs the simulator to run as root (euid {os.geteuid()})")
        try:
            merged_lines = float(merged_lines)
        except (TypeError, ValueError):
            raise ValueError(f"merged_lines must be a number in [0, 1], not {merged_lines!r}") from None
        if not 0.0 <= merged_lines <= 1.0:
            raise ValueError(f"merged_lines must be in [0, 1], not {merged_lines!r}")
        if merged_lines and not (managed_instances and lmi_plain_lines == "string" and lmi_json_lines == "string"):
            raise ValueError("merged_lines needs managed_instances=True with lmi_plain_lines and "
                             "lmi_json_lines 'string' (lines are merged as text)")
        if max_concurrency is not None:
            if not managed_instances:
                raise ValueError("max_concurrency (Runtime.Unavailable) is a Lambda Managed Instances option")
            if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
                raise ValueError(f"max_concurrency must be an integer >= 1, not {max_concurrency!r}")
        if managed_instances:
            if freeze:
                raise ValueError("Lambda Managed Instances never freeze: freeze=True is not LMI")
            if log_format == "text":
                raise ValueError("Lambda Managed Instances force the JSON log format")
            if lmi_plain_lines not in ("wrapped", "string"):
                raise ValueError("lmi_plain_lines must be 'wrapped' or 'string'")
            if runtime_shutdown_ms > LMI_RUNTIME_SHUTDOWN_MAX_MS:
                raise ValueError(f"the runtime is SIGKILLed {LMI_RUNTIME_SHUTDOWN_MAX_MS} ms after SIGTERM on LMI")
            freeze = False
            log_format = "json"
        if freeze is None:
            freeze = True
        if log_format is None:
            log_format = "text"
        if init_timeout_ms is None:
            init_timeout_ms = max(LMI_INIT_TIMEOUT_MIN_MS, timeout_ms) if managed_instances else 10000
        if telemetry_mode not in ("ok", "202", "404"):
            raise ValueError("telemetry_mode must be 'ok', '202' or '404'")
        if log_format not in ("text", "json"):
            raise ValueError("log_format must be 'text' or 'json'")
        self.extension_path = os.path.abspath(extension_path)
        self.extension_name = os.path.basename(extension_path)
        self.user_env = dict(env or {})
        self.function_name = function_name
        self.function_version = function_version
        self.account_id = account_id
        self.memory_mb = memory_mb
        self.timeout_ms = timeout_ms
        self.telemetry_mode = telemetry_mode
        self.freeze = freeze
        self.log_format = log_format
        self.capture_extension_logs = capture_extension_logs
        self.shutdown_deadline_ms = shutdown_deadline_ms
        self.init_timeout_ms = init_timeout_ms
        self.handler = handler
        self.runtime_version = runtime_version
        self.init_log_lines = init_log_lines
        self.buffer_cap_bytes = buffer_cap_bytes
        self.retry_backoff_ms = retry_backoff_ms
        self.telemetry_post_timeout_s = telemetry_post_timeout_s
        self.telemetry_keepalive = telemetry_keepalive
        self.next_wait_timeout_s = next_wait_timeout_s
        self.freeze_wait_s = freeze_wait_s
        self.inherit_env = inherit_env
        self.echo_output = echo_output
        self.cwd = cwd
        self.open_files = open_files
        self.hosts_file = hosts_file
        self.sandbox_address = sandbox_address
        self.runtime_shutdown_ms = runtime_shutdown_ms
        self.managed_instances = managed_instances
        self.lmi_init_type_env = lmi_init_type_env
        self.lmi_schema_versions = tuple(lmi_schema_versions)
        self.lmi_runtime_done = lmi_runtime_done
        self.lmi_plain_lines = lmi_plain_lines
        self.lmi_request_id_key = lmi_request_id_key
        self.flush_before_shutdown = flush_before_shutdown
        self.initialization_type = LMI_INIT_TYPE if managed_instances else "on-demand"
        self._rng = random.Random(seed)
        self.error_fraction = error_fraction
        self.lmi_json_lines = lmi_json_lines
        self.busy_batches = busy_batches
        self.run_as = tuple(run_as) if run_as is not None else None
        self.merged_lines = merged_lines
        self.max_concurrency = max_concurrency
        # Which lines merge: a generator of its own (the others draw what they drew before).
        self._merge_rng = random.Random((seed or 0) * 104729 + 3)
        self._partial: Optional[tuple[str, str]] = None  # (request id, text) written without its newline
        # Which invocations fail: its own generator, so that the interleaving one (_rng)
        # draws exactly what it drew before this option existed.
        self._fail_rng = random.Random((seed or 0) * _FAIL_SEED_MUL + _FAIL_SEED_ADD)
        self._id_rng = random.Random()  # seeded from the OS: ids unique across simulators
        self._iso_cache: tuple[int, str] = (-1, "")
        region = self.user_env.get("AWS_REGION") or "us-east-1"
        self.region = region

        # ---- public observations --------------------------------------------
        self.emitted: list[bytes] = []  # events queued for the subscriber (exact bytes)
        self.produced: list[bytes] = []  # every event produced, subscribed or not
        self.delivered: list[bytes] = []  # events in batches the subscriber answered 2xx
        self.dropped: list[bytes] = []  # events dropped by the buffer cap
        self.posted_bodies: list[bytes] = []  # exact bodies of successful POSTs
        self.delivery_log: list[tuple[float, list[bytes]]] = []  # (perf_counter, batch)
        self.post_errors: list[str] = []
        self.function_line_ids: list[str] = []
        self.extension_line_ids: list[str] = []  # invoke(line_type="extension")'s lines
        self.request_ids: list[str] = []
        self.failed_request_ids: set[str] = set()  # invocations that ended in error
        self.violations: list[str] = []
        self.init_errors: list[dict] = []
        self.exit_errors: list[dict] = []
        self.subscription: Optional[dict] = None
        self.subscribe_attempts: list[tuple[int, Any]] = []  # (status answered, body)
        self.register_headers: Optional[dict] = None
        self.register_body: Optional[dict] = None
        self.registered_events: list[str] = []
        self.register_attempts: list[tuple[int, Any]] = []  # (status answered, body)
        self.register_ms: Optional[float] = None
        self.init_ms: Optional[float] = None
        self.post_runtime_ms: list[float] = []
        self.invoke_results: list[InvokeResult] = []
        self.invoke_timeouts = 0
        self.telemetry_posts = 0  # successful (2xx) POSTs
        self.telemetry_post_failures = 0  # failed attempts (connection error or non-2xx)
        # 503s before SHUTDOWN: the extension's push-back (memory at its cap while it
        # may not wait); Lambda keeps the batch and delivers it again, as for any error
        self.refusals = 0
        self.api_calls: list[tuple[float, str, str, int]] = []  # (perf_counter, method, path, status)
        self.next_call_times: list[float] = []  # perf_counter of every event/next arrival
        self.peak_rss_kb: list[int] = []  # extension VmHWM after each invoke
        self.freeze_count = 0
        self.exit_code: Optional[int] = None
        # LMI: function line id -> (request id of the invocation that logged it, "json" | "text").
        # On either model it also holds the [ERROR] line of every failed invocation.
        self.line_origin: dict[str, tuple[str, str]] = {}
        self.traffic_results: list[TrafficResult] = []
        # LMI: an extension exit before SHUTDOWN, which tears the environment down:
        # {"errorType": "Extension.Crash", "exit_code", "phase", "in_flight": [request ids]}.
        self.crash: Optional[dict] = None
        # The error type of an init/error reported during init, once the extension
        # exited after it: the init failed with it (either model).
        self.init_failed: Optional[str] = None
        self.shutdown_result: Optional[ShutdownResult] = None
        # busy_batches="drop": batches dropped because one was in flight (each a list of events).
        self.busy_dropped_batches: list[list[bytes]] = []
        # merged_lines: records that carry two lines, and the empty records of late newlines.
        self.merged_records: list[str] = []
        self.empty_records = 0
        # max_concurrency: request ids of invocations refused 400 Runtime.Unavailable.
        self.unavailable: list[str] = []
        # sample_resources(): (perf_counter, Resources) every period, while it runs.
        self.resource_samples: list[Resources] = []
        self.port: Optional[int] = None
        self.pid: Optional[int] = None

        # ---- internal state (all guarded by _cv) ----------------------------
        self._cv = threading.Condition(threading.RLock())
        self._started = False
        self._closed = False
        self._stop = False
        self._phase = "new"  # new | init | ready | invoke | shutdown | done
        self._ext_id: Optional[str] = None
        self._init_done = False
        self._init_error_state = False  # init/error during init: nothing else is allowed
        self._t_exec: Optional[float] = None
        self._init_epoch: Optional[float] = None
        self._init_duration_ms: Optional[float] = None
        self._cold = True
        self._next_waiting = False
        self._next_calls = 0
        self._next_arrival = 0.0
        self._next_event: Optional[tuple[bytes, str]] = None
        self._shutdown_sent = False
        self._shutdown_mark: Optional[int] = None  # len(emitted) when SHUTDOWN was given
        self._proc: Optional[subprocess.Popen] = None
        self._exited = False
        self._exit_time: Optional[float] = None
        self._expected_exit = False
        self._sim_killed = False  # the simulator itself SIGKILLed the extension
        self._in_flight: set[str] = set()  # LMI: request ids of invocations running
        self._flush_now = False  # deliver what is buffered now, whatever timeoutMs says
        self._env_init_type: Optional[str] = None  # AWS_LAMBDA_INITIALIZATION_TYPE as the extension got it
        self._frozen = False
        self._hold = False  # no telemetry delivery (frozen or about to freeze)
        self._delivering = False
        self._presub: Optional[list[tuple[str, bytes]]] = []  # events before subscription
        self._sub_types: tuple = ()
        self._deliver_enabled = False
        self._buffering = dict(BUFFERING_DEFAULTS)
        self._dest: Optional[tuple[str, int, str]] = None
        self._buf: collections.deque = collections.deque()  # (perf_counter, bytes)
        self._buf_bytes = 0
        self._pending_batch: Optional[list[bytes]] = None
        self._drop_records = 0
        self._drop_bytes = 0
        self._drop_reason = CAP_DROP_REASON
        self._conn: Optional[http.client.HTTPConnection] = None
        self._out_chunks: list[str] = []
        self._stdout_lines: list[str] = []  # what came on stdout alone (EMF lines)
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self._threads: list[threading.Thread] = []
        self._finalizer = None
        self._proc_state: dict = {}

    # ------------------------------------------------------------------ utils
    def __enter__(self) -> "LambdaSim":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stderr_text(self) -> str:
        """Everything the extension wrote to stderr and stdout so far (interleaved by arrival)."""
        with self._cv:
            return "".join(self._out_chunks)

    def stdout_lines(self) -> list[str]:
        """The lines the extension wrote to stdout so far (without newlines)."""
        with self._cv:
            return list(self._stdout_lines)

    def _tail(self, n: int = 3000) -> str:
        t = self.stderr_text()
        if len(t) > n:
            t = "..." + t[-n:]
        return f"\n--- extension output (tail) ---\n{t}\n--- end ---" if t else "\n(extension wrote nothing)"

    def _violation(self, msg: str) -> None:
        with self._cv:
            self.violations.append(msg)

    @property
    def undelivered(self) -> list[bytes]:
        """Events queued for the subscriber but neither delivered nor dropped (yet)."""
        with self._cv:
            out = list(self._pending_batch or [])
            out.extend(b for _, b in self._buf)
            return out

    @property
    def lost_before_shutdown(self) -> list[bytes]:
        """Events emitted before SHUTDOWN that Lambda never delivered: dropped for
        lack of room, or still pending when the extension exited. The oracle of
        the tests: a healthy extension takes everything (what is emitted after
        SHUTDOWN, such as its own last log lines, may legitimately stay behind)."""
        with self._cv:
            mark = len(self.emitted) if self._shutdown_mark is None else self._shutdown_mark
            early = set(self.emitted[:mark])
            return [b for b in self.dropped + self.undelivered if b in early]

    @property
    def frozen(self) -> bool:
        return self._frozen

    def _signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _read_vmhwm_kb(self) -> Optional[int]:
        if self._proc is None or self._exited:
            return None
        try:
            with open(f"/proc/{self._proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None

    def _wait(self, pred: Callable[[], bool], timeout_s: float, what: str, *,
              raise_on_timeout: bool = True, raise_on_exit: bool = True) -> bool:
        """Wait on the condition until pred() (True), timeout (raise or False), or exit."""
        deadline = time.perf_counter() + timeout_s
        with self._cv:
            while True:
                if self._stop:
                    raise SimError(f"simulator closed while waiting for {what}")
                if raise_on_exit and self._exited:
                    raise ExtensionExited(
                        f"extension exited (code {self.exit_code}) while waiting for {what}" + self._tail())
                if pred():
                    return True
                if not raise_on_exit and self._exited:
                    return False
                rem = deadline - time.perf_counter()
                if rem <= 0:
                    if raise_on_timeout:
                        raise SimTimeout(f"timed out after {timeout_s:.1f}s waiting for {what}" + self._tail())
                    return False
                self._cv.wait(min(rem, 0.5))

    # ------------------------------------------------------- failed invocations
    def _choose_failure(self, rid: str, override: Optional[bool]) -> bool:
        """Decide at its start whether invocation `rid` fails. Every invocation draws its
        number, overridden or not, so invocation k always gets the k-th draw."""
        with self._cv:
            draw = self._fail_rng.random()
            failed = draw < self.error_fraction if override is None else bool(override)
            if failed:
                self.failed_request_ids.add(rid)
        return failed

    @staticmethod
    def _fail_chooser(fail: Optional[Callable[[int, str], bool]]) -> Callable[[str], Optional[bool]]:
        """fail(index, request id) of one invoke_concurrent/run_traffic call as a function of
        the request id; index counts that call's invocations in the order they start."""
        if fail is None:
            return lambda rid: None
        started = [0]

        def choose(rid: str) -> bool:
            i = started[0]
            started[0] += 1
            return bool(fail(i, rid))
        return choose

    def _error_line(self, rid: str, lid: str, as_json: bool, rid_key: str = "requestId") -> Any:
        """The function's last line when it failed: what a runtime writes for an exception."""
        msg = f"{HANDLER_ERROR_TYPE}: simulated failure {lid}"
        if as_json:
            return {"timestamp": self._iso_now(), "level": "ERROR", "message": msg, rid_key: rid}
        return f"[ERROR] {msg}"

    # ------------------------------------------------------------- telemetry
    def _iso_now(self) -> str:
        """_iso_now(), its formatted second cached: the same text at a fraction of the
        cost (LMI traffic produces thousands of timestamps a second)."""
        t = time.time()
        sec = int(t)
        cached = self._iso_cache
        if cached[0] != sec:
            cached = (sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)))
            self._iso_cache = cached
        return f"{cached[1]}{int((t - sec) * 1000):03d}Z"

    def _new_id(self) -> str:
        """A random (version 4) UUID without a getrandom() call each: under the GIL
        contention of a traffic run, uuid4() costs tens of microseconds."""
        return str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))

    def _make_event(self, typ: str, record: Any, *, ascii_escape: bool = False, when: Optional[str] = None) -> bytes:
        env = {"time": when or self._iso_now(), "type": typ, "record": record}
        return json.dumps(env, separators=(",", ":"), ensure_ascii=ascii_escape).encode("utf-8")

    def _emit(self, typ: str, record: Any, **kw) -> bytes:
        b = self._make_event(typ, record, **kw)
        cat = "platform" if typ.startswith("platform.") else typ
        with self._cv:
            self.produced.append(b)
            if self._presub is not None:
                self._presub.append((cat, b))
            elif self._deliver_enabled and cat in self._sub_types:
                self._enqueue(b)
        return b

    def _enqueue(self, b: bytes) -> None:
        # caller holds _cv
        self.emitted.append(b)
        self._buf.append((time.perf_counter(), b))
        self._buf_bytes += len(b)
        cap = self.buffer_cap_bytes or 10 * self._buffering["maxBytes"]
        while self._buf_bytes > cap and len(self._buf) > 1:
            _, old = self._buf.popleft()
            self._buf_bytes -= len(old)
            self.dropped.append(old)
            self._drop_records += 1
            self._drop_bytes += len(old)
            self._drop_reason = CAP_DROP_REASON
        # Wake the delivery loop only when a batch may have become ready other than by
        # time (it times the oldest event's timeoutMs itself): at a few thousand events a
        # second, a wake-up per event costs the producer more than the event.
        bf = self._buffering
        if (len(self._buf) == 1 or self._drop_records or len(self._buf) >= bf["maxItems"]
                or self._buf_bytes >= bf["maxBytes"] or self._flush_now):
            self._cv.notify_all()

    def _end_presub(self) -> None:
        # caller holds _cv: subscription decided (accepted or init over)
        pre, self._presub = self._presub, None
        if pre and self._deliver_enabled:
            for cat, b in pre:
                if cat in self._sub_types:
                    self._enqueue(b)

    def _batch_ready(self, now: float) -> bool:
        if self._drop_records and "platform" in self._sub_types:
            return True
        return self._buf_ready(now)

    def _buf_ready(self, now: float) -> bool:
        """The buffered events make a batch (by count, size or the oldest one's age)."""
        if not self._buf:
            return False
        if self._flush_now:
            return True
        bf = self._buffering
        return (len(self._buf) >= bf["maxItems"] or self._buf_bytes >= bf["maxBytes"]
                or (now - self._buf[0][0]) * 1000.0 >= bf["timeoutMs"])

    def _take_batch(self) -> list[bytes]:
        items: list[bytes] = []
        size = 0
        if self._drop_records:
            if "platform" in self._sub_types:
                ev = self._make_event("platform.logsDropped", {
                    "reason": self._drop_reason,
                    "droppedRecords": self._drop_records,
                    "droppedBytes": self._drop_bytes,
                })
                self.produced.append(ev)
                self.emitted.append(ev)
                items.append(ev)
                size += len(ev)
            self._drop_records = 0
            self._drop_bytes = 0
        return self._take_events(items, size)

    def _take_events(self, items: Optional[list[bytes]] = None, size: int = 0) -> list[bytes]:
        """Buffered events, oldest first, appended to `items` (of `size` bytes) up to
        maxItems and maxBytes."""
        items = [] if items is None else items
        bf = self._buffering
        while self._buf and len(items) < bf["maxItems"]:
            b = self._buf[0][1]
            if items and size + len(b) > bf["maxBytes"]:
                break
            self._buf.popleft()
            self._buf_bytes -= len(b)
            items.append(b)
            size += len(b)
        return items

    def _post(self, body: bytes) -> tuple[int, bytes]:
        assert self._dest is not None
        host, port, path = self._dest
        headers = {"Content-Type": "application/json"}
        for attempt in (0, 1):
            conn = self._conn
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=self.telemetry_post_timeout_s)
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close or not self.telemetry_keepalive:
                    conn.close()
                    self._conn = None
                else:
                    self._conn = conn
                return resp.status, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._conn = None
                if reused and attempt == 0:
                    continue  # stale keep-alive connection: one fresh try, like HTTP clients do
                raise
            except Exception:
                conn.close()
                self._conn = None
                raise
        raise AssertionError("unreachable")

    def _delivery_loop(self) -> None:
        backoff_first, backoff_max = self.retry_backoff_ms
        backoff = backoff_first
        retry_at = 0.0
        while True:
            with self._cv:
                while True:
                    if self._stop:
                        return
                    now = time.perf_counter()
                    wait: Optional[float] = 0.5
                    if self._dest is not None and not self._hold and not self._exited:
                        if self._pending_batch is not None:
                            if now >= retry_at:
                                break
                            wait = retry_at - now
                        elif self._batch_ready(now):
                            self._pending_batch = self._take_batch()
                            if self._pending_batch:
                                break
                            self._pending_batch = None
                        elif self._buf:
                            wait = self._buffering["timeoutMs"] / 1000.0 - (now - self._buf[0][0])
                    self._cv.wait(max(0.001, min(wait, 0.5)))
                batch = self._pending_batch
                self._delivering = True
                if self.busy_batches == "drop":
                    self._cv.notify_all()  # the drop loop watches the batch that forms meanwhile
            body = b"[" + b",".join(batch) + b"]"
            status = None
            err = None
            try:
                status, _ = self._post(body)
                if not 200 <= status < 300:
                    err = f"HTTP {status}"
            except Exception as e:  # connection refused/reset, timeout...
                err = f"{type(e).__name__}: {e}"
            with self._cv:
                self._delivering = False
                if err is None:
                    self.telemetry_posts += 1
                    self.posted_bodies.append(body)
                    self.delivered.extend(batch)
                    self.delivery_log.append((time.perf_counter(), batch))
                    self._pending_batch = None
                    backoff = backoff_first
                else:
                    self.telemetry_post_failures += 1
                    self.post_errors.append(err)
                    # (after SHUTDOWN an extension may refuse what it can no longer send,
                    # such as its own last log lines: Lambda does not act on it)
                    if status == 503 and not self._shutdown_sent:
                        self.refusals += 1
                    elif status is not None and not self._shutdown_sent:
                        self.violations.append(
                            f"telemetry listener answered {err} (Lambda redelivers on 4xx/5xx; answer 200)")
                    retry_at = time.perf_counter() + backoff / 1000.0
                    backoff = min(backoff * 2, backoff_max)
                self._cv.notify_all()

    def _busy_drop_loop(self) -> None:
        """busy_batches="drop": while a POST is in flight, a batch that becomes ready
        (full, or its oldest event timeoutMs old) is dropped, not held, and counted for
        the platform.logsDropped that starts the next batch (the emulator's subscriber
        keeps one batch in flight and has nowhere to put a second one)."""
        with self._cv:
            while not self._stop:
                wait = 0.5
                if self._delivering and not self._hold and not self._exited:
                    now = time.perf_counter()
                    if self._buf_ready(now):
                        items = self._take_events()
                        self.dropped.extend(items)
                        self.busy_dropped_batches.append(items)
                        self._drop_records += len(items)
                        self._drop_bytes += sum(len(b) for b in items)
                        self._drop_reason = BUSY_DROP_REASON
                        continue
                    if self._buf:
                        wait = self._buffering["timeoutMs"] / 1000.0 - (now - self._buf[0][0])
                self._cv.wait(max(0.001, min(wait, 0.5)))

    # ------------------------------------------------------------ HTTP server
    def _make_handler(self):
        sim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes; without TCP_NODELAY,
            # Nagle + delayed ACK add ~40 ms to every answer, which Lambda does not.
            disable_nagle_algorithm = True
            server_version = "LambdaSim/1.0"
            sys_version = ""

            def log_message(self, fmt, *args):  # quiet
                pass

            def do_GET(self):
                sim._dispatch(self, "GET")

            def do_POST(self):
                sim._dispatch(self, "POST")

            def do_PUT(self):
                sim._dispatch(self, "PUT")

            def do_DELETE(self):
                sim._dispatch(self, "DELETE")

            def do_PATCH(self):
                sim._dispatch(self, "PATCH")

        return Handler

    @staticmethod
    def _read_body(h) -> bytes:
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                line = h.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        tr = h.rfile.readline(65537)
                        if tr in (b"\r\n", b"\n", b""):
                            break
                    break
                parts.append(h.rfile.read(size))
                h.rfile.readline()
            return b"".join(parts)
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n > 0 else b""

    def _reply(self, h, method: str, path: str, status: int, body: Any = b"",
               headers: Optional[dict] = None, ctype: str = "application/json") -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        with self._cv:
            self.api_calls.append((time.perf_counter(), method, path, status))
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            h.close_connection = True

    def _error(self, h, method, path, status, etype, msg, *, violation=True) -> None:
        if violation:
            self._violation(f"{method} {path}: {status} {etype}: {msg}")
        self._reply(h, method, path, status, {"errorType": etype, "errorMessage": msg})

    def _dispatch(self, h, method: str) -> None:
        path = urllib.parse.urlsplit(h.path).path
        norm = path.rstrip("/") or "/"
        try:
            body = self._read_body(h)
        except (OSError, ValueError):
            h.close_connection = True
            return
        routes = {
            P_REGISTER: ("POST", self._h_register),
            P_NEXT: ("GET", self._h_next),
            P_INIT_ERROR: ("POST", self._h_init_error),
            P_EXIT_ERROR: ("POST", self._h_exit_error),
            P_TELEMETRY: ("PUT", self._h_telemetry),
        }
        if norm == P_LOGS:
            return self._error(h, method, path, 400, "Logs.Unsupported",
                               "the Logs API (2020-08-15) is superseded by the Telemetry API and not simulated")
        if norm not in routes:
            return self._error(h, method, path, 404, "InvalidRequest", f"unknown path {path}")
        want, fn = routes[norm]
        if method != want:
            return self._error(h, method, path, 405, "InvalidRequest", f"{norm} expects {want}, got {method}")
        fn(h, method, path, body)

    def _check_id(self, h, method, path) -> bool:
        got = h.headers.get(H_ID)
        with self._cv:
            ext_id = self._ext_id
        if got is None:
            self._error(h, method, path, 403, "Extension.MissingExtensionIdentifier",
                        f"missing {H_ID} header")
            return False
        if ext_id is None or got != ext_id:
            self._error(h, method, path, 403, "Extension.InvalidExtensionIdentifier",
                        f"unknown {H_ID} {got!r}")
            return False
        return True

    def _h_register(self, h, method, path, body) -> None:
        try:
            shown: Any = json.loads(body) if body else None
        except ValueError:
            shown = body

        def refuse(status, etype, msg, *, violation=True):
            with self._cv:
                self.register_attempts.append((status, shown))
            return self._error(h, method, path, status, etype, msg, violation=violation)

        name = h.headers.get(H_NAME)
        with self._cv:
            if self._ext_id is not None:
                return refuse(403, "Extension.AlreadyRegistered", "extension already registered")
            if self._init_done:
                return refuse(403, "Extension.InvalidState", "registration is only possible during init")
        if name != self.extension_name:
            return refuse(403, "Extension.InvalidExtensionName",
                          f"{H_NAME} {name!r} must be the executable's file name {self.extension_name!r}")
        try:
            req = json.loads(body or b"null")
            events = req["events"]
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                raise ValueError("events must be a list of strings")
        except (ValueError, KeyError, TypeError) as e:
            return refuse(400, "InvalidRequest", f"bad register body: {e}")
        if self.managed_instances:
            # Emulator (LMI) rapi/handler/agentregister.go + core: the first event that is
            # not SHUTDOWN is refused, 403, "<EVENT>: ErrorInvalidEventType"; the extension
            # stays unregistered and may register again. An extension told it runs on LMI
            # (the variable) should not ask; without the variable, asking for INVOKE and
            # retrying with SHUTDOWN on this 403 is the only way to find out.
            for e in events:
                if e not in LMI_EXTENSION_EVENTS:
                    told = self._env_init_type == LMI_INIT_TYPE
                    return refuse(403, "Extension.InvalidEventType", f"{e}: ErrorInvalidEventType",
                                  violation=told)
        bad = [e for e in events if e not in EXTENSION_EVENTS]
        if bad:
            return refuse(400, "Extension.InvalidEventType",
                          f"unknown event types {bad}; allowed {list(EXTENSION_EVENTS)}")
        ext_id = str(uuid.uuid4())
        resp = {"functionName": self.function_name, "functionVersion": self.function_version,
                "handler": self.handler}
        features = [f.strip() for f in (h.headers.get(H_FEATURE) or "").split(",")]
        if "accountId" in features:
            resp["accountId"] = self.account_id
        with self._cv:
            if self._ext_id is not None:  # lost a race with a concurrent register
                return refuse(403, "Extension.AlreadyRegistered", "extension already registered")
            self.register_attempts.append((200, req))
            self._ext_id = ext_id
            self.register_headers = dict(h.headers.items())
            self.register_body = req
            self.registered_events = list(events)
            self.register_ms = (time.perf_counter() - self._t_exec) * 1000.0
            self._cv.notify_all()
        self._reply(h, method, path, 200, resp, headers={H_ID: ext_id})

    def _h_next(self, h, method, path, body) -> None:
        if not self._check_id(h, method, path):
            return
        with self._cv:
            if self._init_error_state:
                # Emulator core/externalagent_states.go: InitError is a terminal state.
                self.violations.append("event/next after init/error (the extension should exit)")
                return self._error(h, method, path, 403, "Extension.InvalidExtensionState",
                                   f"State transition from InitError to Ready failed for extension "
                                   f"{self._ext_id}. Error: state transition is not allowed",
                                   violation=False)
            if self._next_waiting:
                if self.managed_instances:
                    # Emulator (LMI) core/externalagent_states.go: Ready -> Ready is not allowed.
                    return self._error(h, method, path, 403, "Extension.InvalidExtensionState",
                                       f"State transition from Ready to Ready failed for extension "
                                       f"{self._ext_id}. Error: state transition is not allowed")
                return self._error(h, method, path, 403, "Extension.InvalidState",
                                   "concurrent event/next calls from one extension")
            if self._shutdown_sent:
                self.violations.append("event/next called after SHUTDOWN was delivered (the extension should exit)")
            now = time.perf_counter()
            self._next_waiting = True
            self._next_calls += 1
            self._next_arrival = now
            self.next_call_times.append(now)
            first = self.init_ms is None
            if first:
                self.init_ms = (now - self._t_exec) * 1000.0
                self._init_done = True
                self._emit("platform.extension", {"name": self.extension_name, "state": "Ready",
                                                  "events": list(self.registered_events)})
                if self._presub is not None:  # init over without a subscription: nothing is kept
                    self._end_presub()
            self._cv.notify_all()
            while self._next_event is None and not self._stop:
                self._cv.wait(1.0)
            if self._stop:
                self._next_waiting = False
                h.close_connection = True
                return
            ev, ev_id = self._next_event
            self._next_event = None
            self._next_waiting = False
            self._cv.notify_all()
        self._reply(h, method, path, 200, ev, headers={H_EVENT_ID: ev_id})

    def _record_error(self, h, body, store: list, what: str) -> None:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        entry = {"error_type": h.headers.get(H_ERRTYPE), "body": body.decode("utf-8", "replace"),
                 "json": parsed, "time": time.perf_counter()}
        with self._cv:
            store.append(entry)
            if not entry["error_type"]:
                self.violations.append(f"{what} without {H_ERRTYPE} header")
            self._cv.notify_all()

    def _h_init_error(self, h, method, path, body) -> None:
        if not self._check_id(h, method, path):
            return
        self._record_error(h, body, self.init_errors, "init/error")
        with self._cv:
            if not self._init_done:
                self._init_error_state = True
        self._reply(h, method, path, 202, {"status": "OK"})

    def _h_exit_error(self, h, method, path, body) -> None:
        if not self._check_id(h, method, path):
            return
        self._record_error(h, body, self.exit_errors, "exit/error")
        self._reply(h, method, path, 202, {"status": "OK"})

    def _validate_subscription(self, req: Any) -> tuple[Optional[str], Any]:
        if not isinstance(req, dict):
            return "body must be a JSON object", None
        sv = req.get("schemaVersion")
        versions = self.lmi_schema_versions if self.managed_instances else SCHEMA_VERSIONS
        if sv not in versions:
            return f"schemaVersion {sv!r} must be one of {list(versions)}", None
        types = req.get("types")
        if not isinstance(types, list) or not types or any(t not in TELEMETRY_TYPES for t in types):
            return f"types {types!r} must be a non-empty subset of {list(TELEMETRY_TYPES)}", None
        buf = req.get("buffering", {})
        if buf is None:
            buf = {}
        if not isinstance(buf, dict):
            return "buffering must be an object", None
        eff = dict(BUFFERING_DEFAULTS)
        for k, v in buf.items():
            if k not in BUFFERING_RANGES:
                return f"unknown buffering field {k!r}", None
            lo, hi = BUFFERING_RANGES[k]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                return f"buffering.{k}={v!r} must be an integer in [{lo}, {hi}]", None
            eff[k] = v
        dest = req.get("destination")
        if not isinstance(dest, dict):
            return "destination must be an object", None
        if dest.get("protocol") != "HTTP":
            # Lambda also accepts "TCP"; this simulator only speaks HTTP.
            return f"destination.protocol {dest.get('protocol')!r} must be \"HTTP\"", None
        uri = dest.get("URI")
        try:
            u = urllib.parse.urlsplit(uri)
            port = u.port
        except (TypeError, ValueError, AttributeError):
            return f"destination.URI {uri!r} is not a valid URI", None
        if u.scheme != "http" or u.hostname != "sandbox.localdomain":
            return f"destination.URI {uri!r} must be http://sandbox.localdomain:PORT[/path]", None
        if not port:
            return f"destination.URI {uri!r} needs an explicit port", None
        target = u.path or "/"
        if u.query:
            target += "?" + u.query
        return None, (sorted(set(types), key=TELEMETRY_TYPES.index), eff, (self.sandbox_address, port, target))

    def _h_telemetry(self, h, method, path, body) -> None:
        if not self._check_id(h, method, path):
            return
        with self._cv:
            closed = self._init_done
        if closed:
            return self._error(h, method, path, 403, "Telemetry.SubscriptionClosed",
                               "telemetry subscriptions are only accepted during init")
        try:
            req = json.loads(body or b"null")
        except ValueError as e:
            with self._cv:
                self.subscribe_attempts.append((400, body))
            return self._error(h, method, path, 400, "ValidationError", f"body is not JSON: {e}")
        if self.telemetry_mode == "404":
            with self._cv:
                self.subscribe_attempts.append((404, req))
            return self._error(h, method, path, 404, "Telemetry.NotSupported",
                               "Telemetry API is not supported here", violation=False)
        err, parsed = self._validate_subscription(req)
        if err:
            with self._cv:
                self.subscribe_attempts.append((400, req))
            return self._error(h, method, path, 400, "ValidationError", err)
        if self.telemetry_mode == "202":
            with self._cv:
                self.subscribe_attempts.append((202, req))
                self.subscription = req
            # like local emulators: accepted, never delivered
            return self._reply(h, method, path, 202, "Telemetry API is not supported; nothing will be delivered",
                               ctype="text/plain")
        types, eff, dest = parsed
        with self._cv:
            self.subscribe_attempts.append((200, req))
            self.subscription = req
            self._sub_types = tuple(types)
            self._buffering = eff
            self._dest = dest
            self._deliver_enabled = True
            if self._presub is not None:
                self._end_presub()
            self._emit("platform.telemetrySubscription",
                       {"name": self.extension_name, "state": "Subscribed", "types": list(types)})
            self._cv.notify_all()
        self._reply(h, method, path, 200, "OK", ctype="text/plain")

    # ------------------------------------------------------- process plumbing
    def _build_env(self) -> dict:
        if self.inherit_env:
            env = dict(os.environ)
        else:
            env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                   "LANG": "en_US.UTF-8", "TZ": ":UTC"}
        env.update({
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": self.function_version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_INITIALIZATION_TYPE": self.initialization_type,
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
            # Lambda always provides (temporary) credentials; tests override or unset them.
            "AWS_ACCESS_KEY_ID": "ASIASIMULATEDKEY0000",
            "AWS_SECRET_ACCESS_KEY": "simulated/secret/key/0000000000000000000",
            "AWS_SESSION_TOKEN": "simulated-session-token",
        })
        if self.managed_instances and not self.lmi_init_type_env:
            del env["AWS_LAMBDA_INITIALIZATION_TYPE"]
        # Lambda's advanced logging controls: the log format reaches the
        # extension's environment too (LMI forces JSON).
        if self.log_format == "json":
            env["AWS_LAMBDA_LOG_FORMAT"] = "JSON"
        for k, v in self.user_env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v if isinstance(v, bytes) else str(v)
        env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{self.port}"
        self._env_init_type = env.get("AWS_LAMBDA_INITIALIZATION_TYPE")
        return env

    def _reader(self, pipe, stream: str) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                text = raw.decode("utf-8", "replace")
                with self._cv:
                    self._out_chunks.append(text)
                    if stream == "stdout":
                        self._stdout_lines.append(text.rstrip("\r\n"))
                if self.echo_output:
                    try:
                        sys.stderr.write(f"[{self.extension_name} {stream}] {text}")
                        if not text.endswith("\n"):
                            sys.stderr.write("\n")
                    except Exception:
                        pass
                if self.capture_extension_logs:
                    self._emit("extension", text.rstrip("\r\n"))
        except (OSError, ValueError):
            pass

    def _watcher(self) -> None:
        rc = self._proc.wait()
        # Let the pipe readers reach EOF first, so whoever sees the exit also
        # sees the extension's last words (bounded: a grandchild may hold a pipe).
        for t in self._threads:
            if t.name in ("lambdasim-stdout", "lambdasim-stderr"):
                t.join(timeout=1.0)
        with self._cv:
            self._proc_state["reaped"] = True
            self._exited = True
            self.exit_code = rc
            self._exit_time = time.perf_counter()
            if self._init_error_state and not self._init_done:
                # The init fails with the error reported (either model; on LMI not
                # Extension.Crash: see the module docstring).
                self.init_failed = self.init_errors[0]["error_type"]
            elif (self.managed_instances and not self._shutdown_sent and not self._sim_killed
                    and not self._stop):
                # LMI: any exit before SHUTDOWN, even with code 0 and after init/error or
                # exit/error, is Extension.Crash: Lambda tears the whole environment down,
                # with every invocation in flight (LMI execution environment page; emulator
                # rapid/shutdown.go processTermination).
                in_flight = sorted(self._in_flight)
                self.crash = {"errorType": "Extension.Crash", "exit_code": rc, "phase": self._phase,
                              "in_flight": in_flight}
                self.violations.append(
                    f"extension exited (code {rc}) before SHUTDOWN in phase {self._phase}: Extension.Crash, "
                    f"the environment is torn down with {len(in_flight)} invocations in flight")
            elif not self._expected_exit and not self._stop:
                if not (self.init_errors or self.exit_errors):
                    self.violations.append(
                        f"extension exited unexpectedly (code {rc}) in phase {self._phase}")
            self._cv.notify_all()

    def _spawn_thread(self, target, *args, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=f"lambdasim-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _limit_open_files(self) -> None:
        # in the child, before exec: Lambda's quota of open files
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def _freeze_now(self) -> None:
        """Freeze the sandbox: wait for an in-flight delivery, then SIGSTOP the process group."""
        assert not self.managed_instances, "Lambda Managed Instances never freeze"
        with self._cv:
            self._hold = True
            self._cv.wait_for(lambda: not self._delivering, timeout=self.freeze_wait_s)
            if self._delivering:
                self.violations.append("telemetry POST still in flight when the sandbox froze")
            if not self._exited and not self._frozen:
                self._signal_group(signal.SIGSTOP)
                self._frozen = True
                self.freeze_count += 1
        # SIGSTOP is asynchronous: make sure the process really is stopped before we
        # report the sandbox as frozen (no signal exists for this, so poll /proc briefly).
        self._wait_stopped(timeout_s=2.0)

    def _proc_status(self) -> Optional[str]:
        try:
            with open(f"/proc/{self._proc.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, AttributeError):
            return None

    def _wait_stopped(self, timeout_s: float) -> bool:
        end = time.perf_counter() + timeout_s
        while time.perf_counter() < end:
            st = self._proc_status()
            if st is None or st in ("T", "t", "Z", "X") or self._exited:
                return True
            time.sleep(0.0005)
        return False

    def _thaw(self) -> None:
        with self._cv:
            if self._frozen:
                self._signal_group(signal.SIGCONT)
                self._frozen = False
            self._hold = False
            self._cv.notify_all()

    def _flush_buffers(self, timeout_s: float) -> bool:
        """Deliver everything buffered now, whatever timeoutMs says (the LMI emulator does
        this before SHUTDOWN, bounded by 1 s). True if the buffer emptied in time."""
        with self._cv:
            self._flush_now = True
            self._cv.notify_all()
            try:
                return self._cv.wait_for(
                    lambda: self._exited or self._dest is None or not self._deliver_enabled
                    or (not self._buf and self._pending_batch is None and not self._delivering),
                    timeout=timeout_s)
            finally:
                self._flush_now = False

    def _give_next_event(self, payload: dict) -> int:
        """Answer the pending event/next; returns the next-call count to wait for afterwards."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        with self._cv:
            target = self._next_calls + 1
            self._next_event = (body, str(uuid.uuid4()))
            self._cv.notify_all()
        return target

    # ---------------------------------------------------------------- phases
    def start(self) -> None:
        """Init phase: spawn the extension, wait for register and its first event/next."""
        if self._started:
            raise SimError("start() called twice")
        self._started = True
        self._phase = "init"
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._spawn_thread(self._server.serve_forever, 0.1, name="api")
        self._spawn_thread(self._delivery_loop, name="telemetry")
        if self.busy_batches == "drop":
            self._spawn_thread(self._busy_drop_loop, name="busy-drop")
        env = self._build_env()

        self._init_epoch = time.time()
        init_start = {
            "initializationType": self.initialization_type,
            "phase": "init",
            "runtimeVersion": self.runtime_version,
            "runtimeVersionArn": f"arn:aws:lambda:{self.region}::runtime:{secrets.token_hex(32)}",
            "functionName": self.function_name,
            "functionVersion": self.function_version,
        }
        if self.managed_instances:
            # emulator (LMI) interop/events_api.go InitStartData: the instance's id and memory (bytes)
            d = _dt.datetime.now(_dt.timezone.utc)
            init_start["instanceId"] = (f"{d:%Y/%m/%d}/{self.function_name}[{self.function_version}]"
                                        f"{secrets.token_hex(16)}")
            init_start["instanceMaxMemory"] = self.memory_mb * 1024 * 1024
        self._emit("platform.initStart", init_start)
        self._t_exec = time.perf_counter()
        try:
            argv = [self.extension_path]
            creds: dict = {}
            if self.hosts_file:
                # the same process (unshare and sh exec), with a private /etc/hosts;
                # with run_as, the mount is made as root and setpriv drops to the uid
                drop = ""
                if self.run_as:
                    drop = (f"setpriv --reuid={self.run_as[0]} --regid={self.run_as[1]} "
                            f"--clear-groups ")
                argv = ["unshare", "--mount", "sh", "-c", f'mount --bind "$1" /etc/hosts && exec {drop}"$0"',
                        self.extension_path, os.path.abspath(self.hosts_file)]
            elif self.run_as:
                creds = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
            self._proc = subprocess.Popen(
                argv, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=self._limit_open_files if self.open_files else None, **creds)
        except OSError as e:
            who = ""
            if self.run_as:
                who = (f" as uid {self.run_as[0]} / gid {self.run_as[1]} (run_as): every directory on "
                       f"its path must be searchable (o+x) and the file readable and executable (o+rx) "
                       f"by that user")
            raise SimError(f"cannot execute extension {self.extension_path}{who}: {e}") from e
        self.pid = self._proc.pid
        self._finalizer = weakref.finalize(self, _kill_group, self._proc.pid, self._proc_state)
        self._spawn_thread(self._reader, self._proc.stdout, "stdout", name="stdout")
        self._spawn_thread(self._reader, self._proc.stderr, "stderr", name="stderr")
        self._spawn_thread(self._watcher, name="watch")

        deadline = self._t_exec + self.init_timeout_ms / 1000.0
        try:
            self._wait(lambda: self._ext_id is not None, max(0.0, deadline - time.perf_counter()),
                       "the extension to register")
            # Runtime init starts once every extension has registered.
            for i in range(self.init_log_lines):
                lid = str(uuid.uuid4())
                self.function_line_ids.append(lid)
                text = f"line {lid} init #{i} cold start: loading handler café ☕"
                if self.log_format == "json" and not (self.managed_instances and self.lmi_plain_lines == "string"):
                    rec: Any = {"timestamp": _iso_now(), "level": "INFO", "message": text}
                else:
                    rec = text
                self._emit("function", rec)
            self._emit("platform.initRuntimeDone", {"initializationType": self.initialization_type, "phase": "init",
                                                    "status": "success"})
            self._wait(lambda: self.init_ms is not None, max(0.0, deadline - time.perf_counter()),
                       "the extension's first event/next (end of init)")
        except SimError as e:
            with self._cv:
                errs = list(self.init_errors)
            if errs:
                raise ExtensionInitError(f"extension reported init error {errs[-1]['error_type']!r}: "
                                         f"{errs[-1]['body']}" + self._tail()) from e
            raise
        self._init_duration_ms = self.init_ms
        self._emit("platform.initReport", {"initializationType": self.initialization_type, "phase": "init",
                                           "status": "success",
                                           "metrics": {"durationMs": round(self.init_ms, 3)}})
        self._phase = "ready"
        if self.freeze:
            self._freeze_now()

    def invoke(self, log_lines: int = 10, *, runtime_ms: float = 0, idle_ms: float = 0,
               line_factory: Optional[Callable[[int, str], Any]] = None,
               spread_lines: bool = False,
               runtime_done_delay_ms: Optional[float] = 0,
               fail: Optional[bool] = None, line_type: str = "function") -> InvokeResult:
        """One invocation. line_factory(i, line_id) -> record (str or dict) must contain line_id.
        line_type="extension": the invocation's lines are emitted as `extension` events, as
        Lambda sends what another extension in the environment logs (their ids go to
        extension_line_ids, not function_line_ids); the failure line stays a function line.
        runtime_done_delay_ms: platform.runtimeDone is emitted this long after the function
        ends (a late one); None: never (a missing one). Post-runtime is timed from the end.
        fail: the invocation ends in error (True) or not (False); None: error_fraction decides.
        A failed one writes one more function line last ("[ERROR] Runtime.HandlerError: ...",
        a JSON object with level ERROR in the JSON log format), and its runtimeDone and
        report carry status "error" and errorType (a timed-out report stays "timeout").

        LMI: invoke_concurrent(1, log_lines, runtime_ms=...) and idle_ms of sleep; there
        line_factory is called (i, line_id, request_id); spread_lines and
        runtime_done_delay_ms do not apply."""
        if line_type not in ("function", "extension"):
            raise ValueError("line_type must be 'function' or 'extension'")
        if self.managed_instances:
            if line_type != "function":
                raise SimError("line_type='extension' is not simulated on Lambda Managed Instances")
            if spread_lines or runtime_done_delay_ms != 0:
                raise SimError("spread_lines and runtime_done_delay_ms do not apply to Lambda Managed Instances")
            res = self.invoke_concurrent(1, log_lines, runtime_ms=runtime_ms, line_factory=line_factory,
                                         fail=None if fail is None else (lambda i, rid: fail))[0]
            if idle_ms:
                time.sleep(idle_ms / 1000.0)
            return res
        if self._phase != "ready":
            raise SimError(f"invoke() in phase {self._phase!r}")
        self._phase = "invoke"
        self._thaw()
        wants_invoke = "INVOKE" in self.registered_events
        if wants_invoke:
            self._wait(lambda: self._next_waiting, self.next_wait_timeout_s,
                       "the extension to wait in event/next before INVOKE")
        rid = str(uuid.uuid4())
        self.request_ids.append(rid)
        failed = self._choose_failure(rid, fail)
        tracing, arn = self._tracing_and_arn()
        t0 = time.perf_counter()
        epoch0 = time.time()
        deadline_pc = t0 + self.timeout_ms / 1000.0
        target = None
        if wants_invoke:
            target = self._give_next_event({
                "eventType": "INVOKE",
                "deadlineMs": int(epoch0 * 1000) + self.timeout_ms,
                "requestId": rid,
                "invokedFunctionArn": arn,
                "tracing": {"type": "X-Amzn-Trace-Id", "value": tracing["value"]},
            })
        self._emit("platform.start", {"requestId": rid, "version": self.function_version, "tracing": tracing})

        records = []
        for i in range(log_lines):
            lid = str(uuid.uuid4())
            (self.function_line_ids if line_type == "function" else self.extension_line_ids).append(lid)
            if line_factory is not None:
                rec = line_factory(i, lid)
            else:
                text = _TEXT_TEMPLATES[i % len(_TEXT_TEMPLATES)](i, lid)
                if self.log_format == "json":
                    rec = {"timestamp": _iso_now(), "level": "INFO", "message": text, "requestId": rid}
                else:
                    rec = text
            records.append(rec)
        per_line = (runtime_ms / 1000.0 / max(1, log_lines)) if spread_lines else 0.0
        for i, rec in enumerate(records):
            # every 4th line is serialised ASCII-only (\u00e9, surrogate pairs): byte-exact
            # forwarding must keep either spelling as it came.
            self._emit(line_type, rec, ascii_escape=(i % 4 == 3))
            if per_line:
                time.sleep(per_line)
        rest = runtime_ms / 1000.0 - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
        if failed:  # the exception's line, the function's last
            lid = str(uuid.uuid4())
            json_fmt = self.log_format == "json"
            with self._cv:
                self.function_line_ids.append(lid)
                self.line_origin[lid] = (rid, "json" if json_fmt else "text")
            self._emit("function", self._error_line(rid, lid, json_fmt))
        t_rd = time.perf_counter()
        runtime_dur = (t_rd - t0) * 1000.0
        produced = 17
        rd_record = {"requestId": rid, "status": "success"}
        if failed:
            rd_record.update(status="error", errorType=HANDLER_ERROR_TYPE)
        rd_record.update({
            "tracing": tracing,
            "spans": [
                {"name": "responseLatency", "start": _iso_at(epoch0), "durationMs": round(runtime_dur * 0.9, 3)},
                {"name": "responseDuration", "start": _iso_at(epoch0 + runtime_dur * 0.9 / 1000.0),
                 "durationMs": round(runtime_dur * 0.1, 3)},
            ],
            "metrics": {"durationMs": round(runtime_dur, 3), "producedBytes": produced},
        })
        runtime_done = lambda: self._emit("platform.runtimeDone", rd_record)  # noqa: E731
        if runtime_done_delay_ms == 0:
            runtime_done()
        elif runtime_done_delay_ms is not None:
            timer = threading.Timer(runtime_done_delay_ms / 1000.0, runtime_done)
            timer.daemon = True
            timer.start()

        timed_out = False
        post = None
        t_end = t_rd
        if wants_invoke:
            ok = self._wait(lambda: self._next_calls >= target and self._next_waiting,
                            max(0.0, deadline_pc - time.perf_counter()),
                            f"the extension's event/next after INVOKE {rid}", raise_on_timeout=False)
            if ok:
                with self._cv:
                    t_end = self._next_arrival
                post = max(0.0, (t_end - t_rd) * 1000.0)
                self.post_runtime_ms.append(post)
            else:
                timed_out = True
                t_end = time.perf_counter()
                self.invoke_timeouts += 1
                self._violation(f"invoke {rid}: extension did not call event/next before deadlineMs "
                                f"({self.timeout_ms} ms)")
        duration = (max(t_end, t_rd) - t0) * 1000.0
        rss = self._read_vmhwm_kb()
        if rss is not None:
            self.peak_rss_kb.append(rss)
        metrics = {
            "durationMs": round(duration, 3),
            "billedDurationMs": int(math.ceil(duration)),
            "memorySizeMB": self.memory_mb,
            "maxMemoryUsedMB": int(math.ceil((rss or 0) / 1024.0)) + 40,  # + nominal runtime footprint
        }
        if self._cold and self._init_duration_ms is not None:
            metrics["initDurationMs"] = round(self._init_duration_ms, 3)
        self._cold = False
        report = {"requestId": rid, "status": "timeout" if timed_out else "error" if failed else "success",
                  "metrics": metrics, "tracing": tracing}
        if timed_out:
            report["errorType"] = "Sandbox.Timedout"
        elif failed:
            report["errorType"] = HANDLER_ERROR_TYPE
        with self._cv:
            if self.freeze and not timed_out:
                self._hold = True  # the report waits for the thaw, like Lambda
            self._emit("platform.report", report)
        res = InvokeResult(request_id=rid, post_runtime_ms=post, timed_out=timed_out,
                           runtime_ms=runtime_dur, duration_ms=duration, failed=failed)
        self.invoke_results.append(res)
        if timed_out:
            # Lambda would reset the sandbox; the caller should shutdown(reason="timeout").
            self._phase = "ready"
            self._thaw()
        else:
            if self.freeze:
                self._freeze_now()
            self._phase = "ready"
        if idle_ms:
            time.sleep(idle_ms / 1000.0)
        return res

    # ------------------------------------------- Lambda Managed Instances
    def invoke_concurrent(self, n: int, log_lines: int = 10, *, concurrency: Optional[int] = None,
                          runtime_ms: float = 0,
                          line_kinds: tuple = LMI_LINE_KINDS,
                          line_factory: Optional[Callable[[int, str, str], Any]] = None,
                          fail: Optional[Callable[[int, str], bool]] = None) -> list[InvokeResult]:
        """LMI: n invocations, at most `concurrency` (default n) at once, their events
        interleaved at random (seed=): platform.start, log_lines function lines,
        [platform.runtimeDone,] platform.report each, in that order per invocation.
        line_kinds cycles per line: "json" is the runtime logger's
        {"timestamp","level","message","requestId"}, "text" a plain stdout line
        (wrapped without requestId, see lmi_plain_lines). line_factory(i, line_id,
        request_id) -> record (str or dict, must contain line_id) replaces them.
        runtime_ms: an invocation lasts about that long (events paced to fit); 0: as
        fast as the simulator produces. Returns the results in start order. No event
        reaches the extension through the Extensions API (no INVOKE on LMI).
        fail(index, request_id) -> bool says whether an invocation ends in error (index:
        0.. in the order this call's invocations start); None: error_fraction decides.
        A failed one logs one more JSON line last (level ERROR, with its request id)
        and its report (and runtimeDone, lmi_runtime_done) carries status "error"
        and errorType."""
        if n < 1:
            raise ValueError("n must be >= 1")
        conc = max(1, min(n, concurrency or n))
        per_inv = log_lines + 2 + (1 if self.lmi_runtime_done else 0) + self.error_fraction
        rate = conc * per_inv / (runtime_ms / 1000.0) if runtime_ms > 0 else None
        left = [n]
        choose = self._fail_chooser(fail)

        def new_invocation():
            if left[0] == 0:
                return None
            left[0] -= 1
            return self._lmi_invocation(log_lines, line_kinds, line_factory, choose)

        results, _, _, _ = self._lmi_drive(new_invocation, conc, rate)
        order = {rid: i for i, rid in enumerate(self.request_ids)}
        return sorted(results, key=lambda r: order[r.request_id])

    def run_traffic(self, events_per_second: float, seconds: float, *, concurrency: int = 16,
                    log_lines: int = 20, line_kinds: tuple = LMI_LINE_KINDS,
                    line_factory: Optional[Callable[[int, str, str], Any]] = None,
                    fail: Optional[Callable[[int, str], bool]] = None) -> TrafficResult:
        """LMI: steady traffic for `seconds`: `concurrency` invocations in flight (each
        as in invoke_concurrent, log_lines lines), a new one starting as one ends,
        every platform and function event paced to `events_per_second` in all.
        Invocations still running at the end finish at the same pace. The result
        says what rate was actually sustained (a slow producer would fake a pass).
        fail: as in invoke_concurrent (None: error_fraction decides)."""
        if events_per_second <= 0 or seconds <= 0:
            raise ValueError("events_per_second and seconds must be > 0")
        t_stop = [None]
        choose = self._fail_chooser(fail)

        def new_invocation():
            if t_stop[0] is None:
                t_stop[0] = time.perf_counter() + seconds
            elif time.perf_counter() >= t_stop[0]:
                return None
            return self._lmi_invocation(log_lines, line_kinds, line_factory, choose)

        results, events, elapsed, lag = self._lmi_drive(new_invocation, max(1, concurrency), events_per_second)
        res = TrafficResult(invocations=len(results), events=events, seconds=elapsed,
                            rate=events / elapsed if elapsed > 0 else float("inf"),
                            target_rate=float(events_per_second), max_lag_ms=lag * 1000.0)
        self.traffic_results.append(res)
        return res

    def _lmi_drive(self, new_invocation: Callable[[], Any], concurrency: int,
                   rate: Optional[float]) -> tuple[list[InvokeResult], int, float, float]:
        """Run invocation generators (one event per step) with up to `concurrency` in
        flight, a random one stepping each time; paced to `rate` events/s if given.
        Returns (results, events, seconds, max lag in s)."""
        if not self.managed_instances:
            raise SimError("concurrent invocations exist only on Lambda Managed Instances (managed_instances=True)")
        if self._phase != "ready":
            raise SimError(f"concurrent invocations in phase {self._phase!r}")
        self._phase = "invoke"
        rng = self._rng
        active: list = []
        results: list[InvokeResult] = []
        events = 0
        max_lag = 0.0
        exhausted = False
        workers = self.max_concurrency
        fill_due = True  # with workers: callers refused come back when an invocation ends
        t0 = time.perf_counter()
        t_last = t0
        try:
            while True:
                arrivals = (concurrency - len(active)
                            if not exhausted and (workers is None or fill_due) else 0)
                fill_due = False
                for _ in range(arrivals):  # callers not waiting on an invocation invoke
                    g = new_invocation()
                    if g is None:
                        exhausted = True
                        break
                    if workers is not None and len(active) >= workers:
                        # emulator (LMI) invoke/invoke_router.go: no idle runtime, refused
                        # at once with 400 Runtime.Unavailable; nothing reaches telemetry
                        g.close()
                        with self._cv:
                            self.unavailable.append(self._new_id())
                    else:
                        active.append(g)
                if not active:
                    break
                if self._exited:
                    with self._cv:
                        self._cv.notify_all()
                    raise ExtensionExited(
                        f"extension exited (code {self.exit_code}) during concurrent invocations: "
                        f"{(self.crash or {}).get('errorType', 'exit')}, "
                        f"{len(active)} invocations in flight" + self._tail())
                k = rng.randrange(len(active))
                try:
                    next(active[k])
                except StopIteration as done:
                    results.append(done.value)
                    active[k] = active[-1]
                    active.pop()
                    fill_due = True
                events += 1
                t_last = time.perf_counter()
                if rate:
                    ahead = t0 + events / rate - t_last
                    if ahead > 0.002:
                        time.sleep(ahead)
                    elif -ahead > max_lag:
                        max_lag = -ahead
        finally:
            for g in active:
                g.close()
            self._end_partial()
            self._phase = "ready"
        return results, events, t_last - t0, max_lag

    def _tracing_and_arn(self) -> tuple[dict, str]:
        """A fresh X-Ray tracing header, and the function's ARN (qualified unless $LATEST)."""
        trace_value = (f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};"
                       f"Parent={secrets.token_hex(8)};Sampled=1")
        tracing = {"spanId": secrets.token_hex(8), "type": "X-Amzn-Trace-Id", "value": trace_value}
        arn = f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"
        if self.function_version != "$LATEST":
            arn += f":{self.function_version}"
        return tracing, arn

    def _lmi_invocation(self, log_lines: int, line_kinds: tuple, line_factory,
                        choose: Optional[Callable[[str], Optional[bool]]] = None):
        """Generator: one LMI invocation, one event emitted per step; returns its InvokeResult.
        choose(request_id) -> True/False/None (None: error_fraction) decides its failure."""
        rid = self._new_id()
        tracing, arn = self._tracing_and_arn()
        with self._cv:
            self.request_ids.append(rid)
            self._in_flight.add(rid)
        failed = self._choose_failure(rid, choose(rid) if choose is not None else None)
        t0 = time.perf_counter()
        epoch0 = time.time()
        try:
            # emulator (LMI) interop/events_api.go InvokeStartData
            self._emit("platform.start", {"requestId": rid, "version": self.function_version,
                                          "functionArn": arn, "tracing": tracing})
            yield
            wrapped = self.lmi_plain_lines == "wrapped"
            for i in range(log_lines):
                lid = self._new_id()
                kind = line_kinds[i % len(line_kinds)]
                if line_factory is not None:
                    rec = line_factory(i, lid, rid)
                else:
                    text = _TEXT_TEMPLATES[i % len(_TEXT_TEMPLATES)](i, lid)
                    if kind == "json":
                        rec = {"timestamp": self._iso_now(), "level": "INFO", "message": text,
                               self.lmi_request_id_key: rid}
                        if self.lmi_json_lines == "string":  # the logger's line, as text
                            rec = json.dumps(rec, ensure_ascii=False)
                    elif wrapped:
                        rec = {"timestamp": self._iso_now(), "level": "INFO", "message": text}
                    else:
                        rec = text
                with self._cv:
                    self.function_line_ids.append(lid)
                    self.line_origin[lid] = (rid, kind)
                # every 5th line serialised ASCII-only, as in invoke()
                self._emit_line(rid, rec, ascii_escape=(i % 5 == 4))
                yield
            if failed:  # the exception's line, the function's last (the runtime's JSON logger)
                lid = self._new_id()
                with self._cv:
                    self.function_line_ids.append(lid)
                    self.line_origin[lid] = (rid, "json")
                rec = self._error_line(rid, lid, True, self.lmi_request_id_key)
                if self.lmi_json_lines == "string":
                    rec = json.dumps(rec, ensure_ascii=False)
                self._emit_line(rid, rec)
                yield
            self._end_partial(rid)  # its newline is written before the invocation ends
            dur = (time.perf_counter() - t0) * 1000.0
            spans = [
                {"name": "responseLatency", "start": _iso_at(epoch0), "durationMs": round(dur * 0.9, 3)},
                {"name": "responseDuration", "start": _iso_at(epoch0 + dur * 0.9 / 1000.0),
                 "durationMs": round(dur * 0.1, 3)},
            ]
            outcome = ({"status": "error", "errorType": HANDLER_ERROR_TYPE} if failed
                       else {"status": "success"})
            if self.lmi_runtime_done:
                self._emit("platform.runtimeDone", {"requestId": rid, **outcome, "tracing": tracing,
                                                    "spans": spans,
                                                    "metrics": {"durationMs": round(dur, 3), "producedBytes": 17}})
                yield
            # emulator (LMI) interop/events_api.go ReportData: metrics carry durationMs only
            self._emit("platform.report", {"requestId": rid, **outcome,
                                           "metrics": {"durationMs": round(dur, 3)},
                                           "tracing": tracing, "spans": spans})
        finally:
            with self._cv:
                self._in_flight.discard(rid)
        res = InvokeResult(request_id=rid, post_runtime_ms=None, timed_out=False, runtime_ms=dur, duration_ms=dur,
                           failed=failed)
        self.invoke_results.append(res)
        return res

    def _emit_line(self, rid: str, rec: Any, ascii_escape: bool = False) -> None:
        """A function line of invocation `rid` (LMI), merged with another worker's line
        when merged_lines says its newline comes in a second write (see the option)."""
        if not self.merged_lines or not isinstance(rec, str):
            self._emit("function", rec, ascii_escape=ascii_escape)
            return
        if self._partial is not None:
            owner, text = self._partial
            self._partial = None
            if owner != rid:  # another worker's line lands between the text and its newline
                merged = text + rec
                self._emit("function", merged)
                self._emit("function", "")
                with self._cv:
                    self.merged_records.append(merged)
                    self.empty_records += 1
                return
            self._emit("function", text)  # one worker writes one line at a time
        if self._merge_rng.random() < self.merged_lines:
            self._partial = (rid, rec)
        else:
            self._emit("function", rec, ascii_escape=ascii_escape)

    def _end_partial(self, rid: Optional[str] = None) -> None:
        """The line `rid` (None: any) left without its newline gets it: alone on its record."""
        if self._partial is not None and (rid is None or self._partial[0] == rid):
            _, text = self._partial
            self._partial = None
            self._emit("function", text)

    def resources(self) -> Optional[Resources]:
        """RSS, open files, threads and CPU time of the extension process, from /proc
        (None once it has exited). Reading does not disturb it, frozen or not."""
        if self._proc is None or self._exited:
            return None
        base = f"/proc/{self._proc.pid}"
        try:
            t = time.perf_counter()
            rss = 0
            with open(f"{base}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                        break
            with open(f"{base}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
            fds = len(os.listdir(f"{base}/fd"))
            tasks = os.listdir(f"{base}/task")
            cpu_ns: Optional[int] = 0
            for tid in tasks:
                try:
                    with open(f"{base}/task/{tid}/schedstat") as f:
                        cpu_ns += int(f.read().split()[0])
                except FileNotFoundError:  # a thread that just ended
                    continue
                except (OSError, ValueError, IndexError):
                    cpu_ns = None
                    break
            return Resources(t=t, rss_kb=rss, fds=fds, threads=len(tasks), cpu_ticks=ticks, cpu_ns=cpu_ns)
        except (OSError, ValueError, IndexError):
            return None

    def sample_resources(self, period_s: float = 0.1) -> Callable[[], list[Resources]]:
        """Read resources() every period_s into sim.resource_samples, from a thread of its
        own, until the extension exits or the returned stop() is called (stop returns
        the samples)."""
        stop = threading.Event()

        def loop():
            while not stop.is_set() and not self._stop:
                r = self.resources()
                if r is None:
                    if self._exited:
                        return
                else:
                    with self._cv:
                        self.resource_samples.append(r)
                stop.wait(period_s)
        t = threading.Thread(target=loop, name="lambdasim-resources", daemon=True)
        t.start()
        self._threads.append(t)

        def stopper() -> list[Resources]:
            stop.set()
            t.join(timeout=2.0)
            with self._cv:
                return list(self.resource_samples)
        return stopper

    def shutdown(self, reason: str = "spindown") -> ShutdownResult:
        """Shutdown phase: the runtime's exit (runtime_shutdown_ms), [a flush of
        Lambda's telemetry buffers,] SHUTDOWN event, deadline, SIGKILL after it.
        LMI: reason "spindown" or "failure"; after an Extension.Crash (sim.crash)
        the environment is gone already and nothing more happens."""
        if self._phase in ("new", "done"):
            raise SimError(f"shutdown() in phase {self._phase!r}")
        if self.managed_instances and reason not in LMI_SHUTDOWN_REASONS:
            raise ValueError(f"Lambda Managed Instances shut down for {list(LMI_SHUTDOWN_REASONS)}, not {reason!r}")
        self._phase = "shutdown"
        with self._cv:
            self._expected_exit = True
        self._thaw()
        t_start = time.perf_counter()
        deadline = t_start + self.shutdown_deadline_ms / 1000.0
        epoch_deadline_ms = int(time.time() * 1000) + self.shutdown_deadline_ms
        t_answer = None
        if self.runtime_shutdown_ms > 0 and not self._exited:
            # the runtime gets SIGTERM first; its exit takes this much of the deadline
            time.sleep(max(0.0, min(self.runtime_shutdown_ms / 1000.0, deadline - time.perf_counter())))
        if self.flush_before_shutdown and not self._exited:
            self._flush_buffers(min(1.0, max(0.0, deadline - time.perf_counter())))
        if "SHUTDOWN" in self.registered_events and not self._exited:
            got = self._wait(lambda: self._next_waiting, max(0.0, deadline - time.perf_counter()),
                             "the extension to wait in event/next before SHUTDOWN",
                             raise_on_timeout=False, raise_on_exit=False)
            if got:
                with self._cv:
                    self._shutdown_mark = len(self.emitted)
                if self.managed_instances:  # emulator (LMI) rapi/model/agentevent.go field order
                    event = {"eventType": "SHUTDOWN", "deadlineMs": epoch_deadline_ms, "shutdownReason": reason}
                else:
                    event = {"eventType": "SHUTDOWN", "shutdownReason": reason, "deadlineMs": epoch_deadline_ms}
                # Marked sent before it is handed over: an extension may exit
                # the instant it reads SHUTDOWN, which is no crash.
                with self._cv:
                    self._shutdown_sent = True
                self._give_next_event(event)
                t_answer = time.perf_counter()
                self._wait(lambda: self._exited, max(0.0, deadline - time.perf_counter()),
                           "the extension to exit after SHUTDOWN", raise_on_timeout=False,
                           raise_on_exit=False)
        killed = False
        if not self._exited:
            with self._cv:
                self._sim_killed = True
            if "SHUTDOWN" in self.registered_events:
                self._violation(f"extension did not exit within the shutdown deadline "
                                f"({self.shutdown_deadline_ms} ms): SIGKILL")
            killed = True
            self._signal_group(signal.SIGCONT)
            self._signal_group(signal.SIGKILL)
            self._wait(lambda: self._exited, 10.0, "the extension to die after SIGKILL",
                       raise_on_exit=False)
        with self._cv:
            # a POST answered just before the exit: let its bookkeeping finish
            self._cv.wait_for(lambda: not self._delivering, timeout=0.5)
            rc = self.exit_code
            exit_time = self._exit_time
            if not killed and rc not in (0, None) and not self.exit_errors and self.crash is None:
                self.violations.append(f"extension exited with code {rc} after SHUTDOWN")
        shutdown_ms = (exit_time - t_answer) * 1000.0 if (t_answer is not None and exit_time) else None
        self._phase = "done"
        self.shutdown_result = ShutdownResult(exit_code=rc, killed=killed, shutdown_ms=shutdown_ms)
        return self.shutdown_result

    def close(self) -> None:
        """Kill the extension (SIGCONT first), stop the servers and threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._proc is not None and not self._exited:
            with self._cv:
                self._expected_exit = True
                self._sim_killed = True
            self._signal_group(signal.SIGCONT)
            self._frozen = False
            self._signal_group(signal.SIGKILL)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        for t in self._threads:
            t.join(timeout=2.0)
        if self._proc is not None:
            for p in (self._proc.stdout, self._proc.stderr):
                try:
                    p.close()
                except Exception:
                    pass
        if self._finalizer is not None and self._proc_state.get("reaped"):
            self._finalizer.detach()

    # --------------------------------------------------------------- summary
    def summary(self) -> dict:
        def r(x):
            return None if x is None else round(x, 3)
        sd = self.shutdown_result
        with self._cv:
            return {
                "extension": self.extension_path,
                "initialization_type": self.initialization_type,
                "register_ms": r(self.register_ms),
                "init_ms": r(self.init_ms),
                "post_runtime_ms": [r(x) for x in self.post_runtime_ms],
                "invokes": len(self.request_ids),
                "invoke_timeouts": self.invoke_timeouts,
                "failed_invocations": len(self.failed_request_ids),
                "exit_code": sd.exit_code if sd else self.exit_code,
                "killed": sd.killed if sd else None,
                "shutdown_ms": r(sd.shutdown_ms) if sd else None,
                "subscription": self.subscription,
                "events_produced": len(self.produced),
                "events_emitted": len(self.emitted),
                "events_delivered": len(self.delivered),
                "events_dropped": len(self.dropped),
                "events_undelivered": len(self.undelivered),
                "function_lines": len(self.function_line_ids),
                "telemetry_posts": self.telemetry_posts,
                "telemetry_post_failures": self.telemetry_post_failures,
                "peak_rss_kb": max(self.peak_rss_kb) if self.peak_rss_kb else None,
                "init_errors": self.init_errors,
                "exit_errors": self.exit_errors,
                "violations": list(self.violations),
                "crash": self.crash,
            }


def _main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Run an external Lambda extension under a local Lambda simulator.")
    ap.add_argument("--extension", required=True, help="path of the extension executable")
    ap.add_argument("--invokes", type=int, default=3)
    ap.add_argument("--lines", type=int, default=10, help="function log lines per invoke")
    ap.add_argument("--env", action="append", default=[], metavar="K=V")
    ap.add_argument("--runtime-ms", type=float, default=0)
    ap.add_argument("--idle-ms", type=float, default=0)
    ap.add_argument("--timeout-ms", type=int, default=3000)
    ap.add_argument("--shutdown-deadline-ms", type=int, default=2000)
    ap.add_argument("--init-timeout-ms", type=int, default=10000)
    ap.add_argument("--telemetry-mode", choices=("ok", "202", "404"), default="ok")
    ap.add_argument("--log-format", choices=("text", "json"), default="text")
    ap.add_argument("--no-freeze", action="store_true")
    ap.add_argument("--managed-instances", action="store_true",
                    help="Lambda Managed Instances: --invokes run concurrently, --concurrency at once")
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--error-fraction", type=float, default=0.0,
                    help="fraction of invocations that end in error (which ones: --seed)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--inherit-env", action="store_true")
    ap.add_argument("--echo", action="store_true", help="echo the extension's output to stderr")
    a = ap.parse_args(argv)
    env = {}
    for kv in a.env:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--env expects K=V, got {kv!r}")
        env[k] = v
    rc = 0
    lmi = a.managed_instances
    with LambdaSim(a.extension, env, timeout_ms=a.timeout_ms, telemetry_mode=a.telemetry_mode,
                   freeze=None if lmi else not a.no_freeze, log_format="json" if lmi else a.log_format,
                   managed_instances=lmi,
                   shutdown_deadline_ms=a.shutdown_deadline_ms, init_timeout_ms=a.init_timeout_ms,
                   inherit_env=a.inherit_env, echo_output=a.echo,
                   error_fraction=a.error_fraction, seed=a.seed) as sim:
        error = None
        try:
            sim.start()
            if lmi:
                sim.invoke_concurrent(a.invokes, a.lines, concurrency=a.concurrency, runtime_ms=a.runtime_ms)
            else:
                for _ in range(a.invokes):
                    sim.invoke(a.lines, runtime_ms=a.runtime_ms, idle_ms=a.idle_ms)
            sim.shutdown()
        except SimError as e:
            error = str(e)
            rc = 2
        out = sim.summary()
        out["error"] = error
        if out["violations"] and rc == 0:
            rc = 1
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return rc


if __name__ == "__main__":
    sys.exit(_main())
