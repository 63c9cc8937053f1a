"""The lecture scenario: a weekly timetable (.ics) and the demand it creates.

Students use the course's model during lectures only: a burst when the lecture starts (0.5 req/s for
the first 15 minutes, everyone tries the exercise), then a trickle (0.05 req/s) until its end, and
nothing otherwise. Two weeks from Monday 2024-10-14 00:00 Europe/Berlin are replayed. With the
timetable loaded as a schedule, slurmless asks for the replicas one p99 cold start before each
lecture, so no request at lecture start meets a cold start; without it, the first lecture of each
time slot does (the forecast has to learn the timetable first).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from policies.schedules import expand_ical
from policies.types import Occurrence
from tracesim.arrivals import load_service_times
from tracesim.coldstart import ColdStartModel
from tracesim.engine import ModelResult
from tracesim.run import DEFAULT_AZURE_CSV, SimConfig, simulate_one
from tracesim.trace import DIST_GAMMA, WINDOW_S, ModelTrace

LECTURE_EPOCH_S = datetime(2024, 10, 14, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
DAYS = 14
BURST_S = 900.0
BURST_RATE_PER_S = 0.5
TRICKLE_RATE_PER_S = 0.05
START_WINDOW_S = 600.0


@dataclass(frozen=True)
class LectureOutcome:
    """One policy's result on the lecture scenario."""

    policy: str
    cold_at_start: float
    cold_requests: float
    requests: float
    idle_gpu_hours: float
    lectures: int


def lecture_occurrences(ics_text: str | bytes, epoch_s: float = LECTURE_EPOCH_S) -> tuple[Occurrence, ...]:
    """The timetable's occurrences in the replay's clock (seconds since `epoch_s`)."""
    occ = expand_ical(ics_text, epoch_s, epoch_s + DAYS * 86_400, default_tz="Europe/Berlin")
    return tuple(replace(o, start_s=o.start_s - epoch_s, end_s=o.end_s - epoch_s) for o in occ)


def lecture_trace(occurrences: tuple[Occurrence, ...]) -> ModelTrace:
    """A ServeGen-format trace of the demand the lectures create (Poisson within each window)."""
    nwin = int(DAYS * 86_400 / WINDOW_S)
    ts = np.arange(nwin, dtype=np.float64) * WINDOW_S
    rate = np.zeros(nwin)
    for occ in occurrences:
        for w in range(int(occ.start_s // WINDOW_S), min(nwin, int(np.ceil(occ.end_s / WINDOW_S)))):
            lo = max(ts[w], occ.start_s)
            hi = min(ts[w] + WINDOW_S, occ.end_s)
            burst = max(0.0, min(hi, occ.start_s + BURST_S) - lo)
            trickle = max(0.0, (hi - lo) - burst)
            rate[w] += (burst * BURST_RATE_PER_S + trickle * TRICKLE_RATE_PER_S) / WINDOW_S
    dist = np.where(rate > 0, DIST_GAMMA, 0).astype(np.int8)
    safe = np.where(rate > 0, rate, 1.0)
    return ModelTrace("lecture", ts, rate, dist, np.ones(nwin), 1.0 / safe)


def run_lecture(
    ics_path: Path,
    *,
    seed: int = 0,
    cold: ColdStartModel | None = None,
    service_csv: Path | None = DEFAULT_AZURE_CSV,
) -> list[LectureOutcome]:
    """Replay the lecture demand under keepalive-10m, slurmless without and with the timetable."""
    occurrences = lecture_occurrences(ics_path.read_text())
    trace = lecture_trace(occurrences)
    service = load_service_times(service_csv)
    config = SimConfig(seed=seed, cold=cold or ColdStartModel(), record_models=("lecture",))
    runs: list[tuple[str, str, tuple[Occurrence, ...]]] = [
        ("keepalive-10m", "keepalive-10m", ()),
        ("slurmless (no timetable)", "slurmless", ()),
        ("slurmless + timetable", "slurmless", occurrences),
    ]
    out: list[LectureOutcome] = []
    for label, policy, occ in runs:
        res: ModelResult = simulate_one(trace, 0, replace(config, policies=(policy,)), service, occ)[0]
        cold_times = np.concatenate([np.zeros(0), *res.cold_arrivals_s])
        weights = np.concatenate([np.zeros(0), *res.cold_weights])
        at_start = 0.0
        for o in occurrences:
            in_start = (cold_times >= o.start_s) & (cold_times < o.start_s + START_WINDOW_S)
            at_start += float(weights[in_start].sum())
        out.append(
            LectureOutcome(
                policy=label,
                cold_at_start=at_start,
                cold_requests=res.cold_requests,
                requests=res.requests,
                idle_gpu_hours=res.idle_gpu_s / 3600.0,
                lectures=len(occurrences),
            )
        )
    return out


def format_lecture(outcomes: list[LectureOutcome]) -> str:
    """A small table of the lecture scenario."""
    lines = [
        f"lecture scenario ({outcomes[0].lectures if outcomes else 0} lectures in {DAYS} days)",
        f"{'policy':<26} {'cold at start':>13} {'cold total':>10} {'requests':>9} {'idle GPU-h':>10}",
    ]
    for o in outcomes:
        lines.append(
            f"{o.policy:<26} {o.cold_at_start:>13.0f} {o.cold_requests:>10.0f} {o.requests:>9.0f} "
            f"{o.idle_gpu_hours:>10.2f}"
        )
    return "\n".join(lines)
