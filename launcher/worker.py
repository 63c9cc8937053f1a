"""The launcher as an arq worker: `demand(ctx, model)` jobs, deduplicated per model.

Other processes (the CLI's "warm up", a scheduler) enqueue `demand` with `enqueue_demand`, whose
deterministic `_job_id` makes concurrent triggers for one model a single arq job. The gateway's
fast path is Redis pub/sub on `Keys.demand_channel`, listened to by `LauncherService`; both end in
`Launcher.on_demand` under one lock, so either way a model gets one submission.

The tick is not an arq cron job: arq's cron has one-second resolution and runs on every worker,
while the tick must run on the lease holder only (and sub-second in tests); `LauncherService`
runs it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq import ArqRedis
from arq.connections import RedisSettings

from launcher.service import LauncherService
from launcher.settings import LauncherConfig
from warmpool.settings import load_config

QUEUE_SUFFIX = "arq:launcher"
"""arq queue of the launcher, under the deployment's key prefix."""


def queue_name(settings: LauncherConfig) -> str:
    return f"{settings.redis.key_prefix}{QUEUE_SUFFIX}"


def demand_job_id(model: str) -> str:
    return f"demand:{model}"


async def enqueue_demand(pool: ArqRedis, settings: LauncherConfig, model: str) -> bool:
    """Ask the launcher to warm `model`; False when a demand job for it is queued already."""
    job = await pool.enqueue_job("demand", model, _job_id=demand_job_id(model), _queue_name=queue_name(settings))
    return job is not None


async def demand(ctx: dict[str, Any], model: str) -> str | None:
    """arq job: react to demand for `model` (the new instance id, or None if nothing was needed)."""
    service: LauncherService = ctx["service"]
    return await service.demand(model)


async def startup(ctx: dict[str, Any]) -> None:
    settings: LauncherConfig = ctx.get("settings") or load_config(LauncherConfig)
    service = LauncherService(settings)
    stop = asyncio.Event()
    ctx["service"], ctx["stop"] = service, stop
    ctx["runner"] = asyncio.create_task(service.run(stop))


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["stop"].set()
    await ctx["runner"]


def worker_settings(settings: LauncherConfig) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker` running the launcher with `settings`."""
    return {
        "functions": [demand],
        "queue_name": queue_name(settings),
        "redis_settings": RedisSettings.from_dsn(settings.redis.url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings},
        "max_jobs": 100,
        "job_timeout": 120,
        "keep_result": 0,
    }


class WorkerSettings:
    """`arq launcher.worker.WorkerSettings`: settings come from the environment and config file."""

    functions = [demand]
    on_startup = startup
    on_shutdown = shutdown
    max_jobs = 100
    job_timeout = 120
    keep_result = 0
