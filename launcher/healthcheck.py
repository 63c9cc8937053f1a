"""Probing engines outside the tick: loading instances until they are ready, ready ones for their health.

`watch` probes a registered instance until it serves (fast around the model's shortest observed
load, slower for a slow loader) and routes to it at once. `run` is the ready instances' health
check, a loop of its own beside the tick.

Probes run without the launcher's lock (200 probes take ~0.5 s); their answers are acted on under
it, through the `Actuator`, for instances still ready at the same address. An instance that missed
`unhealthy_after` probes in a row fails; a healthy one gets adapters registered since it started,
and is routed again if a gateway took it out of routing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from launcher import lifecycle as lc
from launcher.health import Health, loading_probe_delay_s, probe_all
from launcher.report import TickReport
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.specs import ModelSpec

if TYPE_CHECKING:
    from launcher.controller import Actuator

S = InstanceState


class HealthCheck:
    """One round of the ready instances' health check (`run`), applied by the `Actuator` under `lock`."""

    def __init__(self, act: Actuator, lock: asyncio.Lock) -> None:
        self.act = act
        self.lock = lock
        self.watchers: dict[str, asyncio.Task[None]] = {}
        """Loading instances probed until ready, outside the tick (`watch`)."""

    def watch(self, iid: str, clock: Callable[[], float]) -> None:
        """Probe a registered instance until it is ready (a runner concern: this reads `clock`)."""
        self.watchers[iid] = asyncio.create_task(self._watch(iid, clock))

    async def aclose(self) -> None:
        for task in self.watchers.values():
            task.cancel()
        for task in list(self.watchers.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.watchers.clear()

    async def run(self, *, now_s: float) -> dict[str, str]:
        """Probe every ready instance's `/health`; fail those that missed `unhealthy_after` probes in a row.

        Runs in its own loop (`health_check_s`), not in the tick: 200 ready instances cost ~0.5 s of
        probing, which held the tick (and the lock on-demand submissions wait for) for as long. The
        probes run without the lock; their answers are acted on under it, for instances still ready
        at the same address. Healthy instances also get adapters registered since they started, and
        are routed again if a gateway took them out of routing. Returns the instances failed.
        """
        targets = [
            r
            for r in await self.act.instances.all()
            if r.state is S.READY and r.url is not None and r.cluster == self.act.cluster
        ]
        await self.act.prober.forget({r.url for r in targets if r.url is not None})
        probes = await probe_all(targets, lambda r: self.act.prober.alive(r.url or "", r.api_key))
        report = TickReport()
        async with self.lock:
            specs = self.act.specs or {s.name: s for s in await self.act.models.all()}
            current = {r.id: r for r in await self.act.instances.all() if r.state is S.READY}
            adapters: dict[str, list[ModelSpec]] = {}
            for spec in specs.values():
                if spec.instance_model != spec.name:
                    adapters.setdefault(spec.instance_model, []).append(spec)
            healthy: list[InstanceRecord] = []
            for probed, probe in zip(targets, probes, strict=True):
                record = current.get(probed.id)
                if record is None or record.url != probed.url:
                    continue
                if probe.health is Health.READY:
                    self.act.unhealthy.pop(record.id, None)
                    healthy.append(record)
                    if record.model in adapters:
                        await self.act.adapters.sync(record, adapters[record.model], now_s)
                    continue
                misses = self.act.unhealthy.get(record.id, 0) + 1
                self.act.unhealthy[record.id] = misses
                if misses >= self.act.settings.unhealthy_after:
                    await self.act.apply(
                        record, lc.Step((lc.Fail(f"engine unhealthy: {probe.detail}"),)), now_s, report
                    )
            await self._reroute(healthy, specs, now_s)
        return report.failed

    async def _reroute(self, healthy: list[InstanceRecord], specs: dict[str, ModelSpec], now_s: float) -> None:
        """Route again to healthy ready instances that left routing: a gateway stops routing to an
        instance it cannot connect to, and a passing connect error must cost at most one tick."""
        current = [r for r in healthy if r.state is S.READY]
        if not current:
            return
        async with self.act.redis.pipeline(transaction=False) as pipe:
            for r in current:
                pipe.zscore(self.act.keys.ready(r.model), r.id)
            scores = await pipe.execute()
        for record, score in zip(current, scores, strict=True):
            if score is None and record.model in specs:
                await self.act.reroute(record, specs[record.model], now_s)

    async def _watch(self, iid: str, clock: Callable[[], float]) -> None:
        """Probe a loading instance until it is ready, so it is routed to the moment it is.

        Probes come fast around the model's shortest observed load time and slow down to one per
        `health_poll_s` for a slow loader (`loading_probe_delay_s`).
        """
        try:
            first = await self.act.instances.get(iid)
            if first is None:
                return
            earliest_s = min((await self.act.history.get(first.model)).load_times_s, default=0.0)
            while True:
                since_s = first.timestamps.get(S.LOADING.value, first.state_since_s)
                loading_s = clock() - since_s
                await asyncio.sleep(loading_probe_delay_s(loading_s, earliest_s, self.act.settings.health_poll_s))
                record = await self.act.instances.get(iid)
                if record is None or record.state is not S.LOADING or record.url is None:
                    return
                spec = await self.act.models.get(record.model)
                if spec is None:
                    return
                probe = await self.act.prober.probe(record.url, record.api_key, spec.client_name)
                if probe.health is Health.READY:
                    async with self.lock:
                        current = await self.act.instances.get(iid)
                        if current is not None and current.state is S.LOADING:
                            await self.act.mark_ready(current, spec, clock())
                    return
        finally:
            self.watchers.pop(iid, None)
