"""Idle GPU-hour budgets in Redis: one hash per budget (`Keys.idle_budget`), written by the launcher.

Fields: `rate` (the exchange rate in force), `since_s`, `updated_s`, `budget` (GPU-hours per day), and
`h<hour>` (idle GPU-seconds spent in that hour since the epoch), at most `HOURS_KEPT` of them, so a
hash never has more than `IDLE_BUDGET_MAX_FIELDS` fields. The admin API reads them for its status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from policies.idle_budget import HOURS_KEPT, BudgetState, spent_gpu_h
from warmpool.keys import Keys
from warmpool.redisio import text

IDLE_BUDGET_MAX_FIELDS = 4 + HOURS_KEPT
"""Fields of one budget's hash, at most: four scalars and the hours of its window."""


@dataclass(frozen=True, slots=True)
class BudgetView:
    """What an operator is shown of one budget."""

    budget: str
    budget_gpu_h_per_day: float
    rate: float
    idle_gpu_h_last_day: float
    updated_s: float


def decode(fields: Mapping[str, str]) -> tuple[BudgetState, float] | None:
    """A stored budget's state and its budget (GPU-hours per day); None when nothing is stored."""
    try:
        rate, since_s, updated_s = float(fields["rate"]), float(fields["since_s"]), float(fields["updated_s"])
        budget = float(fields.get("budget", "0"))
        hours = tuple(sorted((int(k[1:]), float(v)) for k, v in fields.items() if k[:1] == "h" and k[1:].isdigit()))
    except (KeyError, ValueError):
        return None
    return BudgetState(rate=rate, since_s=since_s, updated_s=updated_s, hours=hours), budget


def queue_write(
    pipe: aioredis.client.Pipeline, keys: Keys, name: str, old: BudgetState | None, new: BudgetState, budget: float
) -> None:
    """Queue on `pipe` the writes that turn the stored `old` state into `new`."""
    key = keys.idle_budget(name)
    pipe.hset(
        key,
        mapping={
            "rate": repr(new.rate),
            "since_s": repr(new.since_s),
            "updated_s": repr(new.updated_s),
            "budget": repr(budget),
        },
    )
    kept = dict(new.hours)
    before = dict(old.hours) if old is not None else {}
    changed = {f"h{h}": repr(s) for h, s in kept.items() if before.get(h) != s}
    if changed:
        pipe.hset(key, mapping=changed)
    gone = [f"h{h}" for h in before if h not in kept]
    if gone:
        pipe.hdel(key, *gone)


async def read_views(redis: aioredis.Redis, keys: Keys, names: Sequence[str], now_s: float) -> list[BudgetView]:
    """The stored budgets among `names` (the launcher has not run one yet: left out)."""
    if not names:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.idle_budget(name))
        raws = await pipe.execute()
    out: list[BudgetView] = []
    for name, raw in zip(names, raws, strict=True):
        got = decode({text(k): text(v) for k, v in raw.items()})
        if got is not None:
            state, budget = got
            out.append(BudgetView(name, budget, state.rate, round(spent_gpu_h(state, now_s), 3), state.updated_s))
    return out
