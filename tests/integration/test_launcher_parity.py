"""Production = simulator: the launcher, fed two days of a trace, holds and releases what the simulator does.

Two days of a ServeGen m-mid client (at most 64 requests a window, so every drawn arrival is one request)
are replayed twice:

- by the simulator's own replay (`tracesim.engine`), with the launcher's view of the model (its
  `ScalingSpec`) and a cold start of exactly `QUEUE_S` + `LOAD_S`;
- through the real launcher on a fake clock: every request goes through the real admit script (real
  Redis), a request that finds the model cold signals demand (`Launcher.on_demand`, as the service
  does), and the launcher's real tick runs whenever its own last decision says the answer may change
  (its recheck instant, its keep-alive deadline), whenever the world changes (a job starts, an engine
  becomes ready) and every `GRID_S` besides. Slurm is the in-memory `FakeSlurm` (the real one cannot
  follow a fake clock): a job starts `QUEUE_S` after its submission and registers, and its engine
  answers ready `LOAD_S` later.

The slice has cold starts, replicas held by the priced keep-alive across idle gaps, forecast pre-warms
and releases. Both must give the same sequence of (instant, replicas held) and the same ready instants.
Requests take no time (the simulator counts activity from a request's end, the gateway from its arrival).
The same drive with the gateway's recorded waits hidden from the launcher must not match: the test can fail.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.desired import MIX, policy_spec
from launcher.history import HistoryStore
from launcher.settings import LauncherSettings
from launcher.site_rate import HOUR_S
from policies import idle_budget
from policies.currency import CELLS, DEFAULT_BUDGET_SHARE, site_rate
from policies.types import GapHistory
from slurmless.localredis import LocalRedis
from testing.fakecluster import FakeCluster
from tracesim.arrivals import Arrivals, generate_arrivals
from tracesim.coldstart import ColdStartModel
from tracesim.engine import _Replay, prepare
from tracesim.run import TRACES_DIR
from tracesim.trace import ModelTrace, load_model_trace
from warmpool import snapshot
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.redisio import awaited, text
from warmpool.routing import AdmitOutcome, Routing
from warmpool.specs import ModelSpec, Policy, Resources

S = InstanceState
CLIENT = TRACES_DIR / "servegen-language/m-mid/chunk-69-trace.csv"
FIRST_WINDOW = 504
"""A window with requests: the slice starts there (the launcher's forecast starts at a model's first request)."""
SLICE_WINDOWS = 288
"""Two days: the second day's forecast has seen its slots, so it pre-warms."""
BASE_S = 2_800 * 7 * 86_400.0
"""Slice time 0 on the fake clock: a whole number of weeks after the epoch, so time of week agrees."""
QUEUE_S, LOAD_S = 45.0, 110.0
RATE = 0.3
"""An exchange rate other than the default, set through the launcher's settings: the knob reaches the tick."""
GRID_S = 600.0
"""The launcher also ticks at every demand slot's start, as a runner ticking every few seconds would
(its gap history is the one read at a slot's first tick)."""
STEP_S = 1e-3
"""As the simulator does, an instant at which a decision would stand (a deadline hit exactly) is retried
this much later."""
BUDGET_GPU_H = 8.0
"""An idle budget (GPU-hours a day) the slice's one model overspends at some hours and underspends at others."""
TICKS: list[float] = []
RATES: list[float] = []
"""The site's default rates the simulator chose, hour by hour (the default's parity test)."""


def _spec() -> ModelSpec:
    return ModelSpec(
        name="trace-69",
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60 * 24 * 7),
        policy=Policy.model_validate({"max_replicas": 1}),
    )


def _arrivals() -> tuple[np.ndarray, float]:
    """The slice's arrival times (slice seconds) and its end."""
    full = load_model_trace(CLIENT)
    sl = slice(FIRST_WINDOW, FIRST_WINDOW + SLICE_WINDOWS)
    trace = ModelTrace(
        "trace-69",
        full.ts_s[sl] - full.ts_s[FIRST_WINDOW],
        full.rate_per_s[sl],
        full.dist[sl],
        full.shape[sl],
        full.scale[sl],
    )
    arrivals = generate_arrivals(trace, np.random.default_rng([0, 69, 0]), np.asarray([0.0]))
    assert np.all(arrivals.weights == 1.0) and arrivals.times_s[0] < 600.0
    return arrivals.times_s, trace.end_s


@dataclass
class Timeline:
    """Replicas held over time, as (instant, replicas) changes, and the instants replicas became ready."""

    changes: list[tuple[float, int]] = field(default_factory=list)
    ready: list[float] = field(default_factory=list)
    prewarms: int = 0


def simulated(
    times: np.ndarray, end_s: float, *, site_share: float | None = None, budget_gpu_h: float | None = None
) -> Timeline:
    """The simulator's replay of the slice (`slurmless simulate`'s own engine): at the fixed `RATE`, or
    with `site_share` as `slurmless simulate`'s default replays it (`tracesim.budget`): the rate chosen
    again every hour by `policies.currency.site_rate` from the gap history as it stands, starting at
    the default rate; or under an idle budget of `budget_gpu_h` a day as `slurmless simulate --budget`
    replays it: every hour, the step curve of the gaps recorded in the hour and the idle spent in it are
    handed to `policies.idle_budget`, which chooses the rate."""
    spec = _spec()
    pspec = policy_spec(spec, expected_cold_start_s=QUEUE_S + LOAD_S, default_keepalive_s=600.0)
    counts = np.bincount((times // 600.0).astype(np.int64), minlength=int(end_s // 600)).astype(np.float64)
    arr = Arrivals(times, np.ones(times.size), np.zeros(times.size), counts)
    prep = prepare(arr, end_s, pspec, 64)
    cold = ColdStartModel(QUEUE_S, 0.0, LOAD_S, 0.0)
    rate = RATE if site_share is None and budget_gpu_h is None else MIX.exchange_rate
    replay = _Replay(
        "trace-69", "slurmless", prep, replace(MIX, exchange_rate=rate), pspec, cold, np.random.default_rng(0), (), True
    )
    if budget_gpu_h is not None:
        replay.start()
        state = idle_budget.new_state(rate, 0.0)
        before = np.zeros(CELLS)
        spent_s = 0.0
        t = 0.0
        while t < end_s:
            t = min(t + HOUR_S, end_s)
            replay.set_rate(state.rate)
            replay.advance(t)
            replay.learn(t)
            assert replay.gaps is not None
            now = np.asarray(replay.gaps.counts)
            curve = idle_budget.step_curve_s([(replay.gaps, pspec, now - before)], state.rate)
            before = now
            state = idle_budget.record_idle(state, replay.res.idle_gpu_s - spent_s)
            spent_s = replay.res.idle_gpu_s
            state = idle_budget.step(state, t, budget_gpu_h, curve)
            RATES.append(state.rate)
        res = replay.finish()
    elif site_share is None:
        res = replay.run()
    else:
        replay.start()
        t = 0.0
        while t < end_s:
            t = min(t + HOUR_S, end_s)
            replay.set_rate(rate)
            replay.advance(t)
            rate = site_rate([(replay.gaps, pspec)], site_share)
            RATES.append(rate)
        res = replay.finish()
    out = Timeline()
    for (t, held, ready_s), (_t, _h, why) in zip(res.timeline, res.events, strict=True):
        out.changes.append((t, held))
        if held:
            out.ready.append(ready_s)
            out.prewarms += "reactive=0" in why
    return out


@pytest.fixture
async def client(redis_server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    redis: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield redis
    await redis.aclose()


async def launched(
    client: aioredis.Redis,
    prefix: str,
    times: np.ndarray,
    end_s: float,
    *,
    site_share: float | None = None,
    budget_gpu_h: float | None = None,
) -> Timeline:
    """The same slice through the real launcher (real Redis, `FakeSlurm`), on a fake clock."""
    keys = Keys(prefix)
    settings = LauncherSettings(
        job_name_prefix="par-",
        default_queue_wait_s=QUEUE_S,
        default_load_s=LOAD_S,
        exchange_rate=RATE if site_share is None and budget_gpu_h is None else MIX.exchange_rate,
        idle_budget_share=site_share,
        idle_budget_gpu_hours_per_day=budget_gpu_h,
        allow_loopback_engines=True,
        gone_retention_s=30 * 86_400.0,
    )
    spec = _spec()
    await ModelStore(client, keys).put(spec)
    cluster = FakeCluster(now_s=BASE_S - 60.0, job_name_prefix="par-")
    slurm = cluster.slurm
    launcher = Launcher(client, slurm, settings, callback_url="http://127.0.0.1:9", keys=keys, prober=cluster.prober())
    routing = Routing(client, keys)
    store = InstanceStore(client, keys)
    history = HistoryStore(client, keys)
    waiting: list[str] = []
    starts: dict[str, float] = {}
    """Instance -> when its job starts (-inf once started or given up)."""
    k = 0
    end = BASE_S + end_s

    clock = cluster.clock

    async def tick(at_s: float) -> None:
        TICKS.append(at_s)
        clock(at_s)
        await launcher.tick(now_s=at_s)
        for rid in list(waiting):
            if text(await awaited(client.hget(keys.ticket(rid), "state"))) == "granted":
                await routing.cancel(spec.name, "gw1", rid)  # served at once: the slot is given back
                waiting.remove(rid)

    async def next_decision_s(now_s: float) -> float:
        """When the launcher's last decision says its answer may change: its recheck instant or its
        keep-alive deadline (a deadline long past holds nothing: requests wait or run)."""
        try:
            decision = launcher.act.board.last(spec.name)
        except KeyError:
            return math.inf
        instants = [decision.recheck_at_s]
        last_s = (await history.get(spec.name)).last_activity_s
        if decision.keepalive_s is not None and last_s is not None:
            instants.append(last_s + decision.keepalive_s)
        due = [s for s in instants if s > now_s - STEP_S]
        return max(min(due), now_s + STEP_S) if due else math.inf

    try:
        t = BASE_S
        await tick(t)
        grid_s = BASE_S + GRID_S
        while t < end:
            for record in await store.all(spec.name):
                if record.state is S.PENDING and record.id not in starts:
                    starts[record.id] = record.created_s + QUEUE_S
            job_s = min((s for s in starts.values() if s >= t), default=math.inf)
            ready_s = min((s for s in cluster.ready_at.values() if s > t), default=math.inf)
            arrival_s = BASE_S + float(times[k]) if k < times.size else math.inf
            t = min(arrival_s, job_s, ready_s, await next_decision_s(t), grid_s, end)
            if t >= end:
                break
            if t == arrival_s:
                clock(t)
                rid = f"r{k}"
                k += 1
                got = await routing.admit(spec.name, "gw1", rid, now_s=t, queue_max=10_000, global_max=100_000)
                if got.outcome is AdmitOutcome.SLOT:
                    await routing.release("gw1", rid)
                    continue
                assert got.outcome is AdmitOutcome.QUEUED
                waiting.append(rid)
                if got.queue_ahead == 0:
                    await launcher.on_demand(spec.name, now_s=t)
                continue
            if t == job_s:
                iid = next(i for i, s in starts.items() if s == t)
                starts[iid] = -math.inf
                started = await store.get(iid)
                if started is None or started.state is not S.PENDING or started.job_id is None:
                    continue  # cancelled before it started
                job_id = int(started.job_id)
                clock(t)
                slurm.start(job_id)
                await tick(t)  # a tick sees the job running before it calls back
                await cluster.start(launcher, iid, job_id, spec.client_name, ready_at_s=t + LOAD_S)
                continue
            if t == grid_s:
                grid_s += GRID_S
            await tick(t)
        return await timeline_of(store, spec.name)
    finally:
        await launcher.aclose()


async def timeline_of(store: InstanceStore, model: str) -> Timeline:
    """Replicas held over time from the instance records: submitted, ready, and released (drained or cancelled)."""
    out = Timeline()
    events: list[tuple[float, int]] = []
    for record in sorted(await store.all(model), key=lambda r: r.created_s):
        ts = record.timestamps
        events.append((record.created_s - BASE_S, +1))
        if S.READY.value in ts:
            out.ready.append(ts[S.READY.value] - BASE_S)
        if S.DRAINING.value in ts:
            events.append((ts[S.DRAINING.value] - BASE_S, -1))
    held = 0
    for at_s, step in sorted(events):
        held += step
        out.changes.append((at_s, held))
    return out


def _same(ours: list[tuple[float, int]], theirs: list[tuple[float, int]]) -> bool:
    return len(ours) == len(theirs) and all(
        a[1] == b[1] and abs(a[0] - b[0]) <= 2 * STEP_S for a, b in zip(ours, theirs, strict=True)
    )


async def test_the_launcher_holds_and_releases_what_the_simulator_does(client: aioredis.Redis) -> None:
    times, end_s = _arrivals()
    sim = simulated(times, end_s)
    ours = await launched(client, f"par{secrets.token_hex(3)}:", times, end_s)
    # The slice exercises every way a replica is held: cold starts, priced keep-alive across gaps, pre-warms.
    assert sim.prewarms >= 3 and len(sim.ready) >= 20
    held_s = [b[0] - a[0] for a, b in zip(sim.changes, sim.changes[1:], strict=False) if a[1] and not b[1]]
    assert max(held_s) > 3600.0
    for i, (a, b) in enumerate(zip(ours.changes, sim.changes, strict=False)):
        assert a[1] == b[1] and abs(a[0] - b[0]) <= 2 * STEP_S, (i, a, b)
    assert len(ours.changes) == len(sim.changes)
    np.testing.assert_allclose(ours.ready, sim.ready, atol=2 * STEP_S)


async def test_the_default_site_budget_prices_what_the_simulator_does(client: aioredis.Redis) -> None:
    """The default (no rate set): the site's rate chosen every hour from the gap history, by both."""
    times, end_s = _arrivals()
    RATES.clear()
    sim = simulated(times, end_s, site_share=DEFAULT_BUDGET_SHARE)
    assert len(set(RATES)) >= 3  # the rate really moves over the slice
    ours = await launched(client, f"par{secrets.token_hex(3)}:", times, end_s, site_share=DEFAULT_BUDGET_SHARE)
    assert len(sim.ready) >= 20
    for i, (a, b) in enumerate(zip(ours.changes, sim.changes, strict=False)):
        assert a[1] == b[1] and abs(a[0] - b[0]) <= 2 * STEP_S, (i, a, b)
    assert len(ours.changes) == len(sim.changes)
    # A replica started just before the slice's end is ready at its end in the replay (cut there), never
    # in the launcher's drive, which stops at the end.
    np.testing.assert_allclose(ours.ready, [r for r in sim.ready if r < end_s], atol=2 * STEP_S)


async def test_an_idle_gpu_hour_budget_prices_what_the_simulator_does(client: aioredis.Redis) -> None:
    """A site budget of `BUDGET_GPU_H` idle GPU-hours a day: every hour the launcher and the simulator's
    `--budget` stepping hand `policies.idle_budget` the step curve of the hour's gaps and the idle spent,
    and both decide alike while the rate swings between the grid's floor and top."""
    times, end_s = _arrivals()
    RATES.clear()
    sim = simulated(times, end_s, budget_gpu_h=BUDGET_GPU_H)
    assert len(set(RATES)) >= 4 and min(RATES) < 1e-3 and max(RATES) == 1.0
    ours = await launched(client, f"par{secrets.token_hex(3)}:", times, end_s, budget_gpu_h=BUDGET_GPU_H)
    assert len(sim.ready) >= 20
    for i, (a, b) in enumerate(zip(ours.changes, sim.changes, strict=False)):
        assert a[1] == b[1] and abs(a[0] - b[0]) <= 2 * STEP_S, (i, a, b)
    assert len(ours.changes) == len(sim.changes)
    np.testing.assert_allclose(ours.ready, [r for r in sim.ready if r < end_s], atol=2 * STEP_S)


async def test_hiding_the_recorded_waits_breaks_parity(client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison can fail: a launcher that does not see the waits its gateways recorded decides otherwise."""
    read = snapshot.gap_history  # type: ignore[attr-defined]

    def without_waits(fields: dict[str, str]) -> GapHistory | None:
        hist = read(fields)
        return None if hist is None else GapHistory(counts=hist.counts, waits_s=(0.0,) * len(hist.waits_s))

    monkeypatch.setattr(snapshot, "gap_history", without_waits)
    times, _end_s = _arrivals()
    hours = times[times < 4 * 3600.0]
    sim = simulated(hours, 4 * 3600.0)
    ours = await launched(client, f"par{secrets.token_hex(3)}:", hours, 4 * 3600.0)
    assert not _same(ours.changes, sim.changes)
