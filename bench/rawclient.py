"""A minimal HTTP/1.1 streaming client on raw asyncio sockets, with a timestamp per SSE event.

httpx spends more CPU per chunk than the proxies under test, so at 50 streams it measures
itself. This client keeps one keep-alive connection per stream, sends a prepared request,
de-chunks the response in place and records when each `data:` event arrived. Events that
arrive in the same socket read share a timestamp (that is what a client sees).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

READ_SIZE = 65536


class ProtocolError(RuntimeError):
    """The server answered something this client does not understand."""


@dataclass(slots=True)
class StreamResult:
    """One streamed request as the client saw it (times in seconds, perf_counter based)."""

    status: int
    started_s: float
    event_times_s: list[float] = field(default_factory=list)
    content_events: int = 0
    comment_times_s: list[float] = field(default_factory=list)
    headers_s: float = 0.0
    """When the status line and headers arrived."""
    ended_s: float = 0.0
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return self.event_times_s[0] - self.started_s if self.event_times_s else None

    @property
    def duration_s(self) -> float:
        return self.ended_s - self.started_s

    def gaps_s(self) -> list[float]:
        t = self.event_times_s
        return [b - a for a, b in itertools.pairwise(t)]


def build_request(host: str, port: int, path: str, body: dict[str, object], api_key: str | None) -> bytes:
    """The bytes of one POST (prepared once, sent many times)."""
    payload = json.dumps(body).encode()
    headers = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(payload)}",
        "Connection: keep-alive",
    ]
    if api_key:
        headers.append(f"Authorization: Bearer {api_key}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + payload


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int, *, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(self._writer.wait_closed(), timeout=2.0)
        self._reader = self._writer = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None and not self._reader.at_eof():
            return self._reader, self._writer
        await self.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, limit=READ_SIZE * 4), timeout=self.timeout_s
        )
        self._reader, self._writer = reader, writer
        return reader, writer

    async def stream(self, request: bytes, on_headers: Callable[[], None] | None = None) -> StreamResult:
        """Send `request` and read its response to the end, timestamping every SSE event."""
        started = time.perf_counter()
        result = StreamResult(status=0, started_s=started)
        try:
            await asyncio.wait_for(self._exchange(request, result, on_headers), timeout=self.timeout_s)
        except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            await self.close()
        result.ended_s = time.perf_counter()
        if result.error is None and result.status != 200:
            result.error = f"HTTP {result.status}"
        return result

    async def _exchange(self, request: bytes, result: StreamResult, on_headers: Callable[[], None] | None) -> None:
        reader, writer = await self._connect()
        result.started_s = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ProtocolError(f"bad status line {lines[0]!r}")
        result.status = int(parts[1])
        result.headers_s = time.perf_counter()
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip().lower()
        if on_headers is not None:
            on_headers()
        keep_alive = headers.get("connection") != "close"
        sse = _SseCounter(result)
        if headers.get("transfer-encoding") == "chunked":
            await _read_chunked(reader, sse)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
            sse.feed(body, time.perf_counter())
        else:
            keep_alive = False
            while data := await reader.read(READ_SIZE):
                sse.feed(data, time.perf_counter())
        if not keep_alive:
            await self.close()


class _SseCounter:
    """Splits a byte stream into SSE lines and timestamps the `data:` ones."""

    def __init__(self, result: StreamResult) -> None:
        self.result = result
        self.pending = b""

    def feed(self, data: bytes, now_s: float) -> None:
        buf = self.pending + data
        lines = buf.split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            if line.startswith(b"data: "):
                if line.startswith(b"data: [DONE]"):
                    continue
                self.result.event_times_s.append(now_s)
                if b'"content":"' in line or b'"text":"' in line:
                    self.result.content_events += 1
            elif line.startswith(b":"):
                self.result.comment_times_s.append(now_s)


async def _read_chunked(reader: asyncio.StreamReader, sse: _SseCounter) -> None:
    """De-chunk a `Transfer-Encoding: chunked` body as it arrives (one timestamp per socket read)."""
    buf = b""
    now_s = time.perf_counter()
    while True:
        # Parse every complete chunk in the buffer before reading more.
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                break
            size = int(buf[:eol].split(b";", 1)[0], 16)
            end = eol + 2 + size + 2
            if size == 0:
                # Last chunk (no trailers expected): swallow the final CRLF.
                while len(buf) < eol + 4:
                    more = await reader.read(READ_SIZE)
                    if not more:
                        raise ProtocolError("eof in last chunk")
                    buf += more
                return
            if len(buf) < end:
                break
            sse.feed(buf[eol + 2 : eol + 2 + size], now_s)
            buf = buf[end:]
        data = await reader.read(READ_SIZE)
        if not data:
            raise ProtocolError("eof inside a chunked body")
        now_s = time.perf_counter()
        buf += data
