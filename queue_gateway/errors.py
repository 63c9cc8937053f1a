"""Errors the gateway answers with, always in OpenAI's error JSON.

    GatewayError                      any refusal; carries status, OpenAI type/code, headers
    ├── BadRequest             400    bad JSON, missing or ill-typed fields
    ├── Unauthorized           401    missing, unknown or revoked API key
    ├── NotFound               404    unknown model (or a private model of another tenant), unknown route/id
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
"""

from __future__ import annotations

import math

import orjson


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


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


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
