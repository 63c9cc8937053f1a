"""The admin API's status and events: what runs, what is wanted, what waits, what happened."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from queue_gateway.admin import AdminApi, Principal
from queue_gateway.errors import BadRequest, json_response
from warmpool import pool_load
from warmpool.idle_budgets import read_views
from warmpool.keys import SITE_BUDGET
from warmpool.phase import ModelPhase
from warmpool.redisio import awaited, text
from warmpool.registry import visible_to
from warmpool.specs import ModelSpec
from warmpool.timeline import LAST_COLD_START, LAST_COLD_START_AT
from warmpool.warm import WarmRequest


async def status_rows(api: AdminApi, specs: list[ModelSpec]) -> list[dict[str, Any]]:
    """One status row per spec; an adapter reads its base's instances, queue and phase (`instance_model`)."""
    now_s = api.clock()
    targets = sorted({s.instance_model for s in specs})
    phases = await api.phases.many(targets)
    desired_raw = await awaited(api.redis.hgetall(api.keys.desired))
    desired = {text(k): _replicas(v) for k, v in desired_raw.items()}
    per_spec = pool_load.REPLIES + 2
    async with api.redis.pipeline(transaction=False) as pipe:
        for spec in specs:
            pool_load.ask(pipe, api.keys, spec.instance_model)
            pipe.hmget(api.keys.model_stats(spec.instance_model), [LAST_COLD_START, LAST_COLD_START_AT])
            pipe.get(api.keys.warm(spec.instance_model))
        raw = await pipe.execute()
    rows: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        replies = raw[per_spec * i : per_spec * (i + 1)]
        load = pool_load.parse(replies[: pool_load.REPLIES])
        (cold, cold_at), warm_raw = replies[pool_load.REPLIES :]
        phase: ModelPhase = phases[spec.instance_model]
        warm = WarmRequest.model_validate_json(warm_raw) if warm_raw else None
        rows.append(
            {
                "model": spec.name,
                "kind": spec.kind.value,
                "instance_model": spec.instance_model,
                "phase": phase.phase.value,
                "slurm_reason": phase.slurm_reason,
                "est_start_s": phase.est_start_s,
                "eta_s": phase.eta_s,
                "detail": phase.detail,
                "desired": desired.get(spec.instance_model),
                "actual": load.ready,
                "coming": phase.coming_instances,
                "queue_depth": load.queue_depth,
                "last_cold_start_s": float(cold) if cold else None,
                "last_cold_start_at_s": float(cold_at) if cold_at else None,
                "warm_until_s": warm.until_s if warm is not None and warm.until_s > now_s else None,
            }
        )
    return rows


class StatusApi(AdminApi):
    """Handlers of `/v1/status` and `/v1/events`."""

    # --- status and events ------------------------------------------------------------------

    async def status(self, request: Request, who: Principal) -> Response:
        specs = [s for s in await self.models.all() if who.admin or visible_to(s, who.tenant)]
        now_s = self.clock()
        return json_response(
            {
                "object": "list",
                "now_s": now_s,
                "data": await status_rows(self, specs),
                "idle_budgets": await self._idle_budgets(who, now_s),
            }
        )

    async def _idle_budgets(self, who: Principal, now_s: float) -> list[dict[str, Any]]:
        """The idle budgets the caller may see (an admin all, a tenant its own): rate in force, spent vs budget."""
        tenants = [t.name for t in await self.tenants.all() if t.idle_gpu_hours_per_day is not None]
        names = [SITE_BUDGET, *tenants] if who.admin else [t for t in tenants if t == who.tenant]
        views = await read_views(self.redis, self.keys, names, now_s)
        return [
            {
                "budget": v.budget,
                "exchange_rate": v.rate,
                "idle_gpu_hours_last_day": v.idle_gpu_h_last_day,
                "budget_gpu_hours_per_day": v.budget_gpu_h_per_day,
                "updated_s": v.updated_s,
            }
            for v in views
        ]

    async def list_events(self, request: Request, who: Principal) -> Response:
        params = request.query_params
        try:
            count = max(1, min(1000, int(params.get("count", "50"))))
        except ValueError:
            raise BadRequest("count must be an integer", code="invalid_value", param="count") from None
        events = await self.events.recent(
            count=count, model=params.get("model") or None, kind=params.get("kind") or None
        )
        data = [
            {"id": e.id, "at_s": e.at_s, "kind": e.kind, "model": e.model, "instance": e.instance, "detail": e.detail}
            for e in events
        ]
        return json_response({"object": "list", "data": data})


def _replicas(raw: object) -> int | None:
    try:
        value = orjson.loads(raw if isinstance(raw, bytes | str) else b"null")
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict):
        value = value.get("replicas")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


__all__ = ["StatusApi", "status_rows"]
