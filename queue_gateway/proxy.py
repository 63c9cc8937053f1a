"""Calling engines: instance addresses cached, requests sent over `engine_http`'s keep-alive pool.

The engine client's errors are mapped here, once, most specific first:
connect errors -> `UpstreamUnreachable` (retryable: nothing reached the engine),
timeouts -> `UpstreamTimeout`, a broken connection -> `UpstreamFailed`. Errors while the body
streams are raised by `EngineResponse.read` as `EngineError` and mapped by the dispatcher, which
knows whether the client already got bytes.
"""

from __future__ import annotations

import logging

from queue_gateway.endpoints import JSON_TYPE
from queue_gateway.engine_http import (
    EngineConnectError,
    EngineError,
    EnginePool,
    EngineResponse,
    EngineTimeout,
    PendingResponse,
)
from queue_gateway.errors import UpstreamFailed, UpstreamTimeout
from warmpool.instance_store import InstanceStore

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"server",
        b"date",
    }
)
"""Response headers not passed to the client (uvicorn writes its own framing, server and date)."""


log = logging.getLogger(__name__)


class UpstreamUnreachable(UpstreamFailed):
    """The engine could not be connected to: the request may be retried on another instance."""


class Upstreams:
    """Engines by instance id, and the connection pool that talks to them."""

    def __init__(
        self,
        store: InstanceStore,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
    ) -> None:
        self.store = store
        # Read is the longest silence tolerated (for headers and mid-stream); waits for a slot
        # are bounded by the per-instance cap, so the pool itself has no limit but idle ones.
        self.pool = EnginePool(
            connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s, max_idle_per_host=max_connections
        )
        # A ready instance's address and key never change, so they are cached for its lifetime,
        # together with the request head up to the content length, per path.
        self._addresses: dict[str, tuple[str, int, bytes]] = {}
        self._heads: dict[tuple[str, str], bytes] = {}

    async def address(self, instance_id: str) -> tuple[str, int, bytes]:
        """(host, port, `Bearer <instance key>`) of a ready instance."""
        hit = self._addresses.get(instance_id)
        if hit is not None:
            return hit
        record = await self.store.get(instance_id)
        if record is None or record.host is None or record.port is None:
            raise UpstreamUnreachable(f"instance {instance_id} has no address")
        hit = (record.host, record.port, f"Bearer {record.api_key or ''}".encode())
        self._addresses[instance_id] = hit
        return hit

    def forget(self, instance_id: str) -> None:
        self._addresses.pop(instance_id, None)
        for key in [k for k in self._heads if k[0] == instance_id]:
            del self._heads[key]

    def _request(
        self,
        instance_id: str,
        address: tuple[str, int, bytes],
        path: str,
        body: bytes,
        content_type: bytes = JSON_TYPE,
    ) -> bytes:
        host, port, auth = address
        # JSON heads are cached per path; a multipart head carries its own boundary.
        head = self._heads.get((instance_id, path)) if content_type == JSON_TYPE else None
        if head is None:
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            head = (
                f"POST {path} HTTP/1.1\r\nhost: {authority}\r\n".encode()
                + b"authorization: "
                + auth
                + b"\r\ncontent-type: "
                + content_type
                + b"\r\naccept-encoding: identity\r\ncontent-length: "
            )
            if content_type == JSON_TYPE:
                self._heads[(instance_id, path)] = head
        return b"%s%d\r\n\r\n%s" % (head, len(body), body)

    def speculate(self, instance_id: str, path: str, body: bytes) -> Speculation | None:
        """Send the request now, before its slot is confirmed, if the instance's address is known and a
        connection to it is idle (nothing is awaited); None otherwise."""
        address = self._addresses.get(instance_id)
        if address is None:
            return None
        sent = self.pool.send_idle(address[0], address[1], self._request(instance_id, address, path, body))
        return None if sent is None else Speculation(instance_id, sent)

    async def open(self, instance_id: str, path: str, body: bytes, content_type: bytes = JSON_TYPE) -> EngineResponse:
        """Send the request and return once the engine's status and headers arrived (body streamed)."""
        address = await self.address(instance_id)
        host, port, _ = address
        request = self._request(instance_id, address, path, body, content_type)
        try:
            return await self.pool.request(host, port, request)
        # Clients are told what failed, never where: the engine's address goes to the log only.
        except EngineConnectError as exc:
            self.forget(instance_id)
            log.warning("engine %s unreachable: %s", instance_id, exc)
            raise UpstreamUnreachable(f"The engine of instance {instance_id} could not be reached.") from exc
        except EngineTimeout as exc:
            log.warning("engine %s timed out: %s", instance_id, exc)
            raise UpstreamTimeout(f"The engine of instance {instance_id} did not answer in time.") from exc
        except EngineError as exc:
            log.warning("engine %s failed: %s", instance_id, exc)
            raise UpstreamFailed(f"The engine of instance {instance_id} failed.") from exc

    async def aclose(self) -> None:
        self.pool.close()


class Speculation:
    """A request sent to an instance while the admit that should give it a slot there is on its way.

    `response(iid)` returns the engine's response if the admit gave a slot on that same instance,
    else abandons it (the connection is closed, so the engine aborts the request); None also when the
    engine failed, so the caller sends the request again the ordinary way (with its retries and errors).
    """

    __slots__ = ("_sent", "instance_id")

    def __init__(self, instance_id: str, sent: PendingResponse) -> None:
        self.instance_id = instance_id
        self._sent: PendingResponse | None = sent

    @property
    def abandoned(self) -> bool:
        return self._sent is None

    def abandon(self) -> None:
        sent, self._sent = self._sent, None
        if sent is not None:
            sent.close()

    async def response(self, instance_id: str) -> EngineResponse | None:
        sent, self._sent = self._sent, None
        if sent is None:
            return None
        if instance_id != self.instance_id:
            sent.close()
            return None
        try:
            return await sent.response()
        except EngineError:
            return None


def forward_headers(response: EngineResponse) -> list[tuple[bytes, bytes]]:
    """The engine's response headers a client should see."""
    return [(name, value) for name, value in response.headers if name not in HOP_BY_HOP]
