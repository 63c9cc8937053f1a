"""The ready instances' health check, a loop of its own beside the tick.

Probes run without the launcher's lock (200 probes take ~0.5 s); their answers are acted on under
it, through the `Actuator`, for instances still ready at the same address. An instance that missed
`unhealthy_after` probes in a row fails; a healthy one gets adapters registered since it started,
and is routed again if a gateway took it out of routing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from launcher import lifecycle as lc
from launcher.health import Health, probe_all
from launcher.report import TickReport
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.specs import ModelKind, ModelSpec

if TYPE_CHECKING:
    from launcher.controller import Actuator

S = InstanceState


class HealthCheck:
    """One round of the ready instances' health check (`run`), applied by the `Actuator` under `lock`."""

    def __init__(self, act: Actuator, lock: asyncio.Lock) -> None:
        self.act = act
        self.lock = lock

    async def run(self, *, now_s: float) -> dict[str, str]:
        """Probe every ready instance's `/health`; fail those that missed `unhealthy_after` probes in a row.

        Runs in its own loop (`health_check_s`), not in the tick: 200 ready instances cost ~0.5 s of
        probing, which held the tick (and the lock on-demand submissions wait for) for as long. The
        probes run without the lock; their answers are acted on under it, for instances still ready
        at the same address. Healthy instances also get adapters registered since they started, and
        are routed again if a gateway took them out of routing. Returns the instances failed.
        """
        targets = [r for r in await self.act.instances.all() if r.state is S.READY and r.url is not None]
        await self.act.prober.forget({r.url for r in targets if r.url is not None})
        probes = await probe_all(targets, lambda r: self.act.prober.alive(r.url or "", r.api_key))
        report = TickReport()
        async with self.lock:
            specs = self.act.specs or {s.name: s for s in await self.act.models.all()}
            current = {r.id: r for r in await self.act.instances.all() if r.state is S.READY}
            adapters: dict[str, list[ModelSpec]] = {}
            for spec in specs.values():
                if spec.kind is ModelKind.LORA and spec.base_model:
                    adapters.setdefault(spec.base_model, []).append(spec)
            healthy: list[InstanceRecord] = []
            for probed, probe in zip(targets, probes, strict=True):
                record = current.get(probed.id)
                if record is None or record.url != probed.url:
                    continue
                if probe.health is Health.READY:
                    self.act.unhealthy.pop(record.id, None)
                    healthy.append(record)
                    if record.model in adapters:
                        await self.act.sync_adapters(record, adapters[record.model], now_s)
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
