"""Prometheus's way in: engine discovery, an engine metrics proxy and the warm pool's metrics.

Routes, relative to the admin mount (`/admin`):

- `GET /v1/sd/engines`: Prometheus `http_sd_config` JSON, one target group per ready engine. The
  target is this gateway and `__metrics_path__` is the proxy route below, so Prometheus never needs
  an engine's address or key: engines run on compute nodes Prometheus may not reach, and their
  per-instance keys never leave slurmless.
- `GET /v1/engines/{instance}/metrics`: the engine's own `/metrics`, fetched with its per-instance key.
- `GET /v1/metrics`: the warm pool's state from Redis (`queue_gateway.pool_metrics`).

All three accept the bearer token `metrics.token` (a credential that can read metrics and nothing else)
or an admin credential (role `METRICS` in `queue_gateway.admin_routes`, which declares the routes).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import Response

from queue_gateway import pool_metrics
from queue_gateway.admin import AdminApi, Principal
from queue_gateway.errors import BadRequest, NotFound, UpstreamFailed, json_response
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceState

Clock = Callable[[], float]

INSTANCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_ENGINE_METRICS_BYTES = 16_000_000
"""Largest engine /metrics body passed on; vLLM's is some tens of kilobytes."""
SCRAPABLE = frozenset({InstanceState.LOADING, InstanceState.READY, InstanceState.DRAINING})
"""States whose engine listens: the proxy serves them; discovery lists only ready engines."""
EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"


class Observability:
    """The handlers, sharing the admin API's stores and authentication."""

    def __init__(self, api: AdminApi, clock: Clock) -> None:
        self.api = api
        self.settings = api.settings.metrics
        self.instances = InstanceStore(api.redis, api.keys)
        self.clock = clock

    async def authorize(self, request: Request) -> Principal | None:
        """The metrics token (None: no principal), or whatever the admin API accepts as an admin."""
        token = self.settings.token
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        if token and scheme.lower() == "bearer" and given and hmac.compare_digest(given.encode(), token.encode()):
            return None
        who = await self.api.authenticate(request)
        self.api.require_admin(who)
        return who

    def _gateway_base(self, request: Request) -> tuple[str, str, str]:
        """(scheme, host:port, path prefix) at which Prometheus reaches this gateway."""
        if self.settings.gateway_url:
            parts = urlsplit(self.settings.gateway_url)
            return parts.scheme, parts.netloc, parts.path.rstrip("/")
        root = str(request.scope.get("root_path", "")).removesuffix("/admin")
        return request.url.scheme, request.url.netloc, root.rstrip("/")

    async def sd_engines(self, request: Request, who: Principal | None) -> Response:
        scheme, address, prefix = self._gateway_base(request)
        groups: list[dict[str, Any]] = []
        for record in sorted(await self.instances.all(), key=lambda r: (r.model, r.id)):
            if record.state is not InstanceState.READY or record.url is None:
                continue
            groups.append(
                {
                    "targets": [address],
                    "labels": {
                        "__scheme__": scheme,
                        "__metrics_path__": f"{prefix}/admin/v1/engines/{record.id}/metrics",
                        "model": record.model,
                        "instance": record.id,
                        "job_id": record.job_id or "",
                        "node": record.node or record.host or "",
                        "cluster": self.settings.cluster,
                    },
                }
            )
        return json_response(groups)

    async def engine_metrics(self, request: Request, who: Principal | None) -> Response:
        iid = request.path_params["instance"]
        if not INSTANCE_ID.match(iid):
            raise BadRequest("an instance id is 1-64 letters, digits, '-' or '_'", param="instance")
        record = await self.instances.get(iid)
        if record is None or record.state not in SCRAPABLE or record.url is None:
            raise NotFound(f"no running engine {iid!r}", code="instance_not_found", param="instance")
        headers = {"accept": request.headers.get("accept", "text/plain")}
        if record.api_key:
            headers["authorization"] = f"Bearer {record.api_key}"
        timeout = httpx.Timeout(self.settings.engine_timeout_s)
        try:
            async with (
                httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
                client.stream("GET", f"{record.url}/metrics", headers=headers) as resp,
            ):
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ENGINE_METRICS_BYTES:
                        raise UpstreamFailed(f"engine {iid} sent more than {MAX_ENGINE_METRICS_BYTES} bytes")
        except httpx.HTTPError as exc:
            # The engine's address stays inside: the scrape error names the instance only.
            raise UpstreamFailed(f"engine {iid} did not answer its /metrics ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise UpstreamFailed(f"engine {iid} answered its /metrics with {resp.status_code}")
        return Response(bytes(body), media_type=resp.headers.get("content-type", EXPOSITION))

    async def pool(self, request: Request, who: Principal | None) -> Response:
        api = self.api
        facts = await pool_metrics.observe(
            api.redis,
            api.keys,
            await api.models.all(),
            await self.instances.all(),
            now_s=self.clock(),
            default_cold_budget_s=api.settings.gateway.cold_wait_budget_s,
        )
        return Response(pool_metrics.render(facts), media_type=EXPOSITION)


__all__ = ["Observability"]
