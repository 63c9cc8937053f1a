"""The engine simulator as a Slurm job of the launcher, behind the gateway: a bench target through the real local Slurm.

Redis, a launcher process and the gateway; model `m` (1 GPU, `min_replicas` = `max_replicas` = 1,
instance cap `cap`) registered with an API key. The launcher submits the engine simulator's job to
the local cluster; the target is returned once an interactive request has been answered through it
(the cold start done), so what follows measures the warm path of an instance started like any.

`python -m bench.slurm_target SETTINGS_JSON` is the launcher process (settings as JSON, written here).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from bench.procs import python, start, wait_http, wait_line
from bench.targets import MODEL, START_TIMEOUT_S, Layout, Target
from launcher.service import LauncherService
from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import cancel_all, local_settings
from warmpool.apikeys import ApiKeyStore
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

COLD_START_TIMEOUT_S = 180.0


async def _register(settings: Settings, cap: int) -> str:
    """Model `m` (kept at one instance) and an API key; the launcher does the rest."""
    keys = Keys(settings.redis.key_prefix)
    redis = aioredis.Redis.from_url(settings.redis.url)
    try:
        spec = ModelSpec(
            name=MODEL,
            source="org/sim",
            served_name=MODEL,
            resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
            policy=Policy(min_replicas=1, max_replicas=1, max_concurrency=cap),
        )
        await ModelStore(redis, keys).put(spec)
        plain, _ = await ApiKeyStore(redis, keys).create(tenant="bench", now_s=time.time())
        return plain
    finally:
        await redis.aclose()


def start_slurm_slurmless(
    cluster: LocalCluster,
    log_dir: Path,
    layout: Layout,
    *,
    engine_argv: list[str],
    cap: int,
    env: dict[str, str],
    launcher: dict[str, object],
) -> Target:
    """Redis, the launcher (`launcher` settings on top of the test defaults) and the gateway (`env`); the engine
    simulator (`engine_argv`: its flags) a Slurm job pinned to `layout.engine`. Warm when returned."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    redis = LocalRedis()
    redis.start()
    target = Target("slurmless-slurm", "127.0.0.1", 0, "", [], [redis.stop, lambda: shutil.rmtree(workdir, True)])
    target.redis_url = redis.url
    try:
        settings = local_settings(
            redis_url=redis.url, slurm_conf=cluster.conf_path, output_dir=workdir / "jobs", load_time_s=0, **launcher
        )
        pin = ["taskset", "-c", ",".join(map(str, layout.engine))] if layout.engine and shutil.which("taskset") else []
        settings.launcher.engine_command = [*pin, *settings.launcher.engine_command, *engine_argv]
        target.cleanups.append(lambda: asyncio.run(cancel_all(settings)))  # first: the cleanups run in reverse
        target.redis_key_prefix = settings.redis.key_prefix
        target.api_key = asyncio.run(_register(settings, cap))
        (workdir / "settings.json").write_text(settings.model_dump_json())
        target.children.append(
            start(
                "launcher",
                [python(), "-m", "bench.slurm_target", str(workdir / "settings.json")],
                log_dir=log_dir,
                cores=layout.proxy,
                unset_prefixes=("SLURMLESS_",),
                cwd=Path.cwd(),
            )
        )
        gateway = start(
            "slurmless",
            [python(), "-m", "queue_gateway", "--host", "127.0.0.1", "--port", "0"],
            log_dir=log_dir,
            cores=layout.proxy,
            env={"SLURMLESS_REDIS__URL": redis.url, "SLURMLESS_REDIS__KEY_PREFIX": settings.redis.key_prefix, **env},
            unset_prefixes=("SLURMLESS_",),
            capture_stdout=True,
            cwd=workdir,
        )
        target.children.append(gateway)
        url = wait_line(gateway, "queue_gateway listening on ", START_TIMEOUT_S)
        target.port = int(url.rsplit(":", 1)[1])
        wait_http(gateway, url + "/v1/models", START_TIMEOUT_S, {"Authorization": f"Bearer {target.api_key}"})
        # The first request waits through the job's submission, start and load: a cold start like any.
        first = httpx.post(
            url + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 2},
            headers={"authorization": f"Bearer {target.api_key}"},
            timeout=COLD_START_TIMEOUT_S,
        )
        first.raise_for_status()
    except BaseException:
        target.stop()
        raise
    return target


async def _run_launcher(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await LauncherService(settings).run(stop)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_launcher(Settings.model_validate_json(Path(sys.argv[1]).read_text())))
