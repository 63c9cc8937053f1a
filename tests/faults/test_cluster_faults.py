"""One cluster's controller down, with two clusters behind one gateway (tests/fixtures/two_clusters.py).

Not on the suite's shared single-cluster stack: this fault needs a second cluster and kills a slurmctld,
so it starts its own pair and leaves nothing behind.
"""

from __future__ import annotations

import time

import httpx
import pytest

from slurmless.localredis import LocalRedis
from testing.launcher import wait_for
from tests.faults.results import record
from tests.fixtures.two_clusters import two_clusters
from warmpool.clusters import ClusterBoard
from warmpool.events import EventLog

pytestmark = [pytest.mark.slurm, pytest.mark.faults]


async def test_one_clusters_controller_down(redis_server: LocalRedis) -> None:
    async with two_clusters(redis_server) as site, httpx.AsyncClient(timeout=httpx.Timeout(150.0, connect=10)) as http:
        board = ClusterBoard(site.redis, site.keys)

        async def status_ok(name: str) -> bool | None:
            status = (await board.statuses()).get(name)
            return None if status is None else status.slurm_ok

        await wait_for(lambda: status_ok("a"), timeout_s=30, what="cluster a reported")
        await wait_for(lambda: status_ok("b"), timeout_s=30, what="cluster b reported")
        await site.register("on-a", clusters=["a"])
        await site.register("on-b", clusters=["b"])
        for model in ("on-a", "on-b"):
            assert (await site.ask(http, model)).status_code == 200
        assert (await site.ready_on("on-a"), await site.ready_on("on-b")) == ("a", "b")

        await site.register("anywhere")
        site.kill_slurmctld("a")
        killed_s = time.monotonic()
        # New demand at once, for a model either cluster may run: it goes to b, whose launcher does not
        # wait for a's (its `sbatch --test-only` hangs until Slurm's own timeouts, ~30 s here).
        response = await site.ask(http, "anywhere")
        recovery_s = time.monotonic() - killed_s
        placed = await site.ready_on("anywhere")
        # Both ready instances keep serving: a's engine still runs, only its controller is gone.
        served = [(await site.ask(http, m)).status_code for m in ("on-a", "on-b", "on-a", "on-b")]

        async def a_down() -> bool:
            return await status_ok("a") is False

        await wait_for(a_down, timeout_s=90, what="a's launcher to report Slurm unavailable")
        noticed_s = time.monotonic() - killed_s
        unavailable = await EventLog(site.redis, site.keys).recent(count=500, kind="slurm.unavailable")
        status = (await board.statuses())["a"]
        record(
            f"one cluster's controller down (slurmctld of a killed; a {site.clusters['a'].slurm_version} and "
            f"b {site.clusters['b'].slurm_version} behind one gateway)",
            "both clusters' ready instances keep serving; new demand is placed on b",
            f"new model {response.status_code} from cluster {placed} {recovery_s:.1f}s after the kill; "
            f"ready ones served {served}; a reported 'Slurm unavailable' after {noticed_s:.1f}s",
            recovery_s,
        )
        assert served == [200, 200, 200, 200]
        assert response.status_code == 200 and placed == "b", response.text
        assert unavailable and "Slurm unavailable" in str(unavailable[0].detail)
        assert "Slurm unavailable" in (status.error or ""), status
        assert [r.cluster for r in await site.instances("anywhere")] == ["b"]
