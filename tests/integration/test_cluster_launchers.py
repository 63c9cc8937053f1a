"""Two clusters' launchers on one real Redis, each over its own `FakeSlurm`: who submits, who owns what.

The launchers are driven step by step (`tick`, `on_demand`) with the time passed in, so the order in
which they see each other's estimates is the test's to choose. The same behaviour on two real Slurm
clusters is tests/integration/test_two_clusters.py; this file covers the orders a real run rarely hits.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.lease import LeaderLease
from launcher.settings import LauncherSettings
from queue_gateway.pool_metrics import observe
from slurm.errors import SlurmUnavailable
from slurm.fake import FakeSlurm
from slurm.types import SlurmJob, StartEstimate
from warmpool.clusters import ClusterBoard
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.routing import Routing
from warmpool.specs import ModelSpec, Resources

S = InstanceState
T0 = 1_800_000_000.0


class SwitchableSlurm(FakeSlurm):
    """FakeSlurm whose controller can be taken down: every call then fails as Slurm unavailable."""

    down = False

    def _check(self, command: str) -> None:
        if self.down:
            raise SlurmUnavailable(command, "Unable to contact slurm controller (connect failure)")

    async def jobs(self) -> list[SlurmJob]:
        self._check("squeue")
        return await super().jobs()

    async def submit(self, script: str) -> int:
        self._check("sbatch")
        return await super().submit(script)

    async def estimate_start(
        self, script: str, *, partition: str | None = None, qos: str | None = None
    ) -> StartEstimate:
        self.calls["estimate_start"] += 1
        self._check("sbatch --test-only")
        self.calls["estimate_start"] -= 1
        return await super().estimate_start(script, partition=partition, qos=qos)


@dataclass
class Site:
    redis: aioredis.Redis
    keys: Keys
    slurm: dict[str, SwitchableSlurm]
    launchers: dict[str, Launcher]

    async def register(self, name: str, clusters: list[str] | None = None) -> ModelSpec:
        spec = ModelSpec(
            name=name,
            source=f"/models/{name}",
            resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60, clusters=clusters or []),
        )
        await ModelStore(self.redis, self.keys).put(spec)
        return spec

    async def records(self, model: str | None = None) -> list[InstanceRecord]:
        return await InstanceStore(self.redis, self.keys).all(model)

    async def tick_all(self, now_s: float) -> None:
        for launcher in self.launchers.values():
            await launcher.tick(now_s=now_s)


@pytest.fixture
async def site(redis_client: aioredis.Redis, tmp_path: Path) -> AsyncIterator[Site]:
    keys = Keys(f"cl{secrets.token_hex(3)}:")
    slurm = {name: SwitchableSlurm(now_s=T0) for name in ("a", "b")}
    launchers = {}
    for name, fake in slurm.items():
        settings = LauncherSettings(
            cluster=name, launcher_id=f"{name}-1", job_output_dir=tmp_path / "jobs", tick_s=1.0, lease_ttl_s=5.0
        )
        launchers[name] = Launcher(
            redis_client, fake, settings, callback_url="http://127.0.0.1:9", keys=keys, model_roots=[Path("/models")]
        )
    try:
        yield Site(redis_client, keys, slurm, launchers)
    finally:
        for launcher in launchers.values():
            await launcher.aclose()


async def test_the_cluster_that_starts_first_submits_and_the_other_waits_then_defers(site: Site) -> None:
    site.slurm["a"].estimates[(None, None)] = T0 + 3600  # a blocker holds a's GPUs for an hour
    await site.tick_all(T0)
    await site.register("m")
    # a hears the demand first: b is alive but has not estimated yet, so a waits rather than guess.
    assert await site.launchers["a"].on_demand("m", now_s=T0 + 0.1) is None
    iid = await site.launchers["b"].on_demand("m", now_s=T0 + 0.2)
    assert iid is not None
    assert await site.launchers["a"].on_demand("m", now_s=T0 + 3.0) is None
    [record] = await site.records("m")
    assert (record.id, record.cluster, record.state) == (iid, "b", S.PENDING)
    assert site.slurm["b"].calls["submit"] == 1 and site.slurm["a"].calls["submit"] == 0


async def test_when_the_other_cluster_is_chosen_the_waiting_one_submits_on_its_next_try(site: Site) -> None:
    site.slurm["b"].estimates[(None, None)] = T0 + 3600
    await site.tick_all(T0)
    await site.register("m")
    assert await site.launchers["a"].on_demand("m", now_s=T0 + 0.1) is None  # waits for b's estimate
    assert await site.launchers["b"].on_demand("m", now_s=T0 + 0.2) is None  # a starts first
    iid = await site.launchers["a"].on_demand("m", now_s=T0 + 0.5)
    [record] = await site.records("m")
    assert (record.id, record.cluster) == (iid, "a")
    # a's estimate was reused: one `sbatch --test-only` per cluster for the whole decision.
    assert site.slurm["a"].calls["estimate_start"] == 1 and site.slurm["b"].calls["estimate_start"] == 1


async def test_a_model_runs_only_where_it_is_allowed(site: Site) -> None:
    site.slurm["b"].estimates[(None, None)] = T0 + 3600
    await site.tick_all(T0)
    await site.register("m", clusters=["b"])
    assert await site.launchers["a"].on_demand("m", now_s=T0 + 0.1) is None
    iid = await site.launchers["b"].on_demand("m", now_s=T0 + 0.2)
    [record] = await site.records("m")
    assert (record.id, record.cluster) == (iid, "b")
    assert site.slurm["a"].calls["estimate_start"] == 0  # b had no rival: a single cluster's path


async def test_the_claim_and_the_capacity_check_stop_a_second_submission(site: Site) -> None:
    await site.tick_all(T0)
    spec = await site.register("m")
    board = ClusterBoard(site.redis, site.keys)
    act_a, act_b = site.launchers["a"].act, site.launchers["b"].act
    # Both estimate "now"; the tie goes to a, but b holds the claim (it decided on what it saw a moment ago).
    assert await act_b.submit(spec, now_s=T0 + 0.1, why="t", capacity_seen=0) is None  # waits for a
    assert await board.claim("m", "b", ttl_s=5.0)
    assert await act_a.submit(spec, now_s=T0 + 0.2, why="t", capacity_seen=0) is None
    assert site.slurm["a"].calls["submit"] == 0
    # b wrote its instance and gave the claim back: a now sees more capacity than it counted.
    await InstanceStore(site.redis, site.keys).put(InstanceRecord(id="fromb", model="m", cluster="b"))
    await board.release("m", "b")
    assert await act_a.submit(spec, now_s=T0 + 0.3, why="t", capacity_seen=0) is None
    assert site.slurm["a"].calls["submit"] == 0
    assert await act_a.submit(spec, now_s=T0 + 0.4, why="t", capacity_seen=1) is not None


async def test_a_cluster_whose_controller_is_down_keeps_serving_and_new_demand_goes_elsewhere(site: Site) -> None:
    await site.tick_all(T0)
    await site.register("m")
    # An instance of m is ready on a, routed to.
    ready = InstanceRecord(
        id="ona", model="m", cluster="a", state=S.READY, job_id="7", host="127.0.0.1", port=9, created_s=T0
    )
    await InstanceStore(site.redis, site.keys).put(ready)
    await Routing(site.redis, site.keys).activate("m", "ona", cap=4)
    site.slurm["a"].down = True
    await site.tick_all(T0 + 1)
    # Neither launcher touched it: a cannot see its job, b does not own it.
    [record] = await site.records("m")
    assert record.state is S.READY
    assert await site.redis.zscore(site.keys.ready("m"), "ona") is not None
    statuses = await ClusterBoard(site.redis, site.keys).statuses()
    assert not statuses["a"].slurm_ok and "Slurm unavailable" in (statuses["a"].error or "")
    # New demand: a is no rival of b's any more, so b submits at once, as a single cluster does.
    await site.register("n")
    assert await site.launchers["a"].on_demand("n", now_s=T0 + 1.1) is None
    iid = await site.launchers["b"].on_demand("n", now_s=T0 + 1.2)
    [record] = await site.records("n")
    assert (record.id, record.cluster) == (iid, "b")
    assert site.slurm["a"].calls["submit"] == 0 and site.slurm["b"].calls["estimate_start"] == 0


async def test_each_launcher_reconciles_only_its_own_cluster(site: Site) -> None:
    site.slurm["a"].estimates[(None, None)] = T0 + 3600
    await site.tick_all(T0)
    await site.register("m")
    await site.launchers["a"].on_demand("m", now_s=T0 + 0.1)
    iid = await site.launchers["b"].on_demand("m", now_s=T0 + 0.2)
    # a's squeue does not list b's job; b's does. Neither may call the instance lost.
    for second in range(1, 4):
        await site.tick_all(T0 + second)
    [record] = await site.records("m")
    assert (record.id, record.state) == (iid, S.PENDING)
    assert site.slurm["a"].calls["cancel"] == 0 and site.slurm["b"].calls["cancel"] == 0


async def test_the_pool_metrics_see_a_leader_of_any_cluster(site: Site) -> None:
    assert not (await observe(site.redis, site.keys, [], [], now_s=T0, default_cold_budget_s=60)).leader_present
    await site.tick_all(T0)  # the clusters are known now, but nobody holds a lease yet
    assert not (await observe(site.redis, site.keys, [], [], now_s=T0, default_cold_budget_s=60)).leader_present
    lease = LeaderLease(site.redis, "b-1", ttl_s=5.0, key=site.keys.cluster_leader("b"))
    assert await lease.acquire_or_renew()
    assert (await observe(site.redis, site.keys, [], [], now_s=T0, default_cold_budget_s=60)).leader_present
    assert await site.redis.exists(site.keys.leader) == 0  # b's lease is its own, not the single-cluster key


async def test_an_estimate_the_controller_did_not_answer_reports_the_cluster_down_at_once(site: Site) -> None:
    await site.tick_all(T0)
    await site.register("m")
    board = ClusterBoard(site.redis, site.keys)
    site.slurm["a"].down = True  # before a's next squeue: only its estimate finds out
    assert await site.launchers["a"].on_demand("m", now_s=T0 + 0.1) is None
    status = (await board.statuses())["a"]
    assert not status.slurm_ok and "Slurm unavailable" in (status.error or "")
    mine = (await board.estimates("m"))["a"]
    assert mine.est_start_s is None and "Slurm unavailable" in (mine.detail or "")
    # b no longer waits for a: it submits as a single cluster would.
    iid = await site.launchers["b"].on_demand("m", now_s=T0 + 0.2)
    [record] = await site.records("m")
    assert (record.id, record.cluster) == (iid, "b")
    assert site.slurm["b"].calls["estimate_start"] == 0
