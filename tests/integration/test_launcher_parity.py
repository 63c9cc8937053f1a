"""Production = simulator: the launcher's tick, fed a day of a trace, decides what the simulator decides.

A ServeGen m-small client's first active day is drawn as `slurmless simulate` draws it and replayed on
a fake clock: every request goes through the real admit script (real Redis), and the real launcher
tick (real Slurm cluster) runs every 20 minutes of it. At each tick the launcher's learnt inputs (the gap
history the admit script recorded, the forecast folded from its demand slots) must equal the simulator's
(`tracesim.parity`), and so must the decision's terms: the same function on the same inputs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.desired import MIX, policy_spec
from policies import currency
from policies.combine import decide
from policies.types import LoadSnapshot, ModelState, Reason
from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import launcher_env, records, slurm_for
from tracesim.arrivals import generate_arrivals, load_service_times
from tracesim.parity import forecast_at, gap_history_at
from tracesim.run import DEFAULT_AZURE_CSV, TRACES_DIR
from tracesim.trace import WINDOW_S, load_model_trace
from warmpool.instances import LIVE_STATES, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.redisio import awaited
from warmpool.routing import Routing
from warmpool.snapshot import SnapshotReader
from warmpool.specs import ModelSpec, Policy, Resources

CLIENT = TRACES_DIR / "servegen-language/m-small/chunk-29-trace.csv"
FIRST_WINDOW = 119
"""The client's first window with requests; the slice after it has at most 64 requests a window, so every
drawn arrival is one request (no sub-sampling)."""
BASE_S = 2_800 * 7 * 86_400.0
"""Trace time 0 on the fake clock: a whole number of weeks after the epoch, so time of week agrees."""
COLD_S = 155.0
RATE = 0.1
"""A rate other than the default, set through the launcher's settings: the knob reaches the tick.

No replica is ever held here (a first day's forecast has seen no slot twice, so it never pre-warms, and
nothing waits): a real job started on this fake clock would record a queue wait of years and change the
launcher's expected cold start. The keep-alive window itself is compared on both histories instead."""
SLICE_WINDOWS = 81
"""13.5 hours: busy hours, a long idle stretch, and demand coming back."""
TICK_EVERY_S = 300.0


def _spec() -> ModelSpec:
    return ModelSpec(
        name="trace-29",
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy.model_validate({"max_replicas": 1}),
    )


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(
        slurm_cluster,
        redis_server,
        tmp_path / "jobs",
        default_queue_wait_s=45.0,
        default_load_s=COLD_S - 45.0,
        exchange_rate=RATE,
    ) as pair:
        yield pair


def _terms(reasons: tuple[Reason, ...]) -> dict[str, tuple[int, str]]:
    return {r.policy: (r.replicas, r.detail) for r in reasons}


@pytest.mark.slurm
async def test_the_launcher_tick_decides_what_the_simulator_decides(env: tuple[Settings, aioredis.Redis]) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    trace = load_model_trace(CLIENT)
    arrivals = generate_arrivals(trace, np.random.default_rng([0, 29, 0]), load_service_times(DEFAULT_AZURE_CSV))
    day_end_s = (FIRST_WINDOW + SLICE_WINDOWS) * WINDOW_S
    times = arrivals.times_s[arrivals.times_s < day_end_s]
    assert np.all(arrivals.weights[: times.size] == 1.0) and times.size > 300
    spec = _spec()
    await ModelStore(client, keys).put(spec)
    routing = Routing(client, keys)
    launcher = Launcher(client, slurm_for(settings), settings.launcher, callback_url="http://127.0.0.1:9", keys=keys)
    pspec = policy_spec(spec, expected_cold_start_s=COLD_S, default_keepalive_s=settings.launcher.default_keepalive_s)
    reader = SnapshotReader(client, keys)
    mix = replace(MIX, exchange_rate=RATE)
    compared = 0
    try:
        # The first tick tells the admit script the expected cold start its waits are priced with.
        await launcher.tick(now_s=BASE_S + FIRST_WINDOW * WINDOW_S - 60.0)
        stats = await awaited(client.hget(keys.model_stats(spec.name), "gap_cold_s"))
        assert stats is not None and float(stats) == COLD_S
        k = 0
        # Ticks 150 s and 450 s into each slot: never in the launcher's 30-s grace before a slot is folded.
        for tick_s in np.arange(FIRST_WINDOW * WINDOW_S + 150.0, day_end_s, TICK_EVERY_S):
            while k < times.size and times[k] < tick_s:
                rid = f"r{k}"
                await routing.admit(
                    spec.name, "gw1", rid, now_s=BASE_S + float(times[k]), queue_max=10_000, global_max=100_000
                )
                # The client gives up at once: nothing waits, so only the learnt terms differ from zero.
                await routing.cancel(spec.name, "gw1", rid)
                k += 1
            now_s = BASE_S + float(tick_s)
            live = [r for r in await records(client, settings) if r.state in LIVE_STATES]
            held = sum(1 for r in live if r.state is not InstanceState.DRAINING)
            snap = (await reader.read([spec.name]))[spec.name]
            report = await launcher.tick(now_s=now_s)
            # The decision the tick acted on (`Keys.desired` is rewritten only when its drivers change).
            launched = launcher.act.board.last(spec.name)

            shifted = times[:k] + BASE_S
            sim_gaps = gap_history_at(shifted, now_s, COLD_S)
            sim_fc = forecast_at(
                np.concatenate((np.zeros(int(BASE_S // WINDOW_S)), arrivals.window_counts)),
                int(BASE_S // WINDOW_S) + FIRST_WINDOW,
                now_s,
            )
            # The learnt inputs: the gap history the admit script kept is the simulator's.
            assert (snap.gaps is None) == (sim_gaps is None)
            if snap.gaps is not None and sim_gaps is not None:
                np.testing.assert_allclose(snap.gaps.counts, sim_gaps.counts)
                np.testing.assert_allclose(snap.gaps.waits_s, sim_gaps.waits_s, rtol=1e-6, atol=1e-3)
                for start_s in (now_s, float(shifted[-1])):
                    assert (
                        currency.keepalive_s(snap.gaps, pspec, RATE, start_s)[0]
                        == (currency.keepalive_s(sim_gaps, pspec, RATE, start_s)[0])
                    )
            load = LoadSnapshot(held_replicas=held, last_activity_s=float(shifted[-1]) if k else None)
            state = ModelState(spec=pspec, load=load, forecast=sim_fc, mix=mix, gaps=sim_gaps)
            simulated = decide(state, now_s)
            # The decision's terms: the same reactive and forecast answers (with their reasons, so the
            # same pre-warm threshold), and the same keep-alive verdict.
            ours, theirs = _terms(launched.reasons), _terms(simulated.reasons)
            for term in ("reactive", "forecast", "idle-to-zero"):
                assert ours.get(term) == theirs.get(term), (tick_s, term)
            assert report.desired[spec.name] == simulated.replicas, tick_s
            assert held == 0
            compared += 1
        assert compared == 2 * SLICE_WINDOWS
        assert k > 0.95 * times.size  # all but the arrivals after the last tick
    finally:
        await launcher.aclose()
