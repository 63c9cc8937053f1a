"""What the warm pool learns from per model: idle gaps and the waiting a cold start after them would cause.

Recorded by the admit script (`warmpool.routing`) on every request, in the model's gap hash
(`Keys.gaps`), in the cells of `policies.currency` (time-of-week bucket of the gap's start x gap-length
bin):

- `c<cell>`: gaps of at least `GAP_MIN_S` between two arrivals that fell in the cell;
- `w<cell>`: the user-seconds a cold start beginning at each such gap's end would have made requests
  wait: the gap's first request waits the whole expected cold start, every request arriving d seconds
  after that end (within the cold start) waits the rest of it. Counted whether the model was warm or
  not: the history prices what holding on would have saved, whatever was done.

The open gap (its end and cell) sits in the model's stats hash (`gap_end_s`, `gap_cell`); the expected
cold start the waits are priced with is `gap_cold_s` there, written by the launcher
(`GAP_COLD_DEFAULT_S` until it has). The hash has at most `MAX_FIELDS` fields whatever the traffic.
The simulator records the same quantities from its arrivals (`tracesim.engine`).
"""

from __future__ import annotations

from collections.abc import Mapping

from policies.currency import BUCKETS, CELLS, DAY_BLOCKS, GAP_BINS, GAP_MIN_S, GAP_RATIO, NBINS, empty_history
from policies.types import GapHistory

MAX_FIELDS = 2 * CELLS
"""Fields of one model's gap hash, at most: a count and a wait per cell."""
GAP_COLD_DEFAULT_S = 150.0
"""The expected cold start the waits are priced with before the launcher has written one."""
GAP_END = "gap_end_s"
GAP_CELL = "gap_cell"
GAP_COLD = "gap_cold_s"

# Lua: runs inside the admit script, with `prefix`, `model`, `mstat`, `now` and `last` (the previous
# request's arrival, or nil) defined. Same arithmetic as `policies.currency.cell`.
RECORD_LUA = f"""
local gkey = prefix .. 'gaps:' .. model
local gcold = tonumber(redis.call('HGET', mstat, '{GAP_COLD}') or '{GAP_COLD_DEFAULT_S!r}')
local gend = redis.call('HGET', mstat, '{GAP_END}')
if gend then
  local d = now - tonumber(gend)
  if d >= 0 and d < gcold then
    redis.call('HINCRBYFLOAT', gkey, 'w' .. redis.call('HGET', mstat, '{GAP_CELL}'), gcold - d)
  elseif d >= gcold then
    redis.call('HDEL', mstat, '{GAP_END}', '{GAP_CELL}')
  end
end
if last then
  local start = tonumber(last)
  local gap = now - start
  if gap >= {GAP_MIN_S!r} then
    local day = math.floor(start / 86400)
    local bucket = math.floor((start % 86400) / {86400.0 / DAY_BLOCKS!r})
    if bucket > {DAY_BLOCKS - 1} then bucket = {DAY_BLOCKS - 1} end
    if (day + 3) % 7 >= 5 then bucket = bucket + {DAY_BLOCKS} end
    local bin = math.floor(math.log(gap / {GAP_MIN_S!r}) / math.log({GAP_RATIO!r}) + 1e-9)
    if bin < 0 then bin = 0 end
    if bin > {GAP_BINS} then bin = {GAP_BINS} end
    local cell = bucket * {NBINS} + bin
    redis.call('HINCRBYFLOAT', gkey, 'c' .. cell, 1)
    redis.call('HINCRBYFLOAT', gkey, 'w' .. cell, gcold)
    redis.call('HSET', mstat, '{GAP_END}', tostring(now), '{GAP_CELL}', cell)
  end
end
"""

assert BUCKETS * NBINS == CELLS


def gap_history(fields: Mapping[str, str]) -> GapHistory | None:
    """A model's gap hash (field -> value, decoded) as the policies' `GapHistory`; None when empty.

    Fields that are not a valid cell are ignored: the hash is written only by the admit script.
    """
    if not fields:
        return None
    base = empty_history()
    counts = list(base.counts)
    waits = list(base.waits_s)
    for name, raw in fields.items():
        kind, idx = name[:1], name[1:]
        if not idx.isdigit() or int(idx) >= CELLS:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if kind == "c":
            counts[int(idx)] = value
        elif kind == "w":
            waits[int(idx)] = value
    return GapHistory(counts=tuple(counts), waits_s=tuple(waits))


def gap_fields(hist: GapHistory) -> dict[str, str]:
    """The gap hash fields that `gap_history` reads back as `hist` (empty cells left out): for seeding a
    model's history (tests, an operator's import)."""
    counts = {f"c{i}": repr(v) for i, v in enumerate(hist.counts) if v}
    return counts | {f"w{i}": repr(v) for i, v in enumerate(hist.waits_s) if v}
