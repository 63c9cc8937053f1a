"""Calling engines: one httpx client sized for long streams, and instance addresses cached.

The httpx errors are mapped here, once, most specific first:
connect errors -> `UpstreamUnreachable` (retryable: nothing reached the engine),
read/write/pool timeouts -> `UpstreamTimeout`, any other transport error -> `UpstreamFailed`.
"""

from __future__ import annotations

import httpx

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


class UpstreamUnreachable(UpstreamFailed):
    """The engine could not be connected to: the request may be retried on another instance."""


class Upstreams:
    """Engines by instance id, and the client that talks to them."""

    def __init__(
        self,
        store: InstanceStore,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        # The transport is used directly: the client layer (auth flows, redirects, cookies, hooks)
        # costs per request and does nothing here. Pool waits are bounded by the per-instance cap
        # (slots) rather than by the pool timeout; read is the longest silence tolerated mid-stream.
        self.transport = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=60.0
            ),
            trust_env=False,
            retries=0,
        )
        self._timeout = httpx.Timeout(
            connect=connect_timeout_s, read=read_timeout_s, write=connect_timeout_s, pool=connect_timeout_s * 2
        ).as_dict()
        # A ready instance's address and key never change, so they are cached for its lifetime.
        self._addresses: dict[str, tuple[str, bytes]] = {}
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    async def address(self, instance_id: str) -> tuple[str, bytes]:
        """(base URL, `Bearer <instance key>`) of a ready instance."""
        hit = self._addresses.get(instance_id)
        if hit is not None:
            return hit
        record = await self.store.get(instance_id)
        if record is None or record.url is None:
            raise UpstreamUnreachable(f"instance {instance_id} has no address")
        hit = (record.url, f"Bearer {record.api_key or ''}".encode())
        self._addresses[instance_id] = hit
        return hit

    def forget(self, instance_id: str) -> None:
        self._addresses.pop(instance_id, None)
        for key in [k for k in self._urls if k[0] == instance_id]:
            del self._urls[key]

    async def open(self, instance_id: str, path: str, body: bytes) -> httpx.Response:
        """Send the request and return once the engine's status and headers arrived (body streamed)."""
        url = self._urls.get((instance_id, path))
        auth = self._addresses[instance_id][1] if url is not None else b""
        if url is None:
            base, auth = await self.address(instance_id)
            url = self._urls[(instance_id, path)] = httpx.URL(base + path)
        request = httpx.Request(
            "POST",
            url,
            content=body,
            headers=[
                (b"authorization", auth),
                (b"content-type", b"application/json"),
                (b"accept-encoding", b"identity"),
            ],
            extensions={"timeout": self._timeout},
        )
        try:
            return await self.transport.handle_async_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self.forget(instance_id)
            raise UpstreamUnreachable(f"engine {instance_id} unreachable: {exc!r}") from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"engine {instance_id} timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"engine {instance_id} failed: {exc!r}") from exc

    async def aclose(self) -> None:
        await self.transport.aclose()


def forward_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    """The engine's response headers a client should see."""
    out = []
    for name, value in response.headers.raw:
        lower = name.lower()
        if lower not in HOP_BY_HOP:
            out.append((lower, value))
    return out
