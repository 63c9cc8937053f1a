"""Tenants (research groups, courses) and their quotas.

A tenant groups API keys; its quotas bound what its keys may do together: requests in flight
(enforced by the gateway) and models registered by self-service (enforced by the admin API).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field

from warmpool.apikeys import TENANT_RE
from warmpool.errors import TenantExists
from warmpool.keys import Keys
from warmpool.redisio import awaited
from warmpool.settings import TenantLimits


class TenantSpec(BaseModel):
    """One tenant; a quota of None means unlimited."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TENANT_RE.pattern)
    description: str = Field("", max_length=200)
    max_concurrent_requests: int | None = Field(None, ge=1, le=1_000_000)
    """Requests of all the tenant's keys in flight or queued at once."""
    max_models: int | None = Field(None, ge=0, le=10_000)
    """Models the tenant may own (registered by its self-service keys or for it by an admin)."""
    idle_gpu_hours_per_day: float | None = Field(None, gt=0, le=1_000_000, strict=True)
    """Idle GPU-hours a day the tenant's models may spend warm: its models are priced at the tenant's own
    exchange rate, moved online to track it (`policies.idle_budget`). None: the site's budget or rate."""
    limits: TenantLimits = Field(default_factory=TenantLimits)
    """Resource limits of this tenant; unset fields take the site's (`registry.tenant_limits`)."""
    account: str | None = Field(None, pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}$")
    """Slurm account the tenant's models' jobs run under when a model names none; it must be one of the
    accounts its limits allow (`limits.accounts`, else the site's)."""
    created_s: float = 0.0


class TenantStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    async def create(self, spec: TenantSpec) -> None:
        """Add a tenant; raises TenantExists rather than overwrite one."""
        added = await awaited(self.redis.hsetnx(self.keys.tenants, spec.name, spec.model_dump_json()))
        if not added:
            raise TenantExists(f"tenant {spec.name!r} exists already: use set-quota")

    async def get(self, name: str) -> TenantSpec | None:
        raw = await awaited(self.redis.hget(self.keys.tenants, name))
        return None if raw is None else TenantSpec.model_validate_json(raw)

    async def all(self) -> list[TenantSpec]:
        raw = await awaited(self.redis.hgetall(self.keys.tenants))
        return sorted((TenantSpec.model_validate_json(v) for v in raw.values()), key=lambda t: t.name)

    async def set_quota(
        self,
        name: str,
        *,
        max_concurrent_requests: int | None = None,
        max_models: int | None = None,
        idle_gpu_hours_per_day: float | None = None,
        limits: dict[str, object] | None = None,
        clear: frozenset[str] = frozenset(),
    ) -> TenantSpec:
        """Change quotas: given values are set, fields named in `clear` become unlimited; `limits` are merged
        field by field (a None there inherits the site's limit again)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.keys.tenants)
                    raw = await awaited(pipe.hget(self.keys.tenants, name))
                    if raw is None:
                        raise KeyError(f"tenant {name!r} does not exist")
                    data = TenantSpec.model_validate_json(raw).model_dump()
                    for field in clear:
                        data[field] = None
                    if max_concurrent_requests is not None:
                        data["max_concurrent_requests"] = max_concurrent_requests
                    if max_models is not None:
                        data["max_models"] = max_models
                    if idle_gpu_hours_per_day is not None:
                        data["idle_gpu_hours_per_day"] = idle_gpu_hours_per_day
                    if limits is not None:
                        data["limits"] = {**data["limits"], **limits}
                    spec = TenantSpec.model_validate(data)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(self.keys.tenants, name, spec.model_dump_json())
                    await pipe.execute()
                    return spec
                except aioredis.WatchError:
                    continue
