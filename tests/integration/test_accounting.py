"""Accounting on the real local cluster (slurmdbd + MariaDB + slurmctld): accounts, QOS limits and how
the launcher reports them.

A tenant's jobs run under its Slurm account; a QOS limit that holds a job is a pending reason in words
(model phase, events); one that refuses the submission (`MaxSubmitJobs`) makes the model wait with a
bounded number of `sbatch` calls and never marks it broken.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from launcher.history import HistoryStore
from launcher.service import LauncherService
from slurm.localcluster import LocalCluster, LocalClusterError
from slurm.types import SlurmJob
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import active_jobs, launcher_env, records, wait_for
from warmpool.events import Event, EventLog
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.phase import ModelPhase, Phase, PhaseBoard
from warmpool.routing import Routing
from warmpool.settings import RegistrySettings, SiteTenantLimits, TenantLimits
from warmpool.specs import ModelSpec, Policy, Resources
from warmpool.tenants import TenantSpec, TenantStore

pytestmark = pytest.mark.slurm

S = InstanceState

ACCOUNT = "team-a"
GRACE_S = 20


@pytest.fixture(scope="module")
def accounts(accounting_cluster: LocalCluster) -> LocalCluster:
    """The accounting cluster with account `team-a` for root and three QOS, each with one limit."""
    c = accounting_cluster
    c.sacctmgr("add", "account", ACCOUNT, "Description=tests", "Organization=slurmless")
    c.sacctmgr("add", "qos", "one", "MaxJobsPerUser=1")
    c.sacctmgr("add", "qos", "sub1", "MaxSubmitJobsPerUser=1")
    # QOS preemption: `research` jobs cancel `llm` jobs after a grace time (SIGTERM and the job's own signal first).
    c.sacctmgr("add", "qos", "llm", f"GraceTime={GRACE_S}", "PreemptMode=cancel")
    c.sacctmgr("add", "qos", "research", "Preempt=llm")
    c.sacctmgr("add", "user", "root", f"account={ACCOUNT}")
    c.sacctmgr("modify", "user", "root", "set", "qos+=one,sub1,llm,research")
    return c


@pytest.fixture
async def env(
    accounts: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(accounts, redis_server, tmp_path / "jobs", max_failures=3, max_backoff_s=2.0) as pair:
        settings, client = pair
        site = SiteTenantLimits(accounts=[ACCOUNT], qos=["one", "sub1", "llm"])
        yield settings.model_copy(update={"registry": RegistrySettings(tenant_limits=site)}), client


class Running:
    """A LauncherService running in this event loop."""

    def __init__(self, settings: Settings) -> None:
        self.service = LauncherService(settings)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.service.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await self.task


def _model(name: str, **resources: object) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/sim",
        resources=Resources.model_validate({"gpus": 1, "cpus": 1, "mem_mb": 256, "time_limit_min": 60, **resources}),
        policy=Policy(min_replicas=1, max_replicas=1),
    )


def _blocker(cluster: LocalCluster, qos: str) -> int:
    """A job outside the launcher's name prefix using the user's one slot of `qos`."""
    out = cluster.run(
        [
            "sbatch",
            "--parsable",
            "-J",
            "blocker",
            "-o",
            "/dev/null",
            "-A",
            ACCOUNT,
            f"--qos={qos}",
            "--wrap",
            "sleep 300",
        ]
    )
    return int(out.strip().split(";")[0])


async def _phase(client: aioredis.Redis, settings: Settings, model: str) -> ModelPhase:
    return await PhaseBoard(client, Keys(settings.redis.key_prefix)).get(model)


async def _events(client: aioredis.Redis, settings: Settings, kind: str) -> list[Event]:
    return await EventLog(client, Keys(settings.redis.key_prefix)).recent(count=200, kind=kind)


def _when(
    probe: Callable[[ModelPhase], bool], phase: Callable[[], Awaitable[ModelPhase]]
) -> Callable[[], Awaitable[ModelPhase | None]]:
    async def check() -> ModelPhase | None:
        seen = await phase()
        return seen if probe(seen) else None

    return check


async def _some_jobs(settings: Settings) -> list[SlurmJob] | None:
    return await active_jobs(settings) or None


def test_jobs_need_an_association(accounts: LocalCluster) -> None:
    proc = subprocess.run(
        ["sbatch", "-A", "nobody", "--wrap", "true"],
        env={**os.environ, **accounts.env},
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert proc.returncode != 0 and "Invalid account" in proc.stderr
    with pytest.raises(LocalClusterError, match="Invalid account"):
        accounts.run(["sbatch", "-A", "nobody", "--wrap", "true"])


async def test_a_tenants_job_runs_under_its_account(env: tuple[Settings, aioredis.Redis]) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await TenantStore(client, keys).create(TenantSpec(name="lab", account=ACCOUNT))
    await ModelStore(client, keys).put(_model("owned").model_copy(update={"owner_tenant": "lab"}))
    run = Running(settings)
    try:
        jobs = await wait_for(lambda: _some_jobs(settings), timeout_s=30, what="the tenant's job")
        assert [j.account for j in jobs] == [ACCOUNT]
    finally:
        await run.close()


async def test_a_qos_job_limit_is_a_pending_reason_in_words(
    env: tuple[Settings, aioredis.Redis], accounts: LocalCluster
) -> None:
    settings, client = env
    blocker = _blocker(accounts, "one")
    run = None
    try:
        await ModelStore(client, Keys(settings.redis.key_prefix)).put(_model("limited", account=ACCOUNT, qos=["one"]))
        run = Running(settings)
        phase = await wait_for(
            _when(lambda p: p.detail is not None, lambda: _phase(client, settings, "limited")),
            timeout_s=30,
            what="a pending reason in words",
        )
        assert (phase.phase, phase.slurm_reason) == (Phase.PENDING, "QOSMaxJobsPerUserLimit")
        assert phase.detail == f"waiting: QOS limit QOSMaxJobsPerUserLimit (qos one, account {ACCOUNT})"
        held = await _events(client, settings, "instance.held")
        assert [e.detail["reason"] for e in held] == [phase.detail]
        # The limit frees up when the other job ends: the same instance starts, nothing was resubmitted.
        accounts.run(["scancel", str(blocker)])
        ready = await wait_for(
            _when(lambda p: p.phase is Phase.READY, lambda: _phase(client, settings, "limited")),
            timeout_s=60,
            what="the model ready once the blocker ended",
        )
        assert ready.detail is None
        assert len(await _events(client, settings, "instance.submitted")) == 1
    finally:
        accounts.run(["scancel", str(blocker)])
        if run is not None:
            await run.close()


async def test_a_qos_submit_limit_backs_off_and_never_breaks_the_model(
    env: tuple[Settings, aioredis.Redis], accounts: LocalCluster
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    blocker = _blocker(accounts, "sub1")
    run = None
    try:
        # A tenant's model (its account is the tenant's) with a budget of two job-hours a day: refusals
        # must not use it up, or the model could not start once the limit has room.
        budget = TenantLimits(max_gpu_hours_per_day=2.0)
        await TenantStore(client, keys).create(TenantSpec(name="capped-lab", account=ACCOUNT, limits=budget))
        spec = _model("capped", qos=["sub1"]).model_copy(update={"owner_tenant": "capped-lab"})
        await ModelStore(client, keys).put(spec)
        run = Running(settings)
        started_s = time.monotonic()
        phase = await wait_for(
            _when(lambda p: p.detail is not None, lambda: _phase(client, settings, "capped")),
            timeout_s=30,
            what="the refusal reported as a wait",
        )
        assert phase.phase is Phase.PENDING
        assert phase.detail == f"waiting: QOS limit on submitted jobs (MaxSubmitJobs; qos sub1, account {ACCOUNT})"
        # Longer than max_failures (3) refusals would take without backoff; the model is never broken.
        await asyncio.sleep(8.0)
        elapsed_s = time.monotonic() - started_s
        refusals = await _events(client, settings, "model.held")
        assert 3 < len(refusals) <= 2 + elapsed_s / 2.0, (len(refusals), elapsed_s)
        hist = await HistoryStore(client, keys).get("capped")
        assert hist.broken_reason is None and hist.held_reason == phase.detail
        assert (await _phase(client, settings, "capped")).phase is Phase.PENDING
        assert not await _events(client, settings, "model.broken")
        assert not await _events(client, settings, "tenant.limit")
        # Once the limit has room, the next retry is accepted and the hold is over.
        accounts.run(["scancel", str(blocker)])
        await wait_for(
            _when(lambda p: p.phase is Phase.READY, lambda: _phase(client, settings, "capped")),
            timeout_s=60,
            what="the model ready once the blocker ended",
        )
        assert (await HistoryStore(client, keys).get("capped")).held_reason is None
    finally:
        accounts.run(["scancel", str(blocker)])
        if run is not None:
            await run.close()


async def test_qos_preemption_drains_the_instance_within_the_grace_time(
    env: tuple[Settings, aioredis.Redis], accounts: LocalCluster, tmp_path: Path
) -> None:
    """`PreemptType=preempt/qos`: a research job whose QOS preempts `llm` takes every GPU; the slurmless
    instance in `llm` leaves routing within the QOS's grace time, ends as an expected end (not a failure)
    and a replacement waits for room."""
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(_model("victim", account=ACCOUNT, qos=["llm"]))
    routing = Routing(client, keys)
    run = Running(settings)
    research_id: int | None = None
    try:
        first = await wait_for(lambda: _instance(client, settings, S.READY), timeout_s=60, what="a ready instance")
        assert [j.qos for j in await active_jobs(settings)] == ["llm"]
        research = ["-J", "research", "-A", ACCOUNT, "--qos=research", "--gres=gpu:4", "--time=5", "--mem=64M"]
        out = accounts.run(["sbatch", "--parsable", *research, f"--output={tmp_path}/r-%j.out", "--wrap", "sleep 120"])
        research_id = int(out.strip().split(";")[0])
        preempted_s = time.monotonic()

        async def out_of_routing() -> bool:
            return first.id not in await routing.inflight("victim")

        await wait_for(out_of_routing, timeout_s=GRACE_S, what="the instance out of routing within the grace")
        left_s = time.monotonic() - preempted_s
        ended = await wait_for(
            lambda: _instance(client, settings, S.GONE, first.id), timeout_s=GRACE_S + 30, what="the instance gone"
        )
        assert S.FAILED.value not in ended.timestamps, ended.reason
        await wait_for(
            lambda: _research_running(accounts, research_id or 0), timeout_s=GRACE_S + 30, what="the research job"
        )
        coming = await wait_for(
            lambda: _instance(client, settings, S.PENDING), timeout_s=60, what="a replacement waiting for room"
        )
        assert coming.id != first.id
        print(f"\npreempt/qos: out of routing {left_s:.1f}s after the research job's submission; ended: {ended.reason}")
    finally:
        await run.close()
        if research_id is not None:
            accounts.run(["scancel", str(research_id)])


async def _instance(
    client: aioredis.Redis, settings: Settings, state: InstanceState, iid: str | None = None
) -> InstanceRecord | None:
    found = [r for r in await records(client, settings, state) if iid is None or r.id == iid]
    return found[0] if found else None


async def _research_running(cluster: LocalCluster, job_id: int) -> bool:
    return cluster.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"]).strip() == "RUNNING"
