"""Probing an engine with its instance key: is it up, and does it serve the model yet?"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import httpx

PROBE_CONCURRENCY = 50
"""Probes in flight at once. httpcore's pool rescans every queued request against every connection
whenever one is assigned: 200 probes started at once took 2.7 s on the 2-core VM, 50 at a time
1.0 s (bench/launcher_tick.py). The cost: engines that hang are waited out (`health_timeout_s`) 50
at a time instead of 100 (the prober's connection limit)."""
LOADING_POLL_MIN_S = 0.1
"""Shortest delay between two readiness probes of a loading instance."""


def loading_probe_delay_s(loading_s: float, earliest_s: float, cap_s: float) -> float:
    """Delay before the next readiness probe of an instance that has been loading for `loading_s`.

    `earliest_s` is the shortest load time observed for the model (0 when none was). Before it,
    a quarter of the time left; from it on, `LOADING_POLL_MIN_S` growing by a tenth of the
    overrun: an instance is routed to within a probe or two of becoming ready, and a slow loader
    is probed every `cap_s`. The probe is a GET of the engine's own /health: cheap.
    """
    if loading_s < earliest_s:
        delay_s = (earliest_s - loading_s) / 4
    else:
        delay_s = LOADING_POLL_MIN_S + (loading_s - earliest_s) / 10
    return min(max(cap_s, LOADING_POLL_MIN_S), max(LOADING_POLL_MIN_S, delay_s))


class Health(enum.StrEnum):
    READY = "ready"
    """`/health` answered 200 and `/v1/models` lists the served name."""
    LOADING = "loading"
    """The engine answers but is not ready yet (503, or the model not listed)."""
    DOWN = "down"
    """No answer: connection refused, timed out, or an unexpected status."""


@dataclass(frozen=True, slots=True)
class Probe:
    health: Health
    detail: str


T = TypeVar("T")


async def probe_all(targets: Sequence[T], probe: Callable[[T], Awaitable[Probe]]) -> list[Probe]:
    """`probe` of every target, `PROBE_CONCURRENCY` at a time, in the targets' order."""
    gate = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def one(target: T) -> Probe:
        async with gate:
            return await probe(target)

    return list(await asyncio.gather(*(one(t) for t in targets)))


class Prober:
    """Readiness probes over one shared httpx client, liveness probes over a small client per instance."""

    def __init__(self, *, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            transport=transport,
        )
        self._timeout_s = timeout_s
        self._transport = transport
        self._alive_clients: dict[str, httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        await self.client.aclose()
        for client in self._alive_clients.values():
            await client.aclose()
        self._alive_clients.clear()

    def _alive_client(self, url: str) -> httpx.AsyncClient:
        # One small client (one kept-alive connection) per instance. One shared pool holding a
        # connection per instance cost 2.5 ms of CPU per probe with 200 instances (20 kept alive: new
        # connections) or 35 ms (200 kept: httpcore rescans every connection for every queued request);
        # a client per instance costs ~0.4 ms (bench/launcher_tick.py).
        client = self._alive_clients.get(url)
        if client is None:
            client = httpx.AsyncClient(
                base_url=url,
                timeout=httpx.Timeout(self._timeout_s),
                limits=httpx.Limits(max_connections=2, max_keepalive_connections=1, keepalive_expiry=120.0),
                transport=self._transport,
            )
            self._alive_clients[url] = client
        return client

    async def forget(self, keep: set[str]) -> None:
        """Close the per-instance clients of instances (URLs) not in `keep`."""
        for url in [u for u in self._alive_clients if u not in keep]:
            await self._alive_clients.pop(url).aclose()

    async def probe(self, url: str, api_key: str | None, served_name: str) -> Probe:
        """`GET /health`, then `GET /v1/models` with the instance key."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            health = await self.client.get(f"{url}/health", headers=headers)
            if health.status_code == 503:
                return Probe(Health.LOADING, "/health 503")
            if health.status_code != 200:
                return Probe(Health.DOWN, f"/health {health.status_code}")
            models = await self.client.get(f"{url}/v1/models", headers=headers)
            if models.status_code == 503:
                return Probe(Health.LOADING, "/v1/models 503")
            if models.status_code != 200:
                return Probe(Health.DOWN, f"/v1/models {models.status_code}")
            ids = {str(m.get("id")) for m in models.json().get("data", []) if isinstance(m, dict)}
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            return Probe(Health.DOWN, f"{type(exc).__name__}: {exc}"[:200])
        if served_name not in ids:
            return Probe(Health.LOADING, f"{served_name!r} not in /v1/models yet")
        return Probe(Health.READY, "ok")

    async def alive(self, url: str, api_key: str | None) -> Probe:
        """`GET /health` alone: the liveness check of an instance already known to serve its model."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            health = await self._alive_client(url).get("/health", headers=headers)
        except httpx.HTTPError as exc:
            return Probe(Health.DOWN, f"{type(exc).__name__}: {exc}"[:200])
        if health.status_code == 200:
            return Probe(Health.READY, "ok")
        if health.status_code == 503:
            return Probe(Health.LOADING, "/health 503")
        return Probe(Health.DOWN, f"/health {health.status_code}")

    async def busy(self, url: str, api_key: str | None) -> float | None:
        """Requests running or waiting in the engine (vLLM's metrics), None when it does not say."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            resp = await self.client.get(f"{url}/metrics", headers=headers)
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        total = 0.0
        for line in resp.text.splitlines():
            if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                try:
                    total += float(line.rsplit(" ", 1)[1])
                except (IndexError, ValueError):
                    continue
        return total
