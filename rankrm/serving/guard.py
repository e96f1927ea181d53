"""The edges of every request to `rankrm serve`: the server's options, the API key and body-size guard (ASGI
middleware, with the request metrics), and every error answered as JSON naming the field and the fix: bad input 4xx,
a bug 500 with an id that the log holds with its traceback."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from rankrm.serving.engine import Metrics
from rankrm.serving.schema import FIXES, error_body, validation_message

log = logging.getLogger("rankrm.serve")


@dataclass
class ServeOptions:
    """The server's limits and batching; the CLI flags of `rankrm serve`."""

    api_key: str | None = None  # required on every endpoint but /health when set
    max_batch_tokens: int = 4096  # tokens the model reads per coalesced batch
    max_wait_ms: float = 0.0  # how long the first request of a batch waits for others
    max_queue: int = 256  # requests waiting for the model; more are answered 503
    max_batch_requests: int = 64  # requests merged into one model call (1: no coalescing)
    max_items: int = 4096  # sequences per request; more are answered 413
    max_body_bytes: int = 16 * 2**20  # request body size; more is answered 413
    problem_type: str | None = None  # config.json's: "regression" makes /classify's default the raw reward


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, field: str | None = None, fix: str | None = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.field, self.fix, self.headers = status, message, field, fix, headers
        self.error_id: str | None = None


def _error(status, message, field=None, fix=None, headers=None, error_id=None) -> JSONResponse:
    body = error_body(status, message, field, fix)
    if error_id:
        body["error"]["id"] = error_id
    return JSONResponse(body, status_code=status, headers=headers)


def internal_error(exc: BaseException, what: str) -> ApiError:
    """A bug met while `what`: logged with its traceback under a fresh id, answered 500 with that id."""
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s while %s: %s: %s", error_id, what, type(exc).__name__, exc, exc_info=exc)
    err = ApiError(
        500,
        f"internal error {error_id} while {what} ({type(exc).__name__}); the server log holds its traceback",
        None,
        "report it with the error id",
    )
    err.error_id = error_id
    return err


class Guard:
    """ASGI middleware around every request: the API key, the body size limit, and the request metrics."""

    def __init__(self, app, opts: ServeOptions, metrics: Metrics, routes: set[str]):
        self.app, self.opts, self.metrics, self.routes = app, opts, metrics, routes
        self.key = opts.api_key.encode() if opts.api_key else None

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return hmac.compare_digest(given, self.key)  # constant time

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        path = scope["path"]
        counted = path != "/metrics"  # a scrape does not count itself
        if counted:
            self.metrics.in_progress.inc()

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = dict(scope.get("headers") or [])
            if self.key is not None and path != "/health" and not self._authorized(headers):
                return await _error(
                    401,
                    "missing or wrong API key",
                    "Authorization",
                    "send the header 'Authorization: Bearer <key>' (or 'X-API-Key: <key>') with "
                    "the key the server was started with",
                    {"WWW-Authenticate": "Bearer"},
                )(scope, receive, send_status)
            limit = self.opts.max_body_bytes
            declared = headers.get(b"content-length", b"0")
            if not declared.isdigit() or int(declared) > limit:
                return await _error(
                    413, f"request body larger than {limit} bytes (--max-body-bytes)", "body", "split the request"
                )(scope, receive, send_status)
            received = [0]

            async def limited_receive():  # a chunked body has no content-length: count what arrives
                message = await receive()
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise HTTPException(413, f"request body larger than {limit} bytes (--max-body-bytes)")
                return message

            await self.app(scope, limited_receive, send_status)
        finally:
            if counted:
                self.metrics.in_progress.dec()
            endpoint = path if path in self.routes else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON naming the field and the fix; never a traceback."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            return _error(
                400,
                f"the body is not valid JSON: {errors[0].get('ctx', {}).get('error', '')}",
                "body",
                "send a JSON object with Content-Type: application/json",
            )
        field, message = validation_message(errors) if errors else ("body", "invalid body")
        return _error(422, message, field, FIXES.get(request.url.path))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.field, exc.fix, exc.headers, exc.error_id)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        fix = {
            404: "see GET /info or /docs for the endpoints",
            405: "see /docs for each endpoint's method",
            413: "split the request",
        }.get(exc.status_code)
        return _error(exc.status_code, str(exc.detail), None, fix, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):  # a bug outside render and run (Starlette then re-raises it)
        e = internal_error(exc, f"answering {request.url.path}")
        return _error(e.status, e.message, e.field, e.fix, None, e.error_id)
