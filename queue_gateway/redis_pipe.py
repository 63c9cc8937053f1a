"""The warm path's two Redis round trips (admit, release) over one auto-pipelined connection.

Why not redis-py for these two calls: measured on the development VM (uvloop, the hiredis
parser in both cases, one EVALSHA after the other on a core of its own), a redis-py call
costs 124-142 us of gateway CPU (pool checkout and health check, an asyncio timeout scope per
read), this connection 42 us, most of which is the two syscalls; with two calls per request
that is ~0.2 ms of the ~1.6 ms a warm request cost. Commands of concurrent requests share the
one connection and are written as they come; replies are matched in order (RESP answers in
order). The RESP parsing is hiredis, the parser redis-py itself uses; this module only frames
commands. redis-py remains the client for everything else (held requests, admin, the launcher).

Errors are redis-py's (`redis.exceptions.ConnectionError`, `TimeoutError`, `ResponseError`), so
callers handle them as any other `RedisError`. A timed-out command closes the connection (later
replies could no longer be matched); the next command reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from warmpool.keys import Keys
from warmpool.routing import ADMIT_LUA, RELEASE_LUA, Admission, admission, admit_args

Arg = str | int | float | bytes


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, float):
            b = repr(a).encode()  # repr: the shortest text that reads back as the same float
        else:
            b = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(RedisTimeoutError("Redis did not answer in time"))


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports lack the ABC

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(RedisConnectionError(f"Redis connection lost: {exc!r}"))

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class RedisPipe:
    """One connection, commands pipelined as they come, each bounded by `timeout_s`."""

    def __init__(self, kwargs: dict[str, Any], *, timeout_s: float) -> None:
        self.kwargs = kwargs
        self.timeout_s = timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def for_client(cls, client: aioredis.Redis, *, timeout_s: float) -> RedisPipe | None:
        """A pipe to the same server as `client`; None when it is not plain TCP or a unix socket (e.g. TLS)."""
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kind = pool.connection_class.__name__
        if kind not in ("Connection", "UnixDomainSocketConnection"):
            return None
        return cls(kwargs, timeout_s=timeout_s)

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.lost:
                return self._proto
            loop = asyncio.get_running_loop()
            k = self.kwargs
            try:
                if k.get("path"):
                    make = loop.create_unix_connection(_Protocol, k["path"])
                else:
                    make = loop.create_connection(_Protocol, k.get("host", "localhost"), int(k.get("port", 6379)))
                _, proto = await asyncio.wait_for(make, timeout=self.timeout_s)
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"could not connect to Redis: {exc!r}") from exc
            setup: list[list[Arg]] = []
            if k.get("password"):
                setup.append(["AUTH", k["username"], k["password"]] if k.get("username") else ["AUTH", k["password"]])
            if int(k.get("db") or 0):
                setup.append(["SELECT", int(k["db"])])
            try:
                for command in setup:
                    await self._call(proto, command)
            except BaseException:
                proto.close()
                raise
            self._proto = proto
            return proto

    async def _call(self, proto: _Protocol, args: Sequence[Arg]) -> Any:
        assert proto.transport is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.pending.append(fut)
        proto.transport.write(pack(args))
        timer = asyncio.get_running_loop().call_later(self.timeout_s, _expire, fut)
        try:
            reply = await fut
        except RedisTimeoutError:
            proto.close()  # later replies could not be matched any more
            raise
        finally:
            timer.cancel()
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def call(self, *args: Arg) -> Any:
        """Send one command and return its reply (hiredis types: bytes, int, list)."""
        proto = self._proto
        if proto is None or proto.lost:
            proto = await self._connect()
        return await self._call(proto, args)

    def close(self) -> None:
        if self._proto is not None:
            self._proto.close()
            self._proto = None


class _Script:
    def __init__(self, pipe: RedisPipe, source: str) -> None:
        self.pipe = pipe
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, *args: Arg) -> Any:
        try:
            return await self.pipe.call("EVALSHA", self.sha, 0, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.pipe.call("EVAL", self.source, 0, *args)


class HotRouting:
    """`warmpool.routing.Routing.admit` and `release`, the same scripts, over a `RedisPipe`."""

    def __init__(self, pipe: RedisPipe, keys: Keys) -> None:
        self.pipe = pipe
        self.keys = keys
        self._admit = _Script(pipe, ADMIT_LUA)
        self._release = _Script(pipe, RELEASE_LUA)

    async def admit(
        self,
        model: str,
        gateway_id: str,
        request_id: str,
        *,
        now_s: float,
        queue_max: int,
        global_max: int,
        signal_demand: bool = True,
    ) -> Admission:
        """Take a slot, or else enqueue a ticket `request_id` (one round trip)."""
        args = admit_args(
            self.keys.prefix,
            model,
            gateway_id,
            request_id,
            now_s=now_s,
            queue_max=queue_max,
            global_max=global_max,
            signal_demand=signal_demand,
        )
        return admission(await self._admit(*args))

    async def release(self, gateway_id: str, request_id: str) -> int:
        """Give back the slot booked for `request_id`; returns tickets granted (-1: nothing was booked)."""
        return int(await self._release(self.keys.prefix, gateway_id, request_id))
