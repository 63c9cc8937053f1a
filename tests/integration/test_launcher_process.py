"""`python -m launcher` as real processes: a kill -9 and restart, and a standby taking over.

Slurm is the truth for which jobs exist, Redis for what they were for: a launcher that starts (or
wins the lease) adopts what it finds and submits nothing twice. The jobs' callbacks go to the URL
they were given at submission, so the restarted launcher reuses the same callback port (as a
production deployment would, behind a fixed address).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from launcher.lease import LeaderLease
from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import active_jobs, cancel_all, environ_with, local_settings, records, wait_for
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm

S = InstanceState
LEASE_TTL_S = 3.0


def steady(name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy(min_replicas=1, max_replicas=1),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """`python -m launcher` subprocesses of one test, each killed at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, settings: Settings, name: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher"],
            env=environ_with(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
        log.close()
        self.procs.append(proc)
        return proc

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp_path.glob("*.log")))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture
async def client(redis_server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


def settings_for(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path, *, callback_port: int = 0
) -> Settings:
    return local_settings(
        redis_url=redis_server.url,
        slurm_conf=slurm_cluster.conf_path,
        output_dir=tmp_path / "jobs",
        lease_ttl_s=LEASE_TTL_S,
        callback_port=callback_port,
    )


async def ticks_of(url: str) -> float:
    """The `slurmless_launcher_ticks_total` a launcher's /metrics reports (0 when it does not answer)."""
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as http:
            resp = await http.get(f"{url}/metrics")
    except httpx.HTTPError:
        return 0.0
    for line in resp.text.splitlines():
        if line.startswith("slurmless_launcher_ticks_total "):
            return float(line.split()[1])
    return 0.0


async def assert_one_instance_one_job(client: aioredis.Redis, settings: Settings, job_id: str) -> InstanceRecord:
    all_records = await records(client, settings)
    jobs = await active_jobs(settings)
    assert [j.job_id for j in jobs] == [int(job_id)], jobs
    assert len(all_records) == 1, [(r.id, r.state, r.job_id) for r in all_records]
    assert all_records[0].job_id == job_id
    return all_records[0]


async def test_kill_9_and_restart_adopts_the_job_and_submits_nothing_twice(
    slurm_cluster: LocalCluster,
    redis_server: LocalRedis,
    client: aioredis.Redis,
    processes: Processes,
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = settings_for(slurm_cluster, redis_server, tmp_path, callback_port=port)
    url = f"http://127.0.0.1:{port}"
    await ModelStore(client, Keys(settings.redis.key_prefix)).put(steady("adopt"))
    try:
        first = processes.start(settings, "first")
        # Killed mid-start: the job is submitted but the instance is not ready yet.
        submitted = await wait_for(lambda: _with_job(client, settings), timeout_s=60, what="a submitted job")
        processes.kill9(first)
        killed_state = submitted.state
        processes.start(settings, "restarted")
        ready = await wait_for(lambda: _ready(client, settings), timeout_s=120, what="the instance ready")
        assert ready.id == submitted.id and ready.job_id == submitted.job_id
        # A few ticks of the new leader later: still one instance, one job.
        ticks = await ticks_of(url)
        await wait_for(lambda: _at_least(url, ticks + 4), timeout_s=30, what="4 ticks of the restarted launcher")
        await assert_one_instance_one_job(client, settings, submitted.job_id or "")
        print(f"\nkilled with the instance {killed_state.value}; adopted, one job")
    except BaseException:
        print(processes.logs())
        raise
    finally:
        processes.close()
        await cancel_all(settings)


async def test_standby_takes_over_within_the_lease_ttl(
    slurm_cluster: LocalCluster,
    redis_server: LocalRedis,
    client: aioredis.Redis,
    processes: Processes,
    tmp_path: Path,
) -> None:
    base = settings_for(slurm_cluster, redis_server, tmp_path)
    ports = {"a": free_port(), "b": free_port()}
    by_id = {
        name: base.model_copy(
            update={"launcher": base.launcher.model_copy(update={"launcher_id": name, "callback_port": port})}
        )
        for name, port in ports.items()
    }
    keys = Keys(base.redis.key_prefix)
    lease = LeaderLease(client, "observer", ttl_s=LEASE_TTL_S, keys=keys)
    await ModelStore(client, keys).put(steady("standby"))
    try:
        procs = {name: processes.start(s, name) for name, s in by_id.items()}
        leader = await wait_for(lease.holder, timeout_s=60, what="a leader")
        standby = "b" if leader == "a" else "a"
        ready = await wait_for(lambda: _ready(client, base), timeout_s=120, what="the instance ready")

        processes.kill9(procs[leader])
        killed_s = time.monotonic()
        await wait_for(lambda: _holder_is(lease, standby), timeout_s=LEASE_TTL_S * 10, what="the standby to lead")
        took_over_s = time.monotonic() - killed_s
        # The lease lapses after its TTL; the standby tries every TTL/3. Generous for a busy machine.
        assert took_over_s <= 2 * LEASE_TTL_S + 5, took_over_s
        url = f"http://127.0.0.1:{ports[standby]}"
        ticks = await ticks_of(url)
        await wait_for(lambda: _at_least(url, ticks + 4), timeout_s=30, what="4 ticks of the new leader")
        adopted = await assert_one_instance_one_job(client, base, ready.job_id or "")
        assert adopted.state is S.READY
        print(f"\nstandby {standby} took over {took_over_s:.1f}s after the leader's kill -9 (lease TTL {LEASE_TTL_S}s)")
    except BaseException:
        print(processes.logs())
        raise
    finally:
        processes.close()
        await cancel_all(base)


async def _with_job(client: aioredis.Redis, settings: Settings) -> InstanceRecord | None:
    return next((r for r in await records(client, settings) if r.job_id is not None), None)


async def _ready(client: aioredis.Redis, settings: Settings) -> InstanceRecord | None:
    found = await records(client, settings, S.READY)
    return found[0] if found else None


async def _at_least(url: str, ticks: float) -> bool:
    return await ticks_of(url) >= ticks


async def _holder_is(lease: LeaderLease, holder: str) -> bool:
    return await lease.holder() == holder
