"""The HTTP intake: an ASGI app that validates leads and enqueues them in milliseconds.

For producer apps that are not Python (a PHP web form, a Node.js CRM hook): the
routes of DESIGN.md's "HTTP intake" section on top of the same producer functions
the Python API uses (:func:`~dispatcher.ops.producer.prepare_job`,
:func:`~dispatcher.ops.producer.push_jobs`, :func:`~dispatcher.ops.producer.job_status`), so
a lead is validated and stored exactly as ``enqueue_lead`` would. The app never
talks to VICIdial; it answers as soon as Redis has the job.

Plain Starlette with a hand-written OpenAPI document (:mod:`.openapi`): the error
bodies are the dispatcher's own, and there is no model layer to keep in step with
:mod:`dispatcher.model.lead`.

What protects it, in :class:`_Guard` (pure ASGI, in front of routing):

* every path but ``/healthz``, ``/metrics``, ``/openapi.json`` and the operator
  console under ``/ui`` (whose own gate, :mod:`dispatcher.intake.console.gate`, lets
  nothing through without a login session) -- so every ``/v1`` route, and any route
  added later -- needs ``Authorization: Bearer TOKEN`` with one of
  ``DISPATCHER_INTAKE_TOKENS`` (several, for rotation). The token is compared
  with :func:`hmac.compare_digest` against *every* configured token, and the 401
  is byte-for-byte the same for a missing, malformed or wrong token, so neither
  timing nor the answer tells a caller how close it came;
* a body over :data:`~dispatcher.intake.openapi.MAX_BODY_BYTES` gets 413: at once
  from ``Content-Length``, or as soon as a chunked body passes the limit (the
  handler never holds more than the limit in memory);
* one access-log event per request (``intake.request``: method, path, status,
  duration) through the project's structlog set-up. Never headers, never bodies,
  never the query string: the token, and the phone numbers in a lead, stay out.

The producer functions do blocking Redis I/O, so handlers run them in worker
threads (``anyio.to_thread``); the event loop only parses and answers.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.config import logs
from dispatcher.config.settings import Settings
from dispatcher.intake.console import console_app
from dispatcher.intake.metrics import CONTENT_TYPE, read_snapshot, render_metrics
from dispatcher.intake.openapi import MAX_BATCH, MAX_BODY_BYTES, openapi_document
from dispatcher.model.errors import (
    BrokerOutOfMemory,
    BrokerReadOnly,
    BrokerUnavailable,
    BrokerWriteRefused,
    ConfigError,
    EnqueueUnconfirmed,
    FieldError,
    IdempotencyConflict,
    InvalidLead,
)
from dispatcher.model.jobs import Job
from dispatcher.ops.producer import MAX_FIELDS, job_status, prepare_job, push_jobs, push_results
from dispatcher.store.backend import Backend, get_backend
from dispatcher.store.connection import broker_errors

__all__ = ["HEALTH_TIMEOUT_S", "create_app"]

#: /healthz answers 503 if Redis has not answered a PING within this time.
HEALTH_TIMEOUT_S = 2.0
#: Longest job id looked up in Redis (ours are 32 hex digits); longer ones are 404 at once.
_MAX_JOB_ID = 128
_UNAUTHORIZED = {"error": "missing or invalid bearer token"}
_MAX_LOGGED_PATH = 256
# Everything else needs a token, whatever the path: a route added later, or an unknown
# path, is closed by default (401 before any 404).
_PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})
# The operator console authenticates with its own sessions (dispatcher.intake.console):
# nothing under it answers without a login, and bearer tokens are not asked there.
_CONSOLE = "/ui"
_QUIET_PATHS = frozenset({"/healthz", "/metrics"})  # scraped every few seconds: DEBUG
_log = logs.get_logger("dispatcher.intake")


class _Refused(Exception):
    """Raised by a handler to answer with an error body (and no traceback)."""

    def __init__(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers


class _BodyTooLarge(Exception):
    """A streamed (chunked) body passed the size limit while the handler read it."""


def _field_errors(errors: Sequence[FieldError], rename: Mapping[str, str] | None = None) -> Any:
    rename = rename or {}
    return [{"field": rename.get(e.field, e.field), "message": e.message} for e in errors]


def _invalid(field: str, message: str, status: int = 422) -> _Refused:
    return _Refused(status, {"errors": [{"field": field, "message": message}]})


#: What a caller is told about Redis refusing writes (the URL stays in the log).
_REFUSALS: tuple[tuple[type[BrokerUnavailable], str], ...] = (
    (
        EnqueueUnconfirmed,
        "the enqueue reached the queue but its answer was lost: it may have been enqueued; "
        "retry with the same Idempotency-Key",
    ),
    (BrokerOutOfMemory, "the queue's Redis is out of memory and refuses writes; retry later"),
    (BrokerReadOnly, "the queue's Redis is a read-only replica (failover under way?); retry"),
    (BrokerWriteRefused, "the queue's Redis refuses writes (it cannot persist); retry later"),
)


def _unavailable(exc: BaseException | None = None) -> _Refused:
    # The details (the Redis URL, without its password) go to the log, not to callers.
    message = "the queue is unavailable; retry later"
    for kind, text in _REFUSALS:
        if isinstance(exc, kind):
            message = text
            break
    return _Refused(503, {"error": message}, headers={"Retry-After": "5"})


class _Guard:
    """Authentication, the body-size limit and the access log, before any routing."""

    def __init__(self, app: ASGIApp, *, tokens: Sequence[str], max_body: int) -> None:
        self.app = app
        self.tokens = tuple(t.encode() for t in tokens)
        self.max_body = max_body

    def authorized(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        values = [v for k, v in headers if k.lower() == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].strip().partition(b" ")
        given = credentials.strip()
        if scheme.lower() != b"bearer" or not given:
            return False
        # Compare with every token, always: the time taken does not depend on which matched.
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(given, token)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, send_logged)
        finally:
            if logs.is_configured():
                path = str(scope.get("path", ""))
                log = _log.debug if path in _QUIET_PATHS and status < 400 else _log.info
                log(
                    "intake.request",
                    method=scope.get("method"),
                    # A caller may put anything in a path (even a phone number): mask
                    # digit runs (job ids are hex words, left alone) and cap the length.
                    path=logs.mask_digits(path[:_MAX_LOGGED_PATH]),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    client=(scope.get("client") or (None,))[0],
                )

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        path = _route_path(scope)
        console = path == _CONSOLE or path.startswith(_CONSOLE + "/")
        if path not in _PUBLIC_PATHS and not console and not self.authorized(headers):
            await JSONResponse(
                _UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )(scope, receive, send)
            return
        lengths = [v for k, v in headers if k.lower() == b"content-length"]
        if lengths:
            try:
                declared = int(lengths[0])
            except ValueError:
                declared = -1
            if declared < 0 or len(set(lengths)) > 1:
                await JSONResponse({"error": "invalid Content-Length"}, status_code=400)(
                    scope, receive, send
                )
                return
            if declared > self.max_body:
                await self._too_large(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return message

        await self.app(scope, limited_receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(
            {"error": f"request body larger than {self.max_body} bytes"},
            status_code=413,
            headers={"Connection": "close"},
        )(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path as routing sees it (without a mount prefix or --root-path)."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


class _Intake:
    """The route handlers, bound to one Settings and its Redis backend."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend: Backend = get_backend(settings)
        self.dialers = dict(settings.dialers.by_name)

    # -- helpers ------------------------------------------------------------------------

    async def read_json(self, request: Request) -> Any:
        try:
            raw = await request.body()
        except _BodyTooLarge:
            raise _Refused(
                413, {"error": f"request body larger than {MAX_BODY_BYTES} bytes"}
            ) from None
        except ClientDisconnect:
            # Nobody is left to answer; this keeps a traceback out of the log.
            raise _invalid("body", "the client went away before sending it", 400) from None
        if not raw.strip():
            raise _invalid("body", "is empty; send a JSON object", status=400)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _invalid(
                "body", f"is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", 400
            ) from None
        except (ValueError, RecursionError):
            # Not UTF-8, an integer too long to convert, nesting too deep.
            raise _invalid("body", "is not valid JSON", status=400) from None

    async def in_thread(self, func: Any, *args: Any) -> Any:
        """Run blocking Redis work off the event loop; Redis errors become 503."""
        try:
            return await run_in_threadpool(func, *args)
        except BrokerUnavailable as exc:
            _log.error("intake.redis_unavailable", error=str(exc))
            raise _unavailable(exc) from None
        except redis.RedisError as exc:
            # E.g. OOM under maxmemory-policy noeviction: the write was refused.
            _log.error("intake.redis_error", error=f"{type(exc).__name__}: {exc}")
            raise _unavailable() from None

    # -- /v1/leads ----------------------------------------------------------------------

    async def post_lead(self, request: Request) -> Response:
        data = await self.read_json(request)
        if not isinstance(data, dict):
            raise _invalid("body", "must be a JSON object of lead fields")
        rename: dict[str, str] = {}
        keys = request.headers.getlist("idempotency-key")
        if len(keys) > 1:
            raise _invalid("Idempotency-Key", "give the header once")
        if keys:
            body_key = data.get("idempotency_key")
            if body_key is not None and body_key != keys[0]:
                raise _invalid("Idempotency-Key", "differs from idempotency_key in the body")
            data = {**data, "idempotency_key": keys[0]}
            rename["idempotency_key"] = "Idempotency-Key"
        if len(data) > MAX_FIELDS:
            raise _invalid(
                "body", f"too many fields ({len(data)}; a lead has at most {MAX_FIELDS})"
            )
        try:
            # Off the event loop: validation is cheap, but not free for every body.
            job: Job = await run_in_threadpool(prepare_job, data, settings=self.settings)
        except InvalidLead as exc:
            raise _Refused(422, {"errors": _field_errors(exc.errors, rename)}) from None
        try:
            [job_id] = await self.in_thread(self._push, [job])
        except IdempotencyConflict as exc:
            raise _Refused(
                409,
                {
                    "error": f"the Idempotency-Key was used for another lead (job {exc.job_id})",
                    "job_id": exc.job_id,
                },
            ) from None
        created = job_id == job.job_id
        return JSONResponse(
            {"job_id": job_id},
            status_code=202 if created else 200,
            headers={"Location": f"/v1/jobs/{job_id}"},
        )

    def _push(self, jobs: list[Job]) -> list[str]:
        return push_jobs(jobs, settings=self.settings)

    async def post_batch(self, request: Request) -> Response:
        data = await self.read_json(request)
        if not isinstance(data, dict):
            raise _invalid("body", 'must be a JSON object: {"leads": [...]}')
        if request.headers.get("idempotency-key") is not None:
            raise _invalid(
                "Idempotency-Key", "not used by the batch route: give each lead an idempotency_key"
            )
        problems = [
            {"field": k, "message": 'unknown field; the body is {"leads": [...]}'}
            for k in data
            if k != "leads"
        ]
        leads = data.get("leads")
        if not isinstance(leads, list):
            problems.insert(0, {"field": "leads", "message": "required: an array of leads"})
        elif len(leads) > MAX_BATCH:
            problems.insert(
                0, {"field": "leads", "message": f"at most {MAX_BATCH} leads (got {len(leads)})"}
            )
        if problems:
            raise _Refused(422, {"errors": problems})
        assert isinstance(leads, list)
        results = await self.in_thread(self._batch, leads)
        return JSONResponse({"results": results})

    def _batch(self, leads: list[Any]) -> list[dict[str, Any]]:
        """Validate each lead on its own, enqueue the valid ones in one round trip."""
        results: list[dict[str, Any]] = []
        jobs: list[Job] = []
        slots: list[int] = []
        now = time.time()
        for index, item in enumerate(leads):
            if not isinstance(item, dict):
                results.append(
                    {"index": index, "errors": [{"field": "lead", "message": "must be an object"}]}
                )
                continue
            try:
                jobs.append(
                    prepare_job(item, index=index, priority="bulk", settings=self.settings, now=now)
                )
            except InvalidLead as exc:
                results.append({"index": index, "errors": _field_errors(exc.errors)})
                continue
            slots.append(len(results))
            results.append({"index": index})
        if jobs:
            pushed = push_results(jobs, settings=self.settings, strict=False)
            for slot, (kind, job_id) in zip(slots, pushed, strict=True):
                if kind == "conflict":
                    message = f"was used for another lead (job {job_id}); not enqueued"
                    results[slot] = {
                        "index": results[slot]["index"],
                        "errors": [{"field": "idempotency_key", "message": message}],
                    }
                else:
                    results[slot].update(job_id=job_id, created=kind == "new")
        return results

    # -- /v1/jobs/{job_id} ----------------------------------------------------------------

    async def get_job(self, request: Request) -> Response:
        job_id = str(request.path_params["job_id"])
        status = None
        if len(job_id) <= _MAX_JOB_ID and job_id.isprintable():
            status = await self.in_thread(self._status, job_id)
        if status is None:
            raise _Refused(404, {"error": "no such job (unknown id, or its state expired)"})
        return JSONResponse(status)

    def _status(self, job_id: str) -> dict[str, Any] | None:
        return job_status(job_id, settings=self.settings)

    # -- unauthenticated ------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        ok = False
        with anyio.move_on_after(HEALTH_TIMEOUT_S):
            try:
                ok = await anyio.to_thread.run_sync(self._ping, abandon_on_cancel=True)
            except (BrokerUnavailable, redis.RedisError):
                ok = False
        if ok:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    def _ping(self) -> bool:
        with broker_errors(self.settings):
            return bool(self.backend.redis.ping())

    async def metrics(self, request: Request) -> Response:
        try:
            snapshot = await run_in_threadpool(read_snapshot, self.backend)
        except (BrokerUnavailable, redis.RedisError) as exc:
            _log.warning("intake.metrics_unavailable", error=str(exc))
            snapshot = None
        return Response(render_metrics(snapshot, dialers=self.dialers), media_type=CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Refused)
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as JSON, like every other answer."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(settings: Settings, *, intake: bool = True) -> Starlette:
    """The intake ASGI app for ``settings``, with the operator console at ``/ui/``.

    Raises ConfigError when ``intake`` is wanted and ``settings.intake_tokens`` is
    empty: an intake that anyone can write to is never what an operator meant.
    ``intake=False`` (``dispatcher serve --no-intake``) serves the console,
    ``/healthz`` and ``/metrics`` only, and needs no token. Logging is the
    caller's to configure (``dispatcher serve`` does, with the tokens among the
    secrets).
    """
    if intake and not settings.intake_tokens:
        raise ConfigError(
            "DISPATCHER_INTAKE_TOKENS is empty: set one or more bearer tokens "
            "(comma-separated) before starting the HTTP intake"
        )
    handlers = _Intake(settings)
    routes = [
        Route("/healthz", handlers.healthz, methods=["GET"]),
        Route("/metrics", handlers.metrics, methods=["GET"]),
        Mount(_CONSOLE, app=console_app(settings, handlers.backend)),
    ]
    if intake:
        routes += [
            Route("/v1/leads", handlers.post_lead, methods=["POST"]),
            Route("/v1/leads:batch", handlers.post_batch, methods=["POST"]),
            Route("/v1/jobs/{job_id}", handlers.get_job, methods=["GET"]),
            Route("/openapi.json", handlers.openapi, methods=["GET"]),
        ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Guard, tokens=settings.intake_tokens, max_body=MAX_BODY_BYTES)],
        exception_handlers={_Refused: _refused, HTTPException: _http_error},
    )
    app.state.settings = settings
    return app
