"""The launcher process: leader lease, tick and health loops, demand listener, callback server and arq worker.

The only place that reads the clock and sleeps. Every launcher process serves callbacks (they
only update instance records); only the lease holder ticks and submits. A standby takes over
`lease_ttl_s` after the leader stops renewing, and adopts its jobs from squeue and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import uvicorn

from launcher.callbacks import callback_app
from launcher.clusters import allowed_here
from launcher.controller import Launcher
from launcher.feasibility import check_spec
from launcher.lease import LeaderLease
from launcher.metrics import LauncherMetrics
from launcher.settings import LauncherConfig
from slurm.backend import SlurmBackend
from slurm.backends import make_backend
from warmpool.feasibility import answer, question_of
from warmpool.keys import Keys
from warmpool.redisio import text

log = logging.getLogger("slurmless.launcher")


def slurm_backend(settings: LauncherConfig, metrics: LauncherMetrics) -> SlurmBackend:
    return make_backend(
        settings.slurm, job_name_prefix=settings.launcher.job_name_prefix, on_command=metrics.on_slurm_command
    )


class LauncherService:
    """Everything one launcher process runs; `run()` until `stop` is set."""

    def __init__(self, settings: LauncherConfig) -> None:
        self.settings = settings
        ls = settings.launcher
        self.id = ls.launcher_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.keys = Keys(settings.redis.key_prefix)
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis.url, socket_timeout=settings.redis.socket_timeout_s
        )
        self.metrics = LauncherMetrics()
        self.slurm = slurm_backend(settings, self.metrics)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ls.callback_host, ls.callback_port))
        port = self.sock.getsockname()[1]
        self.callback_url = ls.callback_public_url or f"http://{ls.callback_host}:{port}"
        self.launcher = Launcher(
            self.redis,
            self.slurm,
            ls,
            callback_url=self.callback_url,
            keys=self.keys,
            metrics=self.metrics,
            clock=time.time,
            watch_loading=True,
            tenant_limits=settings.registry.tenant_limits,
            model_roots=settings.model_roots,
            launcher_id=self.id,
        )
        self.lease = LeaderLease(self.redis, self.id, ttl_s=ls.lease_ttl_s, key=self.keys.cluster_leader(ls.cluster))
        self.is_leader = False
        self.leader_changed = asyncio.Event()
        self._demand_tasks: dict[str, asyncio.Task[str | None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        server = uvicorn.Server(
            uvicorn.Config(callback_app(self.launcher), lifespan="off", access_log=False, log_level="warning")
        )
        tasks = [
            asyncio.create_task(server.serve(sockets=[self.sock]), name="callbacks"),
            asyncio.create_task(self._lease_loop(stop), name="lease"),
            asyncio.create_task(self._tick_loop(stop), name="tick"),
            asyncio.create_task(self._health_loop(stop), name="health"),
            asyncio.create_task(self._demand_loop(stop), name="demand"),
        ]
        print(
            f"slurmless launcher {self.id} (cluster {self.settings.launcher.cluster}) callbacks on {self.callback_url}",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            server.should_exit = True
            for task in tasks[1:]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.is_leader:
                with contextlib.suppress(Exception):
                    await self.lease.release()
            await self.launcher.aclose()
            await self.redis.aclose()

    async def demand(self, model: str) -> str | None:
        """React to demand for `model` now (leader only); concurrent calls for a model share one task."""
        if not self.is_leader:
            return None
        task = self._demand_tasks.get(model)
        if task is None or task.done():
            task = asyncio.create_task(self.launcher.on_demand(model, now_s=time.time()))
            self._demand_tasks[model] = task
        return await asyncio.shield(task)

    async def _lease_loop(self, stop: asyncio.Event) -> None:
        period_s = max(0.05, self.settings.launcher.lease_ttl_s / 3)
        while not stop.is_set():
            try:
                leader = await self.lease.acquire_or_renew()
            except (aioredis.RedisError, OSError) as exc:
                log.warning("lease: %s", exc)
                leader = False
            if leader != self.is_leader:
                self.is_leader = leader
                self.metrics.is_leader.set(1 if leader else 0)
                self.leader_changed.set()
                print(f"slurmless launcher {self.id}: {'leader' if leader else 'standby'}", flush=True)
                with contextlib.suppress(Exception):
                    await self.launcher.events.record(
                        "launcher.leader" if leader else "launcher.standby",
                        now_s=time.time(),
                        instance=self.id,
                        cluster=self.settings.launcher.cluster,
                    )
            await _sleep_or_stop(stop, period_s)

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        await self._leader_loop(stop, "tick", self.settings.launcher.tick_s, self.launcher.tick)

    async def _health_loop(self, stop: asyncio.Event) -> None:
        await self._leader_loop(stop, "health check", self.settings.launcher.health_check_s, self.launcher.check_ready)

    async def _leader_loop(
        self, stop: asyncio.Event, what: str, period_s: float, step: Callable[..., Awaitable[object]]
    ) -> None:
        """Run `step(now_s=...)` every `period_s` while this process leads."""
        while not stop.is_set():
            if self.is_leader:
                try:
                    await step(now_s=time.time())
                except Exception:
                    # A step that fails (Redis blip, a bug on one record) must not stop the loop.
                    log.exception("%s failed", what)
            await _sleep_or_stop(stop, period_s)

    async def _demand_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.keys.demand_channel, self.keys.feasibility_channel)
                    while not stop.is_set():
                        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if msg is None or msg.get("type") != "message":
                            continue
                        if text(msg.get("channel")) == self.keys.feasibility_channel:
                            work = self._answer_quietly(msg.get("data"))
                        else:
                            work = self._demand_quietly(text(msg.get("data")))
                        task = asyncio.create_task(work)
                        self._background.add(task)
                        task.add_done_callback(self._background.discard)
            except (aioredis.RedisError, OSError) as exc:
                log.warning("demand listener: %s", exc)
                await _sleep_or_stop(stop, 1.0)

    async def _answer_quietly(self, data: object) -> None:
        """Answer the admin API's "can the cluster run this spec?" (leader only: one answer per question)."""
        question = question_of(data)
        cluster = self.settings.launcher.cluster
        if question is None or not self.is_leader or not allowed_here(question.spec.resources.clusters, cluster):
            return
        try:
            # The job the tenant's instances would get: under its Slurm account.
            spec = await self.launcher.tenant_budget.with_account(question.spec)
            verdict = await check_spec(
                self.slurm,
                spec,
                self.settings.launcher,
                callback_url=self.callback_url,
                model_roots=self.settings.model_roots,
            )
            await answer(self.redis, self.keys, question.request_id, verdict)
        except Exception:
            log.exception("feasibility check of %s failed", question.spec.name)

    async def _demand_quietly(self, model: str) -> None:
        try:
            await self.demand(model)
        except Exception:
            log.exception("demand for %s failed", model)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
