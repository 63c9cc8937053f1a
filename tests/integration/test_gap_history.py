"""The gap history the admit script records, against a real redis-server.

It must hold exactly what the simulator learns from (the same cells, the same waits), and stay within
its size bound whatever the traffic.
"""

from __future__ import annotations

import numpy as np
import redis.asyncio as aioredis

from policies import currency
from tracesim.engine import _recorded_waits_s
from warmpool.gaps import GAP_COLD, MAX_FIELDS, gap_history
from warmpool.keys import Keys
from warmpool.redisio import awaited, text
from warmpool.routing import Routing
from warmpool.snapshot import SnapshotReader

COLD_S = 155.0


async def _admit_all(r: Routing, model: str, times_s: np.ndarray) -> None:
    for k, t in enumerate(times_s):
        await r.admit(model, "gw1", f"{model}-{k}", now_s=float(t), queue_max=100_000, global_max=1_000_000)


def _expected(times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and waits per cell, as the simulator records them from the same arrivals."""
    a = np.asarray(times_s, dtype=np.float64)
    w = np.ones(a.size)
    gaps = a - np.concatenate(([-np.inf], a[:-1]))
    hit_end = np.searchsorted(a, a + COLD_S, side="left").astype(np.int64)
    wp = np.concatenate(([0.0], np.cumsum(w)))
    wtp = np.concatenate(([0.0], np.cumsum(w * a)))
    waits = _recorded_waits_s(a, w, gaps, hit_end, wp, wtp, COLD_S)
    keep = np.isfinite(gaps) & (gaps >= currency.GAP_MIN_S)
    cells = currency.history_cells(a[keep] - gaps[keep], gaps[keep])
    counts = np.bincount(cells, minlength=currency.CELLS).astype(np.float64)
    cell_waits = np.bincount(cells, weights=waits[keep], minlength=currency.CELLS)
    return counts, cell_waits


async def test_admit_records_the_cells_and_waits_the_simulator_learns_from(redis_client: aioredis.Redis) -> None:
    keys = Keys()
    r = Routing(redis_client, keys)
    await awaited(redis_client.hset(keys.model_stats("m"), GAP_COLD, repr(COLD_S)))
    rng = np.random.default_rng(3)
    # Bursts (seconds apart) separated by idle gaps from a minute to two days, over a week: every
    # kind of follow-up (within and beyond one cold start, a new gap inside another's window).
    gaps = np.concatenate([rng.exponential(8.0, 60), rng.choice([70.0, 100.0, 400.0, 5_000.0, 90_000.0], 60)])
    rng.shuffle(gaps)
    times = 1_700_000_000.0 + np.cumsum(gaps)
    await _admit_all(r, "m", times)
    raw = await awaited(redis_client.hgetall(keys.gaps("m")))
    hist = gap_history({text(k): text(v) for k, v in raw.items()})
    assert hist is not None
    counts, waits = _expected(times)
    assert counts.sum() > 20
    np.testing.assert_allclose(np.asarray(hist.counts), counts)
    # Lua keeps the gap end to 14 digits (0.1 ms at epoch times): waits agree to well under a millisecond.
    np.testing.assert_allclose(np.asarray(hist.waits_s), waits, rtol=1e-6, atol=1e-3)
    snap = (await SnapshotReader(redis_client, keys).read(["m"]))["m"]
    assert snap.gaps == hist


async def test_gap_hash_stays_within_its_bound(redis_client: aioredis.Redis) -> None:
    keys = Keys()
    r = Routing(redis_client, keys)
    rng = np.random.default_rng(5)
    # Gaps over every bin and every time-of-week bucket: the hash fills, and stops there.
    gaps = np.exp(rng.uniform(np.log(60.0), np.log(400_000.0), 3_000))
    times = 1_700_000_000.0 + np.cumsum(gaps)
    await _admit_all(r, "busy", times)
    fields = int(await awaited(redis_client.hlen(keys.gaps("busy"))))
    assert fields <= MAX_FIELDS
    assert fields > 0.8 * MAX_FIELDS  # the bound is reached, not merely respected by an idle model
    stats = await awaited(redis_client.hgetall(keys.model_stats("busy")))
    assert len(stats) <= 4  # last_request_s and the open gap (end, cell): nothing grows per request
