"""Where a response goes: a client's ASGI connection, or a buffer (async mode)."""

from __future__ import annotations

from starlette.types import Send

from queue_gateway.errors import ResultTooLarge


class Sink:
    """A response being written: status and headers once, then body chunks, then the end."""

    started: bool = False
    finished: bool = False
    status: int = 0

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    async def write(self, chunk: bytes) -> None:
        raise NotImplementedError

    async def end(self, chunk: bytes = b"") -> None:
        raise NotImplementedError


class AsgiSink(Sink):
    """Straight to the ASGI server: no buffering, no per-chunk work beyond `send`."""

    __slots__ = ("finished", "send", "started", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False
        self.finished = False
        self.status = 0

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, chunk: bytes) -> None:
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self, chunk: bytes = b"") -> None:
        self.finished = True
        await self.send({"type": "http.response.body", "body": chunk, "more_body": False})


class BufferSink(Sink):
    """Collects a whole response (async requests store it in Redis)."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.started = False
        self.finished = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.max_bytes = max_bytes
        self.size = 0

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self.status = status
        self.headers = headers

    async def write(self, chunk: bytes) -> None:
        self._add(chunk)

    async def end(self, chunk: bytes = b"") -> None:
        self._add(chunk)
        self.finished = True

    def _add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            self.parts.clear()
            raise ResultTooLarge(f"The answer is larger than the {self.max_bytes} bytes an async result may hold.")
        self.parts.append(chunk)

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name == b"content-type":
                return value.decode("latin-1")
        return "application/json"
