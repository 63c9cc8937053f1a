"""Choose where to submit an instance: the placement that starts soonest.

Options come from `sbatch --test-only` estimates per (partition, QOS). Ties (starts within
`tie_window_s` of the soonest) prefer a preemptible placement where the admin lists one: research jobs
own the cluster and slurmless takes what they leave, and a preempted instance drains like an expiring
one. Then the longer time limit (fewer successor hand-overs), then the order given (the operator's
preference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PlacementOption:
    partition: str
    qos: str | None
    estimated_start_s: float
    preemptible: bool = False
    time_limit_s: float = 0.0


def pick_placement(options: Sequence[PlacementOption], *, tie_window_s: float = 60.0) -> PlacementOption | None:
    """The option that starts soonest, with the tie-breaks above; None when there are no options."""
    if not options:
        return None
    soonest_s = min(o.estimated_start_s for o in options)
    tied = [(i, o) for i, o in enumerate(options) if o.estimated_start_s <= soonest_s + tie_window_s]
    tied.sort(key=lambda io: (not io[1].preemptible, -io[1].time_limit_s, io[0]))
    return tied[0][1]
