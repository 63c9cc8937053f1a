"""The clusters' shared facts in Redis: each cluster's status, each cluster's start estimate per model, and
the per-model submission claim (`launcher.clusters` decides with them).

Written only by launchers (each its own cluster's fields); the gateway reads the statuses for the status
page. The claim is a string with a short TTL taken with `SET NX PX` and given back with a
compare-and-delete, so a launcher that paused past its TTL cannot delete another cluster's claim.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from pydantic import BaseModel, ValidationError

from warmpool.keys import Keys
from warmpool.redisio import awaited, text

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ClusterStatus(BaseModel):
    """A cluster as its leader last reported it."""

    cluster: str
    launcher: str
    seen_s: float
    slurm_ok: bool
    error: str | None = None


class ClusterEstimate(BaseModel):
    """When a new job for one model would start on one cluster; `est_start_s` None: not there (Slurm
    refused the job or did not answer, `detail` says which)."""

    cluster: str
    est_start_s: float | None
    at_s: float
    partition: str | None = None
    qos: str | None = None
    """Where on the cluster the estimate is for (the placement its launcher would submit to)."""
    detail: str | None = None


class ClusterBoard:
    """Read and write the clusters' statuses, estimates and claims."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._release = redis.register_script(_RELEASE)

    async def report(self, status: ClusterStatus) -> None:
        await awaited(self.redis.hset(self.keys.clusters, status.cluster, status.model_dump_json()))

    async def statuses(self) -> dict[str, ClusterStatus]:
        raw = await awaited(self.redis.hgetall(self.keys.clusters))
        out: dict[str, ClusterStatus] = {}
        for name, value in raw.items():
            try:
                out[text(name)] = ClusterStatus.model_validate_json(value)
            except ValidationError:
                continue  # a field another version wrote: that cluster is simply not known here
        return out

    async def publish_estimate(self, model: str, estimate: ClusterEstimate, *, ttl_s: float) -> None:
        """Keep this cluster's estimate for `model`; the hash expires when no cluster estimated for a while."""
        key = self.keys.cluster_estimates(model)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, estimate.cluster, estimate.model_dump_json())
            pipe.pexpire(key, max(1, int(ttl_s * 1000)))
            await pipe.execute()

    async def estimates(self, model: str) -> dict[str, ClusterEstimate]:
        raw = await awaited(self.redis.hgetall(self.keys.cluster_estimates(model)))
        out: dict[str, ClusterEstimate] = {}
        for name, value in raw.items():
            try:
                out[text(name)] = ClusterEstimate.model_validate_json(value)
            except ValidationError:
                continue
        return out

    async def claim(self, model: str, cluster: str, *, ttl_s: float) -> bool:
        """Take the model's submission claim for `cluster`; False when another cluster holds it."""
        key = self.keys.placement_claim(model)
        return bool(await self.redis.set(key, cluster, nx=True, px=max(1, int(ttl_s * 1000))))

    async def release(self, model: str, cluster: str) -> None:
        await self._release(keys=[self.keys.placement_claim(model)], args=[cluster])


__all__ = ["ClusterBoard", "ClusterEstimate", "ClusterStatus"]
