"""Several clusters: the launcher's side of `launcher.clusters`, with the I/O its decision needs.

`ClusterPlacer` reports this cluster's status every tick, publishes this cluster's start estimate for a
model that needs an instance (reused while fresh, so a model waiting for its placement costs one
`sbatch --test-only` per `cluster_estimate_ttl_s`, not one per tick), takes the decision
(`choose_cluster`) and, when it is this cluster's, submits under the model's claim.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from launcher.clusters import Verdict, choose_cluster, rivals
from launcher.scaling import capacity_of
from launcher.settings import LauncherSettings
from launcher.submission import Placement, place
from slurm.backend import SlurmBackend
from slurm.errors import SlurmError, SlurmTimeout, SlurmUnavailable
from warmpool.clusters import ClusterBoard, ClusterEstimate, ClusterStatus
from warmpool.events import EventLog
from warmpool.instance_store import InstanceStore
from warmpool.instances import LIVE_STATES
from warmpool.keys import Keys
from warmpool.specs import ModelSpec

NO_START = "Slurm refused the job or did not answer"


class ClusterPlacer:
    """Which cluster submits a model's next instance, as seen from this cluster's launcher."""

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, slurm: SlurmBackend, settings: LauncherSettings, events: EventLog
    ) -> None:
        self.board = ClusterBoard(redis, keys)
        self.instances = InstanceStore(redis, keys)
        self.slurm = slurm
        self.settings = settings
        self.events = events
        self.cluster = settings.cluster
        self._reported: ClusterStatus | None = None

    @property
    def alive_s(self) -> float:
        """How long a cluster counts as alive after its leader last reported: a few ticks, at least a lease."""
        return max(3 * self.settings.tick_s, self.settings.lease_ttl_s)

    async def report(self, launcher_id: str, now_s: float, slurm_error: str | None) -> None:
        """Tell the other clusters' launchers that this one is alive and whether its Slurm answered: at once
        when that changed, else a few times per `alive_s` (a steady tick writes nothing)."""
        last = self._reported
        ok = slurm_error is None
        same = last is not None and last.slurm_ok == ok and last.launcher == launcher_id
        if same and last is not None and 0 <= now_s - last.seen_s <= self.alive_s / 3:
            return
        status = ClusterStatus(cluster=self.cluster, launcher=launcher_id, seen_s=now_s, slurm_ok=ok, error=slurm_error)
        await self.board.report(status)
        self._reported = status

    async def rivals(self, spec: ModelSpec, now_s: float) -> list[str]:
        """The other live clusters that may run `spec`; none: this launcher submits as a single cluster does."""
        return rivals(self.cluster, spec.resources.clusters, await self.board.statuses(), now_s, self.alive_s)

    async def estimate(
        self, spec: ModelSpec, render: Callable[[str | None, str | None], str], now_s: float
    ) -> tuple[Placement, float | None]:
        """This cluster's placement and start estimate for `spec`, published for the others (or reused)."""
        mine = (await self.board.estimates(spec.name)).get(self.cluster)
        if mine is not None and 0 <= now_s - mine.at_s <= self.settings.cluster_estimate_ttl_s:
            return (mine.partition, mine.qos), mine.est_start_s
        errors: list[SlurmError] = []
        placement, est_s = await place(self.slurm, spec, render, self.settings, always_estimate=True, errors=errors)
        estimate = ClusterEstimate(
            cluster=self.cluster,
            est_start_s=est_s,
            at_s=now_s,
            partition=placement[0],
            qos=placement[1],
            detail=None if est_s is not None else (str(errors[-1])[:300] if errors else NO_START),
        )
        await self.board.publish_estimate(spec.name, estimate, ttl_s=2 * self.settings.cluster_estimate_ttl_s)
        if est_s is None and errors and all(isinstance(e, SlurmUnavailable | SlurmTimeout) for e in errors):
            # Tell the others now rather than at the next squeue, which will wait out the same timeouts.
            launcher_id = self._reported.launcher if self._reported is not None else self.settings.launcher_id
            await self.report(launcher_id or "launcher", now_s, str(errors[-1])[:300])
            await self.events.record("slurm.unavailable", now_s=now_s, model=spec.name, error=str(errors[-1])[:300])
        return placement, est_s

    async def submit_if_chosen(
        self,
        spec: ModelSpec,
        now_s: float,
        capacity_seen: int | None,
        submit: Callable[[], Awaitable[str | None]],
    ) -> str | None:
        """Run `submit` if this cluster's start is the earliest, under the model's claim, and only while no
        other cluster added an instance since the caller counted `capacity_seen`; the new instance id or None."""
        choice = choose_cluster(
            self.cluster,
            spec.resources.clusters,
            await self.board.statuses(),
            await self.board.estimates(spec.name),
            now_s,
            alive_s=self.alive_s,
            fresh_s=self.settings.cluster_estimate_ttl_s,
            wait_s=self.settings.cluster_estimate_wait_s,
        )
        if choice.verdict is not Verdict.SUBMIT:
            return None
        if not await self.board.claim(spec.name, self.cluster, ttl_s=self.settings.placement_claim_ttl_s):
            return None
        try:
            live = [r for r in await self.instances.all(spec.name) if r.state in LIVE_STATES]
            if capacity_seen is not None and capacity_of(live) > capacity_seen:
                return None  # another cluster placed it first
            await self.events.record(
                "placement.cluster", now_s=now_s, model=spec.name, cluster=self.cluster, reason=choice.reason
            )
            return await submit()
        finally:
            await self.board.release(spec.name, self.cluster)
