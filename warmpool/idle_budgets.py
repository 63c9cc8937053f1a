"""Idle GPU-hour budgets in Redis: one hash per budget (`Keys.idle_budget`), written by the launcher.

Fields: `rate` (the exchange rate in force), `since_s`, `updated_s`, `idle_s` (idle GPU-seconds measured
since), `budget` (GPU-hours per day), and one `s<end second>` per hourly step of the last day: its end,
residual, measured idle and step curve (`policies.idle_budget.NRATES` floats), space-separated. At most
`STEPS` steps, so a hash never has more than `IDLE_BUDGET_MAX_FIELDS` fields of at most
`STEP_FIELD_MAX_FLOATS` floats. The admin API reads them for its status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from policies.idle_budget import NRATES, STEPS, BudgetState, Step, spent_gpu_h
from warmpool.keys import Keys
from warmpool.redisio import text

IDLE_BUDGET_MAX_FIELDS = 5 + STEPS
"""Fields of one budget's hash, at most: five scalars and the steps of its window."""
STEP_FIELD_MAX_FLOATS = 3 + NRATES
"""Floats in one step's field: its end, residual and idle, and its step curve."""


@dataclass(frozen=True, slots=True)
class BudgetView:
    """What an operator is shown of one budget."""

    budget: str
    budget_gpu_h_per_day: float
    rate: float
    idle_gpu_h_last_day: float
    updated_s: float


def _step_field(step: Step) -> tuple[str, str]:
    values = (step.end_s, step.residual_s, step.idle_s, *step.curve_s)
    return f"s{int(step.end_s)}", " ".join(repr(v) for v in values)


def _decode_step(value: str) -> Step | None:
    floats = [float(v) for v in value.split()]
    if len(floats) != STEP_FIELD_MAX_FLOATS:
        return None  # written by another version of the controller: that step is not priced
    return Step(end_s=floats[0], residual_s=floats[1], idle_s=floats[2], curve_s=tuple(floats[3:]))


def decode(fields: Mapping[str, str]) -> tuple[BudgetState, float] | None:
    """A stored budget's state and its budget (GPU-hours per day); None when nothing is stored."""
    try:
        rate, since_s, updated_s = float(fields["rate"]), float(fields["since_s"]), float(fields["updated_s"])
        idle_s = float(fields.get("idle_s", "0"))
        budget = float(fields.get("budget", "0"))
        steps = [_decode_step(v) for k, v in fields.items() if k[:1] == "s" and k[1:].isdigit()]
    except (KeyError, ValueError):
        return None
    kept = tuple(sorted((s for s in steps if s is not None), key=lambda s: s.end_s))[-STEPS:]
    return BudgetState(rate=rate, since_s=since_s, updated_s=updated_s, idle_s=idle_s, steps=kept), budget


def queue_write(
    pipe: aioredis.client.Pipeline, keys: Keys, name: str, old: BudgetState | None, new: BudgetState, budget: float
) -> None:
    """Queue on `pipe` the writes that turn the stored `old` state into `new` (a step is written once)."""
    key = keys.idle_budget(name)
    pipe.hset(
        key,
        mapping={
            "rate": repr(new.rate),
            "since_s": repr(new.since_s),
            "updated_s": repr(new.updated_s),
            "idle_s": repr(new.idle_s),
            "budget": repr(budget),
        },
    )
    kept = dict(_step_field(s) for s in new.steps)
    before = dict(_step_field(s) for s in old.steps) if old is not None else {}
    changed = {f: v for f, v in kept.items() if before.get(f) != v}
    if changed:
        pipe.hset(key, mapping=changed)
    gone = [f for f in before if f not in kept]
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
