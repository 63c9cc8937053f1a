"""Errors the gateway answers with, on `/v1` and `/admin` alike, always in OpenAI's error JSON.

    GatewayError                      any refusal; carries status, OpenAI type/code, headers
    ├── BadRequest             400    bad JSON, missing or ill-typed fields, an invalid spec
    ├── Unauthorized           401    missing, unknown or revoked API key or token
    ├── Forbidden              403    the credential may not do this (admin API), a quota
    ├── NotFound               404    unknown model (or a private model of another tenant), unknown route/id
    ├── MethodNotAllowed       405    a known path, another method
    ├── Conflict               409    a name in use (admin API)
    ├── RequestTimeout         408    the request's body did not arrive in time
    ├── PayloadTooLarge        413    the request's body is larger than the gateway accepts
    ├── RateLimited            429    per-key requests per minute or concurrent requests exceeded
    ├── QueueFull              429    the model's queue is full while it is warm
    ├── Unavailable            503    cold budget exceeded, queue full while cold, all queues full
    ├── UpstreamFailed         502    the engine failed before the first byte reached the client
    │   └── ResultTooLarge     502    an async answer is larger than a stored result may be
    ├── UpstreamTimeout        504    the engine did not answer in time
    └── EngineRejected         4xx    the engine refused the request itself (its error, normalised)

`ClientGone` is not an error: the client went away, which is a normal outcome with its own name.

The state packages raise their own typed errors (`warmpool.errors`); `from_state_error` maps them
here, at the HTTP boundary, and `json_response` / `error_response` are the one encoder of both APIs.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.responses import Response

from warmpool.errors import AlreadyExists, Missing, NotPermitted, RegistryError


class ClientGone(Exception):
    """The client disconnected; nothing can be sent any more."""


class GatewayError(Exception):
    """A refusal sent to the client as `{"error": {...}}` with `status`."""

    status = 500
    type = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.retry_after_s = retry_after_s

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", b"application/json")]
        if self.retry_after_s is not None:
            headers.append((b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode()))
        return headers


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"www-authenticate", b"Bearer")]


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(GatewayError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QueueFull(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class Unavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "model_unavailable"


class UpstreamFailed(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_failed"


class ResultTooLarge(UpstreamFailed):
    code = "result_too_large"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class EngineRejected(GatewayError):
    """A 4xx from the engine (e.g. context too long): its status, its message in OpenAI's shape."""

    type = "invalid_request_error"

    def __init__(self, status: int, raw: bytes) -> None:
        message, type_, code, param = _engine_error(raw)
        super().__init__(message, code=code, param=param)
        self.status = status
        if type_:
            self.type = type_


def _engine_error(raw: bytes) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, code, param) from vLLM's error body, whichever of its shapes it has."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")[:2000] or "The engine refused the request.", None, None, None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    if not isinstance(data, dict):
        return str(data)[:2000], None, None, None

    def opt(name: str) -> str | None:
        value = data.get(name)
        return None if value is None else str(value)

    return str(data.get("message") or "The engine refused the request."), opt("type"), opt("code"), opt("param")


def error_body(message: str, type_: str, code: str | int | None = None, param: str | None = None) -> bytes:
    """OpenAI's error JSON."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


_STATE_ERRORS: tuple[tuple[type[RegistryError], type[GatewayError]], ...] = (
    (Missing, NotFound),
    (NotPermitted, Forbidden),
    (AlreadyExists, Conflict),
    (RegistryError, BadRequest),
)
"""The state packages' error types and the answer each gets; the first matching row wins."""


def from_state_error(exc: RegistryError) -> GatewayError:
    """The HTTP refusal of a state-package error: its message, code and param, the status of its type."""
    for state_type, http_type in _STATE_ERRORS:
        if isinstance(exc, state_type):
            return http_type(str(exc), code=exc.code, param=exc.param)
    raise AssertionError("unreachable: RegistryError is the last row")  # pragma: no cover


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer: the one encoder of `/v1` and `/admin`."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def error_response(exc: GatewayError) -> Response:
    """A refusal as a Starlette response, with the error's own headers (Retry-After, WWW-Authenticate)."""
    headers = {k.decode(): v.decode() for k, v in exc.headers() if k != b"content-type"}
    return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=headers)
