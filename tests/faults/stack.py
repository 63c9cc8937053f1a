"""The whole stack as `slurmless up` runs it, with handles to hurt it: processes, Slurm, Redis.

`FaultStack` wraps `slurmless.up.Stack` (its own redis-server with AOF, a local Slurm cluster,
`python -m launcher` and `python -m queue_gateway`) with the engine simulator as the engine, and
short timings so that faults show and heal in seconds. The cluster is sized so that every model of
the suite (each asks 1 fake GPU, 1 CPU, 256 MB) can run at once, and a lost slurmd is noticed
after `SLURMD_TIMEOUT_S` rather than Slurm's default 5 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from slurm.cli_backend import SlurmCLI
from slurm.localcluster import LocalCluster
from slurm.types import SlurmJob
from slurmless.localredis import LocalRedis
from slurmless.ports import free_port
from slurmless.settings import DevClusterSettings, GatewaySettings, LauncherSettings, Settings
from slurmless.up import Stack
from warmpool.apikeys import ApiKeyStore
from warmpool.instance_store import InstanceStore
from warmpool.instances import LIVE_STATES, InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.routing import Routing
from warmpool.specs import ModelSpec, Policy, Resources

CLUSTER_GPUS = 24
"""The storm's 20 models plus a few from earlier tests still draining."""
CLUSTER_CPUS = 24
CLUSTER_MEMORY_MB = 8000
"""24 jobs of 256 MB fit (6144 MB)."""
SLURMD_TIMEOUT_S = 10
GATEWAY_LEASE_TTL_S = 15.0
"""The stack's gateway keeps the default lease."""
SHORT_GATEWAY_LEASE_TTL_S = 3.0
"""Lease of the extra gateway that the gateway fault kills, so its death is noticed quickly."""
LAUNCHER_LEASE_TTL_S = 3.0
INTER_TOKEN_MS = 20
LOAD_TIME_S = 1.0
COMMAND_TIMEOUT_S = 20.0

ENGINE_ARGV = [
    sys.executable,
    "-m",
    "enginesim",
    "--sim-load-time-s",
    str(LOAD_TIME_S),
    "--sim-inter-token-ms",
    str(INTER_TOKEN_MS),
]

STACK_ENV = {
    "SLURMLESS_LAUNCHER__TICK_S": "0.5",
    "SLURMLESS_LAUNCHER__LEASE_TTL_S": str(LAUNCHER_LEASE_TTL_S),
    "SLURMLESS_LAUNCHER__HEALTH_POLL_S": "0.2",
    "SLURMLESS_LAUNCHER__HEALTH_TIMEOUT_S": "2",
    "SLURMLESS_LAUNCHER__UNHEALTHY_AFTER": "2",
    "SLURMLESS_LAUNCHER__FAILURE_BACKOFF_S": "0.5",
    "SLURMLESS_LAUNCHER__FIRST_LOAD_TIMEOUT_S": "60",
    "SLURMLESS_LAUNCHER__REGISTER_TIMEOUT_S": "30",
    "SLURMLESS_LAUNCHER__DRAIN_GRACE_S": "5",
    "SLURMLESS_LAUNCHER__SIGNAL_LEAD_S": "30",
    "SLURMLESS_LAUNCHER__PENDING_CANCEL_GRACE_S": "10",
    "SLURMLESS_LAUNCHER__DEFAULT_QUEUE_WAIT_S": "5",
    "SLURMLESS_LAUNCHER__DEFAULT_LOAD_S": "5",
    "SLURMLESS_LAUNCHER__RENEW_MARGIN_S": "20",
    "SLURMLESS_SLURM__COMMAND_TIMEOUT_S": str(COMMAND_TIMEOUT_S),
    "SLURMLESS_GATEWAY__LEASE_TTL_S": str(GATEWAY_LEASE_TTL_S),
    "SLURMLESS_GATEWAY__PROGRESS_INTERVAL_S": "1",
    "SLURMLESS_GATEWAY__MODEL_CACHE_TTL_S": "0.2",
    "SLURMLESS_GATEWAY__GRANT_CHECK_INTERVAL_S": "0.5",
    "SLURMLESS_GATEWAY__COLD_WAIT_BUDGET_S": "120",
    "SLURMLESS_GATEWAY__WARM_WAIT_BUDGET_S": "30",
    "SLURMLESS_GATEWAY__BATCH__LINE_LEASE_S": "3",
}


class FaultClusterStack(Stack):
    """`slurmless up`'s Stack with a cluster sized for the suite and a short SlurmdTimeout."""

    def start_cluster(self) -> dict[str, str]:
        cluster = LocalCluster(
            self.settings.dev_cluster.base_dir,
            gpus=CLUSTER_GPUS,
            cpus=CLUSTER_CPUS,
            memory_mb=CLUSTER_MEMORY_MB,
            slurmd_timeout_s=SLURMD_TIMEOUT_S,
        )
        cluster.start()
        self.cluster = cluster
        return cluster.env


@dataclass
class GatewayProcess:
    """A gateway started next to the stack's own (`python -m queue_gateway --port 0`)."""

    proc: subprocess.Popen[str]
    url: str

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class FaultStack:
    """The running stack and the handles the fault tests use."""

    def __init__(self, stack: Stack, base: Path, url: str, key: str) -> None:
        self.stack = stack
        self.base = base
        self.url = url
        self.key = key
        self.keys = Keys(stack.settings.redis.key_prefix)
        self.extra: list[GatewayProcess] = []

    @classmethod
    def start(cls, base: Path) -> FaultStack:
        settings = Settings(
            state_dir=base / "state",
            dev_cluster=DevClusterSettings(base_dir=base / "cluster", gpus=CLUSTER_GPUS),
            gateway=GatewaySettings(port=free_port()),
            launcher=LauncherSettings(callback_port=free_port(), job_output_dir=base / "jobs"),
        )
        stack = FaultClusterStack(settings)
        try:
            # Every gateway of the suite shares one files directory, as gateways on shared storage do.
            files_env = {"SLURMLESS_GATEWAY__BATCH__FILES_DIR": str(base / "files")}
            url = stack.start(ENGINE_ARGV, extra_env={**STACK_ENV, **files_env}, timeout_s=90)
            assert stack.redis is not None
            key = asyncio.run(_make_key(stack.redis.url, Keys(settings.redis.key_prefix)))
        except BaseException:
            stack.stop()
            raise
        return cls(stack, base, url, key)

    def stop(self) -> None:
        for gw in self.extra:
            with contextlib.suppress(Exception):
                gw.stop()
        self.stack.stop()

    # --- handles ------------------------------------------------------------------------------

    @property
    def redis_server(self) -> LocalRedis:
        assert self.stack.redis is not None
        return self.stack.redis

    @property
    def cluster(self) -> LocalCluster:
        assert isinstance(self.stack.cluster, LocalCluster)
        return self.stack.cluster

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    def slurm(self) -> SlurmCLI:
        return SlurmCLI(env={"SLURM_CONF": self.env["SLURM_CONF"]}, command_timeout_s=COMMAND_TIMEOUT_S)

    async def jobs(self) -> list[SlurmJob]:
        return [j for j in await self.slurm().jobs() if j.state.is_active]

    @contextlib.asynccontextmanager
    async def redis(self) -> AsyncIterator[aioredis.Redis]:
        client: aioredis.Redis = aioredis.Redis.from_url(
            self.redis_server.url, socket_timeout=5, socket_connect_timeout=5
        )
        try:
            yield client
        finally:
            await client.aclose()

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The live child process `name` (launcher, gateway) of the stack, the newest if restarted."""
        live = [p for n, p in self.stack.children if n == name and p.poll() is None]
        assert live, f"no live {name} process"
        return live[-1]

    def kill9(self, name: str) -> int:
        proc = self.process(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return proc.pid

    def spawn(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        """Start another child like the stack's own (a restarted or standby launcher)."""
        role = "launcher" if name.startswith("launcher") else "gateway"
        self.stack.spawn(name, self.stack_argv(name), {**self.stack.role_envs[role], **env})
        return self.stack.children[-1][1]

    @staticmethod
    def stack_argv(name: str) -> list[str]:
        module = "launcher" if name.startswith("launcher") else "queue_gateway"
        return [sys.executable, "-m", module]

    def spawn_gateway(self, **env: str) -> GatewayProcess:
        """Another gateway process on a free port, sharing the stack's Redis."""
        log = (self.stack.settings.state_dir / f"gateway-extra-{len(self.extra)}.log").open("ab")
        proc = subprocess.Popen(
            [*self.stack_argv("gateway"), "--host", "127.0.0.1", "--port", "0"],
            env={**self.stack.role_envs["gateway"], **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        log.close()
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("queue_gateway listening on "), line
        gw = GatewayProcess(proc, line.removeprefix("queue_gateway listening on ").strip())
        self.extra.append(gw)
        return gw

    # --- state --------------------------------------------------------------------------------

    async def register(
        self,
        stem: str,
        *,
        keepalive_s: float = 10.0,
        time_limit_min: int = 60,
        max_concurrency: int = 64,
        cold_wait_budget_s: float | None = None,
        mem_mb: int = 256,
        engine_args: dict[str, str | int | float | bool] | None = None,
    ) -> str:
        """Register a fresh model (a unique name per test, so tests do not see each other's state)."""
        name = f"{stem}-{secrets.token_hex(3)}"
        spec = ModelSpec(
            name=name,
            source="org/sim",
            resources=Resources(gpus=1, cpus=1, mem_mb=mem_mb, time_limit_min=time_limit_min),
            engine_args=engine_args or {},
            policy=Policy(
                max_replicas=1,
                keepalive_min_s=keepalive_s,
                keepalive_max_s=keepalive_s,
                max_concurrency=max_concurrency,
                cold_wait_budget_s=cold_wait_budget_s,
            ),
            created_s=time.time(),
        )
        async with self.redis() as r:
            await ModelStore(r, self.keys).put(spec)
        return name

    async def instances(self, model: str) -> list[InstanceRecord]:
        async with self.redis() as r:
            found = await InstanceStore(r, self.keys).all(model)
        return sorted(found, key=lambda rec: rec.created_s)

    async def live(self, model: str) -> list[InstanceRecord]:
        return [r for r in await self.instances(model) if r.state in LIVE_STATES]

    async def ready(self, model: str) -> list[InstanceRecord]:
        return [r for r in await self.instances(model) if r.state is InstanceState.READY]

    async def leftovers(self, models: list[str]) -> dict[str, object]:
        """Tickets and slots still booked for `models` (all zero once every request ended)."""
        async with self.redis() as r:
            routing = Routing(r, self.keys)
            out: dict[str, object] = {}
            for m in models:
                depth = await routing.queue_depth(m)
                busy = {iid: n for iid, n in (await routing.inflight(m)).items() if n}
                if depth or busy:
                    out[m] = {"queue_depth": depth, "inflight": busy}
            total = int(await r.get(self.keys.queue_total) or 0)
            if total:
                out["qtotal"] = total
        return out

    async def settled_leftovers(self, models: list[str], *, timeout_s: float = 20.0) -> dict[str, object]:
        """`leftovers` once it is empty, or what is still there after `timeout_s` (slots go back as streams end)."""
        left = await self.leftovers(models)
        for _ in range(int(timeout_s / 0.2)):
            if not left:
                break
            await asyncio.sleep(0.2)
            left = await self.leftovers(models)
        return left

    async def leader(self) -> str | None:
        async with self.redis() as r:
            raw = await r.get(self.keys.leader)
        return None if raw is None else raw.decode()


def engine_pids(model: str) -> list[int]:
    """Engine simulator processes serving `model` (found by their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"enginesim" in argv and model.encode() in argv:
            found.append(int(entry.name))
    return found


async def _make_key(redis_url: str, keys: Keys) -> str:
    client: aioredis.Redis = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        key, _ = await ApiKeyStore(client, keys).create(tenant="faults", now_s=time.time())
        return key
    finally:
        await client.aclose()
