"""The simulator's learnt policy inputs at one instant, for checking the launcher against them.

`inputs_at` folds a model's arrivals before `t_s` the way the replay does (`tracesim.engine`): the gap
history as the gateway records it (`warmpool.gaps`: cells of `policies.currency`, waits from the
arrivals seen so far), and the seasonal forecast over every finished 600-s window since the first.
"""

from __future__ import annotations

import numpy as np

from policies import currency
from policies.forecast import new_forecast, observe_slot
from policies.types import GapHistory, SeasonalForecast
from tracesim.arrivals import FloatArray
from tracesim.engine import _recorded_waits_s
from tracesim.trace import WINDOW_S


def gap_history_at(times_s: FloatArray, t_s: float, cold_s: float) -> GapHistory | None:
    """The gap history after every arrival before `t_s` (one request each); None before the first gap."""
    a = np.sort(np.asarray(times_s, dtype=np.float64))
    a = a[a < t_s]
    if a.size < 2:
        return None
    w = np.ones(a.size)
    gaps = a - np.concatenate(([-np.inf], a[:-1]))
    hit_end = np.searchsorted(a, a + cold_s, side="left").astype(np.int64)
    waits = _recorded_waits_s(
        a, w, gaps, hit_end, np.concatenate(([0.0], np.cumsum(w))), np.concatenate(([0.0], np.cumsum(a))), cold_s
    )
    keep = np.isfinite(gaps) & (gaps >= currency.GAP_MIN_S)
    if not keep.any():
        return None
    cells = currency.history_cells(a[keep] - gaps[keep], gaps[keep])
    return currency.observe(currency.empty_history(), cells.tolist(), [1.0] * int(keep.sum()), waits[keep].tolist())


def forecast_at(window_counts: FloatArray, first_window: int, t_s: float) -> SeasonalForecast | None:
    """The forecast after every window from `first_window` that ended by `t_s` (window w starts at w x 600 s).

    None before the first window ended: the launcher has no forecast then, where the replay's empty one
    says "no history for this time slot"; both pre-warm nothing.
    """
    if int(t_s // WINDOW_S) <= first_window:
        return None
    fc = new_forecast(WINDOW_S)
    for w in range(first_window, int(t_s // WINDOW_S)):
        fc = observe_slot(fc, w * WINDOW_S, float(window_counts[w]) if w < window_counts.size else 0.0)
    return fc
