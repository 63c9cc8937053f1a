"""The warm path's HTTP/1.1 client for engines: pooled keep-alive connections, httptools parsing.

Why not httpx here, the obvious choice for async streaming: at 50 streams httpx's transport
(httpcore's pool, h11's `ChunkedReader` and event machinery, anyio's per-read timeout scopes)
cost 9-11 % of the gateway's CPU on its own, and it yields one piece per HTTP chunk, so every
engine token became one ASGI message and one `transport.write` to the client (the largest item
in the profile). Measured with `python -m bench.warm_path --quick` (64 one-token chunks per
request, proxy pinned to a core of its own; bench/README.md has the tables): 6.8-7.0 ms of
gateway CPU per request with httpx, 1.6-1.9 ms with this client and the raw ASGI dispatch
(`app.GatewayApp`), and 0.35x -> 0.75x of direct throughput at 50 streams in the same runs.
This module only frames one request and keeps
connections; the HTTP parsing (status line, headers, chunked de-framing) is httptools (llhttp),
the parser uvicorn itself uses. httpx remains the client everywhere else (health probes,
admin, metrics).

What it does:
- `EnginePool.request` sends one request on an idle keep-alive connection to the engine (or a
  new one, within `connect_timeout_s`) and returns once the status and headers arrived.
- `EngineResponse.read` returns everything received since the last call, de-chunked, as ONE
  piece (`b""` at the end): under load several engine chunks arrive in one socket read and go
  on to the client as one write. Each wait for data is bounded by `read_timeout_s`.
- A connection goes back to the pool only after its response was read to the end with
  keep-alive; a response closed early (client gone, error) closes its connection, so the engine
  sees the disconnect and aborts the generation.
- Reading is paused while more than `HIGH_WATER_BYTES` wait for a slow client.

Errors (one tree, mapped to the gateway's errors once, in `proxy.py`):

    EngineError
    ├── EngineConnectError    the connection could not be made: nothing reached the engine
    ├── EngineTimeout         no byte for `read_timeout_s`
    └── EngineClosed          the connection broke or sent something that is not HTTP
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import cast

import httptools

HIGH_WATER_BYTES = 256 * 1024
"""Pause reading from the engine while this much waits for a slow client."""
IDLE_EXPIRY_S = 4.0
"""Idle connections older than this are not reused: vLLM (uvicorn) closes idle ones after 5 s."""


class EngineError(Exception):
    """Talking to an engine failed."""


class EngineConnectError(EngineError):
    """The connection could not be made: nothing reached the engine."""


class EngineTimeout(EngineError):
    """The engine sent nothing for the read timeout."""


class EngineClosed(EngineError):
    """The connection broke, or the engine sent something that is not HTTP."""


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(EngineTimeout("the engine sent nothing within the read timeout"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the state of the response being received on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.framed = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.received = False
        self.error: EngineError | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = EngineClosed(f"the engine sent something that is not HTTP/1.1: {exc}")
            self.close()
        if self.buffered > HIGH_WATER_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            if self.headers_done and not self.framed:
                # Neither content-length nor chunked: the body ends with the connection.
                self.complete = True
            else:
                self.error = EngineClosed(f"the engine closed the connection mid-response ({exc!r})")
        self._wake()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self.framed = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()

    # used by EnginePool / EngineResponse

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Until something happens on the connection, at most `timeout_s` (then `EngineTimeout`)."""
        fut = self.loop.create_future()
        self.waiter = fut
        timer = self.loop.call_later(timeout_s, _expire, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self.waiter = None

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self._begin()
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.error is None and not self.closed and not self.body


class EngineResponse:
    """An engine's response: status and headers at once, the body as it comes (`read`)."""

    __slots__ = ("_conn", "_key", "_pool", "_read_timeout_s", "headers", "status_code")

    def __init__(self, pool: EnginePool, key: tuple[str, int], conn: _Connection, read_timeout_s: float) -> None:
        self._pool = pool
        self._key = key
        self._conn: _Connection | None = conn
        self._read_timeout_s = read_timeout_s
        self.status_code = conn.status
        self.headers = conn.headers
        """Response headers, names lower-cased, in the order received."""

    async def read(self) -> bytes:
        """Everything received since the last call as one piece; `b""` once the body ended."""
        conn = self._conn
        if conn is None:
            return b""
        while True:
            if conn.body:
                data = conn.body[0] if len(conn.body) == 1 else b"".join(conn.body)
                conn.body.clear()
                conn.buffered = 0
                if conn.paused and conn.transport is not None:
                    conn.paused = False
                    conn.transport.resume_reading()
                return data
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._read_timeout_s)

    async def aread(self) -> bytes:
        """The whole (rest of the) body."""
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Give the connection back if the response was read to the end, else close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.reusable:
            self._pool.put_back(self._key, conn)
        else:
            conn.close()


class PendingResponse:
    """A request sent by `EnginePool.send_idle`: wait for its response, or close its connection."""

    __slots__ = ("_conn", "_key", "_pool")

    def __init__(self, pool: EnginePool, key: tuple[str, int], conn: _Connection) -> None:
        self._pool = pool
        self._key = key
        self._conn = conn

    async def response(self) -> EngineResponse:
        """The status and headers (`EngineError` as for `EnginePool.request`; the connection is closed)."""
        return await self._pool.response(self._key, self._conn)

    def close(self) -> None:
        """Give up on the response: the connection is closed, so the engine aborts the request."""
        self._conn.close()


class EnginePool:
    """Keep-alive connections to engines by (host, port); no limit beyond the instances' slots."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_idle_per_host: int,
        idle_expiry_s: float = IDLE_EXPIRY_S,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_idle_per_host = max_idle_per_host
        self.idle_expiry_s = idle_expiry_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_ok = time.monotonic() - self.idle_expiry_s
        while idle:
            conn = idle.pop()  # the most recently used first: the least likely to be stale
            if not conn.closed and conn.idle_since >= oldest_ok:
                return conn
            conn.close()
        return None

    def put_back(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        conn.idle_since = time.monotonic()
        idle.append(conn)
        if len(idle) > self.max_idle_per_host or idle[0].closed:
            oldest_ok = conn.idle_since - self.idle_expiry_s
            while idle and (len(idle) > self.max_idle_per_host or idle[0].closed or idle[0].idle_since < oldest_ok):
                idle.pop(0).close()

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), key[0], key[1]), timeout=self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise EngineConnectError(f"could not connect to {key[0]}:{key[1]}: {exc!r}") from exc
        return conn

    async def request(self, host: str, port: int, data: bytes) -> EngineResponse:
        """Send `data` (a whole request: head and body) and wait for the response's status and headers."""
        key = (host, port)
        while True:
            conn = self._take(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key)
            conn.send(data)
            try:
                return await self.response(key, conn)
            except EngineClosed:
                if reused and not conn.received:
                    # The engine closed this idle connection as we reused it; it saw no request.
                    continue
                raise

    def send_idle(self, host: str, port: int, data: bytes) -> PendingResponse | None:
        """Send `data` at once on an idle connection, if there is one (nothing is awaited)."""
        key = (host, port)
        conn = self._take(key)
        if conn is None:
            return None
        conn.send(data)
        return PendingResponse(self, key, conn)

    async def response(self, key: tuple[str, int], conn: _Connection) -> EngineResponse:
        """Wait for the status and headers of the request sent on `conn` (closed on any failure)."""
        try:
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(self.read_timeout_s)
        except BaseException:
            conn.close()
            raise
        return EngineResponse(self, key, conn, self.read_timeout_s)

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
