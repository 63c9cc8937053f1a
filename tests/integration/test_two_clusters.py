"""Two real Slurm clusters (22.05 and 24.11, on their own ports and directories) behind one gateway, a
launcher each, one Redis: a model goes to the cluster where it starts first, and the gateway routes to
instances on both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from slurmless.localredis import LocalRedis
from testing.launcher import wait_for
from tests.fixtures.two_clusters import TwoClusters, two_clusters
from warmpool.clusters import ClusterBoard
from warmpool.instances import InstanceState

pytestmark = pytest.mark.slurm


@pytest.fixture
async def site(redis_server: LocalRedis) -> AsyncIterator[TwoClusters]:
    async with two_clusters(redis_server) as running:
        yield running


async def test_a_model_starts_where_it_starts_first_and_both_clusters_serve(site: TwoClusters) -> None:
    board = ClusterBoard(site.redis, site.keys)

    async def both_alive() -> bool:
        statuses = await board.statuses()
        return all(name in statuses and statuses[name].slurm_ok for name in ("a", "b"))

    await wait_for(both_alive, timeout_s=30, what="both launchers to report their cluster")
    blocker = await site.block("a")
    await site.register("free-first")
    async with httpx.AsyncClient(timeout=httpx.Timeout(150.0, connect=10.0)) as http:
        # a is full for an hour: its `sbatch --test-only` says so, b's says now.
        response = await site.ask(http, "free-first")
        assert response.status_code == 200, response.text
        assert response.headers["x-slurmless-cold-start"] == "true"
        [record] = await site.instances("free-first")
        assert record.cluster == "b" and record.state is InstanceState.READY
        estimates = await board.estimates("free-first")
        assert estimates["b"].est_start_s is not None and estimates["a"].est_start_s is not None
        assert estimates["a"].est_start_s - estimates["b"].est_start_s > 600

        # Free a; a model only a may run starts there. The gateway routes to both clusters' instances.
        site.clusters["a"].run(["scancel", blocker])
        await site.register("only-a", clusters=["a"])
        response = await site.ask(http, "only-a")
        assert response.status_code == 200, response.text
        assert await site.ready_on("only-a") == "a"
        for model in ("free-first", "only-a", "free-first", "only-a"):
            response = await site.ask(http, model)
            assert response.status_code == 200 and response.headers["x-slurmless-cold-start"] == "false"
    # One instance each, no second submission anywhere.
    assert [r.cluster for r in await site.instances("free-first")] == ["b"]
    assert [r.cluster for r in await site.instances("only-a")] == ["a"]

    for name in ("a", "b"):
        prefix = site.settings[name].launcher.job_name_prefix
        names = site.clusters[name].run(["squeue", "-h", "-o", "%j"]).split()
        assert len([n for n in names if n.startswith(prefix)]) == 1, (name, names)
