"""Request limits enforced by the HTTP protocol itself, before any app code runs for a request.

uvicorn bounds none of these: its httptools protocol buffers headers of any size, waits forever
for a request's head, and its `limit_concurrency` answers with plain text. `limited_protocol`
returns a subclass of uvicorn's httptools protocol that, like NGINX's defaults:

- refuses a request line plus headers larger than `max_header_bytes` with 431 (and stops reading);
- answers 408 and closes when a request's head has not arrived `header_timeout_s` after its first
  byte (or after the connection opened);
- refuses a declared `Content-Length` above `max_body_bytes` with 413 before the body is read
  (chunked bodies are counted as they arrive by the app, see `queue_gateway.app.read_body`); upload
  routes (`upload_paths`: `/v1/files`, transcriptions) stream their bodies with their own caps and are
  held here to `max_upload_bytes` only;
- closes a connection whose body has not fully arrived `body_timeout_s` after its head;
- answers 503 and closes a connection beyond `max_connections` open ones.

Refusals are OpenAI-shaped JSON with `connection: close`. Responses (streams included) are not
touched: the limits end when a request's body has arrived.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from queue_gateway.errors import error_body


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The limits of one server; see `GatewaySettings` for each."""

    max_body_bytes: int = 10_000_000
    upload_paths: frozenset[bytes] = frozenset()
    """Routes that read their body as a stream with their own cap (file uploads): `max_upload_bytes` here."""
    max_upload_bytes: int = 10_000_000
    max_header_bytes: int = 32_768
    header_timeout_s: float = 60.0
    body_timeout_s: float = 60.0
    max_connections: int = 10_000


LINGER_S = 2.0
"""How long a refused connection's further input is read and dropped before it is closed."""
_REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large"}
_REASONS[503] = b"Service Unavailable"


def refusal(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 response closing the connection, with OpenAI's error JSON."""
    type_ = "service_unavailable" if status == 503 else "invalid_request_error"
    body = error_body(message, type_, code)
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % (
        status,
        _REASONS[status],
        len(body),
    )
    if status == 503:
        head += b"retry-after: 1\r\n"
    return head + b"\r\n" + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `limits` enforced (set on the subclass `limited_protocol` makes)."""

    limits = RequestLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        if len(self.connections) >= self.limits.max_connections:
            # Not added to `connections`: the refusal must not count against the others.
            self.transport = transport
            self._refuse(503, "Too many open connections to this gateway: retry shortly.", "too_many_connections")
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, 408, "The request's headers did not arrive in time.")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Bounds what the parser buffers for a head that never ends (one read beyond the cap at most).
        if self._in_head and self._head_bytes > self.limits.max_header_bytes and not self._refused:
            self._too_large_head()

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._in_head = True
        self._head_size = 0
        if self._timer is None:
            self._arm(self.limits.header_timeout_s, 408, "The request's headers did not arrive in time.")

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        if self._head_size > self.limits.max_header_bytes:
            self._too_large_head()
            return
        cap = self.limits.max_body_bytes
        if self.limits.upload_paths and self.url.split(b"?", 1)[0] in self.limits.upload_paths:
            cap = self.limits.max_upload_bytes
        for name, value in self.headers:
            if name == b"content-length":
                if value.isdigit() and int(value) > cap:
                    self._refuse(413, f"Request body too large: at most {cap} bytes.", "request_too_large")
                    return
                break
        super().on_headers_complete()
        # A backstop for every route: the completion endpoints answer 408 themselves at body_timeout_s.
        self._arm(self.limits.body_timeout_s + 1.0, 0, "")

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_response_complete()

    def _too_large_head(self) -> None:
        self._refuse(
            431, f"Request headers too large: at most {self.limits.max_header_bytes} bytes.", "headers_too_large"
        )

    def _arm(self, after_s: float, status: int, message: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(after_s, self._expired, status, message)

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()
        super().eof_received()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, status: int, message: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if status and (self.cycle is None or self.cycle.response_complete):
            self._refuse(status, message, "request_timeout")
        elif self.cycle is not None and not self.cycle.response_started:
            # The body is late: the app sees the client as gone (`http.disconnect`) and stops.
            self.transport.close()

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer and close; what the client still sends is read and dropped for `LINGER_S` first
        (a close with unread data makes the kernel reset the connection, and the client loses the answer)."""
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        self.transport.write(refusal(status, message, code))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._timer = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def limited_protocol(limits: RequestLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` enforcing `limits`."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
