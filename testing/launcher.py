"""Helpers for the launcher's integration tests: settings for a local cluster, waiting, cleaning up.

Each test gets its own job-name prefix, so it sees only its own jobs on a shared session cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import redis.asyncio as aioredis

from slurm.cli_backend import SlurmCLI
from slurm.types import SlurmJob
from slurmless.settings import LauncherSettings, RedisSettings, Settings, SlurmSettings
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys

if TYPE_CHECKING:
    from slurm.localcluster import LocalCluster
    from slurmless.localredis import LocalRedis

T = TypeVar("T")


def local_settings(
    *,
    redis_url: str,
    slurm_conf: Path,
    output_dir: Path,
    load_time_s: float = 2.0,
    **launcher: object,
) -> Settings:
    """Settings for a launcher driving the local cluster with the engine simulator."""
    prefix = f"t{secrets.token_hex(3)}-"
    fields: dict[str, object] = {
        "tick_s": 0.5,
        "callback_host": "127.0.0.1",
        "callback_port": 0,
        "engine_command": [sys.executable, "-m", "enginesim", "--sim-load-time-s", str(load_time_s)],
        "job_name_prefix": prefix,
        "job_output_dir": output_dir,
        "health_poll_s": 0.2,
        "health_check_s": 0.5,
        "health_timeout_s": 2.0,
        "first_load_timeout_s": 60.0,
        "register_timeout_s": 30.0,
        "drain_grace_s": 5.0,
        "lease_ttl_s": 3.0,
        "failure_backoff_s": 0.5,
        "default_keepalive_s": 600.0,
        "pending_cancel_grace_s": 5.0,
        "signal_lead_s": 30,
        "unhealthy_after": 2,
        "allow_loopback_engines": True,
        # The default idle budget chooses its rate again at every whole hour of wall time: a test of other
        # behaviour would change course when it ran across one. Its own tests (the parity test) set it.
        "idle_budget_share": None,
        **launcher,
    }
    return Settings(
        redis=RedisSettings(url=redis_url, key_prefix=f"sl{secrets.token_hex(3)}:"),
        launcher=LauncherSettings.model_validate(fields),
        slurm=SlurmSettings(conf=slurm_conf, command_timeout_s=20.0, local_cluster=False),
    )


@contextlib.asynccontextmanager
async def launcher_env(
    cluster: LocalCluster,
    redis_server: LocalRedis,
    output_dir: Path,
    *,
    load_time_s: float = 2.0,
    **launcher: object,
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    """Settings for one test (`local_settings`, with `launcher` overrides) and a Redis client; on the way
    out every job of the test is cancelled and the client closed."""
    settings = local_settings(
        redis_url=redis_server.url,
        slurm_conf=cluster.conf_path,
        output_dir=output_dir,
        load_time_s=load_time_s,
        **launcher,
    )
    client: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        yield settings, client
    finally:
        await cancel_all(settings)
        await client.aclose()


def slurm_for(settings: Settings) -> SlurmCLI:
    """The command-line tools on the settings' cluster (through `slurm.command_prefix` for a chrooted
    Slurm): how tests observe jobs whichever backend the launcher under test uses."""
    env = {"SLURM_CONF": str(settings.slurm.conf)} if settings.slurm.conf else {}
    return SlurmCLI(
        env=env,
        job_name_prefix=settings.launcher.job_name_prefix,
        command_timeout_s=20.0,
        command_prefix=settings.slurm.command_prefix,
    )


async def active_jobs(settings: Settings) -> list[SlurmJob]:
    """This test's jobs that are pending or running."""
    return [j for j in await slurm_for(settings).jobs() if j.state.is_active]


async def cancel_all(settings: Settings) -> None:
    """scancel every job of this test (by name prefix) so the shared cluster is left clean."""
    slurm = slurm_for(settings)
    for job in await slurm.jobs():
        if job.state.is_active:
            await slurm.cancel(job.job_id)


async def wait_for(check: Callable[[], Awaitable[T | None]], *, timeout_s: float, what: str, poll_s: float = 0.1) -> T:
    """Poll `check` until it returns something other than None/False; fail after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await check()
        if value is not None and value is not False:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(poll_s)


def environ_with(settings: Settings) -> dict[str, str]:
    """Environment for `python -m launcher` with `settings` (nested SLURMLESS_* variables)."""
    env = dict(os.environ)
    env.pop("SLURMLESS_CONFIG", None)
    env["SLURMLESS_REDIS"] = settings.redis.model_dump_json()
    env["SLURMLESS_LAUNCHER"] = settings.launcher.model_dump_json()
    env["SLURMLESS_SLURM"] = settings.slurm.model_dump_json()
    return env


class RunningLauncher:
    """A `LauncherService` running as a task in the caller's event loop; `close()` stops it cleanly."""

    def __init__(self, settings: Settings) -> None:
        from launcher.service import LauncherService  # the service imports uvicorn: only when used

        self.settings = settings
        self.service = LauncherService(settings)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.service.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=30)


async def records(
    client: aioredis.Redis, settings: Settings, state: InstanceState | None = None
) -> list[InstanceRecord]:
    """Every instance record of this test (in `state` when given), oldest first."""
    found = await InstanceStore(client, Keys(settings.redis.key_prefix)).all()
    return sorted((r for r in found if state is None or r.state is state), key=lambda r: r.created_s)


async def record(client: aioredis.Redis, settings: Settings, iid: str) -> InstanceRecord | None:
    return await InstanceStore(client, Keys(settings.redis.key_prefix)).get(iid)


def engine_pid(iid: str) -> int | None:
    """The engine process of one instance on this machine (it inherits SLURMLESS_INSTANCE_ID), if alive."""
    marker = f"SLURMLESS_INSTANCE_ID={iid}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"enginesim" in cmdline and marker in environ.split(b"\0"):
            return int(entry.name)
    return None
