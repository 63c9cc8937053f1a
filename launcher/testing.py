"""Helpers for the launcher's integration tests: settings for a local cluster, waiting, cleaning up.

Each test gets its own job-name prefix, so it sees only its own jobs on a shared session cluster.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from slurm.cli_backend import SlurmCLI
from slurm.types import SlurmJob
from slurmless.settings import LauncherSettings, RedisSettings, Settings, SlurmSettings

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
        **launcher,
    }
    return Settings(
        redis=RedisSettings(url=redis_url, key_prefix=f"sl{secrets.token_hex(3)}:"),
        launcher=LauncherSettings.model_validate(fields),
        slurm=SlurmSettings(conf=slurm_conf, command_timeout_s=20.0, local_cluster=False),
    )


def slurm_for(settings: Settings) -> SlurmCLI:
    env = {"SLURM_CONF": str(settings.slurm.conf)} if settings.slurm.conf else {}
    return SlurmCLI(env=env, job_name_prefix=settings.launcher.job_name_prefix, command_timeout_s=20.0)


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
