"""The launcher's default exchange rate: the site's one rate under its default idle budget.

By default the warm pool may spend `launcher.idle_budget_share` (`policies.currency.DEFAULT_BUDGET_SHARE`)
x what a fixed 10-minute keep-alive would have spent on the gaps every model recorded, and the rate is
the largest that keeps the models' priced windows within it (`policies.currency.site_rate`, a pure
function of the gap histories). As `slurmless simulate` replays it (`tracesim.budget`), the rate is
chosen again at every whole hour from the histories as they stand; before the first whole hour the
launcher has seen, it is the site's rate of the histories already recorded, or the fixed
`launcher.exchange_rate` while no model has recorded a gap. Budgets in GPU-hours (the site's, a
tenant's: `launcher.idle_budgets`) take precedence over it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from policies import currency
from policies.types import GapHistory, ScalingSpec

HOUR_S = 3600.0
"""How often the rate is chosen again (the simulator's `tracesim.budget.UPDATE_S`)."""

Models = Callable[[], Iterable[tuple[GapHistory | None, ScalingSpec]]]
"""Every base model's gap history and policy view, read only when the rate is chosen."""


@dataclass
class SiteRate:
    """The rate in force and the hour it was chosen in; `share` None: no default budget (the fixed rate)."""

    share: float | None
    fixed_rate: float
    hour: int | None = None
    rate: float | None = None

    def at(self, now_s: float, models: Models) -> float | None:
        """The default rate at `now_s` (None: the settings' fixed rate)."""
        if self.share is None:
            return None
        hour = int(now_s // HOUR_S)
        if hour == self.hour:
            return self.rate
        pairs = list(models())
        if self.hour is None and not any(h is not None and any(h.counts) for h, _spec in pairs):
            self.rate = self.fixed_rate  # nothing recorded yet: where the simulator's replay starts too
        else:
            self.rate = currency.site_rate(pairs, self.share)
        self.hour = hour
        return self.rate


__all__ = ["HOUR_S", "SiteRate"]
