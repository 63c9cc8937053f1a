"""Frontiers: each policy family run across its knob, cold-request fraction against idle GPU-hours.

Families and knobs (`FAMILIES`): fixed keep-alive (1 min .. 4 h), Shahrad et al.'s hybrid histogram
(percentile of the idle gaps), `slurmless` (exchange rate, idle GPU-seconds per user-second of
waiting) and the clairvoyant bound (the same exchange rate, knowing every arrival).

"Share closed": at the idle GPU-hours of `keepalive-10m`, how much of the gap in cold fraction between
`keepalive-10m` and the clairvoyant frontier a family's frontier closes (log-linear interpolation
along each frontier; 1.0 = as good as the bound, 0 = no better than a 10-minute keep-alive).

Client splits (`select_clients`): "all", "even"/"odd" client ids, "randA<seed>"/"randB<seed>" (a
seeded random half and its complement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracesim.budget import run_policies
from tracesim.run import PolicySummary, SimConfig, SimReport
from tracesim.trace import ModelTrace, TraceError

KEEPALIVE_MIN = (1, 2, 5, 10, 20, 30, 60, 120, 240)
HYBRID_PCT = (50, 75, 90, 95, 99)
RATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)

FAMILIES: dict[str, tuple[str, ...]] = {
    "keepalive": tuple(f"keepalive-{m}m" for m in KEEPALIVE_MIN),
    "hybrid": tuple(f"hybrid-p{p}" for p in HYBRID_PCT),
    "slurmless": tuple(f"slurmless@{r:g}" for r in RATES),
    "clairvoyant": tuple(f"clairvoyant@{r:g}" for r in RATES),
}
REFERENCE = "keepalive-10m"
COMPARED = ("hybrid-histogram", "slurmless")
"""Single points printed with the frontiers: the learnt ski-rental baseline and `slurmless` at its defaults
(the site budget `policies.currency.DEFAULT_BUDGET_SHARE` x a 10-minute keep-alive's spending)."""


def select_clients(traces: Sequence[ModelTrace], split: str) -> list[ModelTrace]:
    """The clients of one split half (see the module docstring); an unknown split is an error."""
    if split == "all":
        return list(traces)
    if split in ("even", "odd"):
        want = 0 if split == "even" else 1
        return [t for t in traces if t.name.isdigit() and int(t.name) % 2 == want]
    if split.startswith(("randA", "randB")) and split[5:].isdigit():
        names = sorted(t.name for t in traces)
        rng = np.random.default_rng([int(split[5:]), 7])
        half = set(rng.permutation(names)[: len(names) // 2].tolist())
        keep_a = split.startswith("randA")
        return [t for t in traces if (t.name in half) == keep_a]
    raise TraceError(f"unknown client split {split!r}: all, even, odd, randA<seed>, randB<seed>")


def slice_days(traces: Sequence[ModelTrace], first_day: int, days: int) -> list[ModelTrace]:
    """Every client's windows of days [first_day, first_day + days), moved to start at time 0.

    A model replayed on such a slice starts with no history at all (no gaps, no forecast): what a newly
    registered checkpoint, or a one-day trace, looks like to the policies. Clients silent throughout are
    dropped.
    """
    if first_day < 0 or days <= 0:
        raise TraceError("--days must be FIRST:COUNT with FIRST >= 0 and COUNT >= 1")
    lo_s, hi_s = first_day * 86_400.0, (first_day + days) * 86_400.0
    out: list[ModelTrace] = []
    for t in traces:
        keep = (t.ts_s >= lo_s) & (t.ts_s < hi_s)
        if not keep.any() or float(t.rate_per_s[keep].sum()) <= 0:
            continue
        out.append(
            ModelTrace(
                name=t.name,
                ts_s=t.ts_s[keep] - lo_s,
                rate_per_s=t.rate_per_s[keep],
                dist=t.dist[keep],
                shape=t.shape[keep],
                scale=t.scale[keep],
            )
        )
    return out


@dataclass(frozen=True)
class Point:
    policy: str
    family: str
    cold_fraction: float
    idle_gpu_hours: float


@dataclass
class Frontier:
    label: str
    points: dict[str, list[Point]]
    summaries: dict[str, PolicySummary]

    def reference(self) -> PolicySummary:
        return self.summaries[REFERENCE]


def family_of(policy: str) -> str:
    for family, names in FAMILIES.items():
        if policy in names:
            return family
    return f"{policy} (default)" if policy in FAMILIES else policy


def run_frontier(
    traces: Sequence[ModelTrace], config: SimConfig, families: Sequence[str] = tuple(FAMILIES), label: str = ""
) -> Frontier:
    """Every family's policies on `traces`, in one replay (models prepared once for all of them)."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise TraceError(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
    names = [p for f in families for p in FAMILIES[f]]
    policies = tuple(dict.fromkeys([*names, REFERENCE, *COMPARED]))
    # `slurmless` (its default site budget) is replayed in lockstep over all models, the others model by model.
    report: SimReport = run_policies(traces, _with_policies(config, policies), label=label)
    points: dict[str, list[Point]] = {}
    for name, s in report.summaries.items():
        fam = family_of(name)
        points.setdefault(fam, []).append(Point(name, fam, s.cold_start_fraction, s.idle_gpu_hours))
    for pts in points.values():
        pts.sort(key=lambda p: p.idle_gpu_hours)
    return Frontier(label=label, points=points, summaries=report.summaries)


def _with_policies(config: SimConfig, policies: tuple[str, ...]) -> SimConfig:
    from dataclasses import replace

    return replace(config, policies=policies)


def cold_at_idle(points: Sequence[Point], idle_gpu_hours: float) -> float | None:
    """A family's cold fraction at `idle_gpu_hours`: its lower convex-free envelope, log-linearly interpolated.

    None when the idle lies outside the family's range (the frontier does not reach it).
    """
    pts = sorted(points, key=lambda p: p.idle_gpu_hours)
    # The frontier: a point dominated by a cheaper one with fewer cold requests is not on it.
    envelope: list[Point] = []
    for p in pts:
        if envelope and p.cold_fraction >= envelope[-1].cold_fraction:
            continue
        envelope.append(p)
    if not envelope or idle_gpu_hours < envelope[0].idle_gpu_hours:
        return None
    if idle_gpu_hours >= envelope[-1].idle_gpu_hours:
        return envelope[-1].cold_fraction
    xs = np.asarray([p.idle_gpu_hours for p in envelope])
    ys = np.log(np.maximum([p.cold_fraction for p in envelope], 1e-12))
    return float(np.exp(np.interp(idle_gpu_hours, xs, ys)))


def share_closed(frontier: Frontier, family: str) -> float | None:
    """Share of the keepalive-10m -> clairvoyant gap (at keepalive-10m's idle) that `family` closes."""
    ref = frontier.reference()
    bound = cold_at_idle(frontier.points.get("clairvoyant", []), ref.idle_gpu_hours)
    ours = cold_at_idle(frontier.points.get(family, []), ref.idle_gpu_hours)
    if bound is None or ours is None or ref.cold_start_fraction <= bound:
        return None
    return (ref.cold_start_fraction - ours) / (ref.cold_start_fraction - bound)


def format_frontier(frontier: Frontier) -> str:
    """The table: every point, then each family's cold fraction at keepalive-10m's idle and share closed."""
    ref = frontier.reference()
    lines = [
        f"frontier {frontier.label}",
        f"{'family':<12} {'policy':<22} {'cold frac':>10} {'idle GPU-h':>11} {'vs 10m cold':>11} {'vs 10m idle':>11}",
    ]
    for fam, pts in frontier.points.items():
        for p in pts:
            dc = p.cold_fraction / ref.cold_start_fraction - 1 if ref.cold_start_fraction else 0.0
            di = p.idle_gpu_hours / ref.idle_gpu_hours - 1 if ref.idle_gpu_hours else 0.0
            lines.append(
                f"{fam:<12} {p.policy:<22} {p.cold_fraction:>10.3e} {p.idle_gpu_hours:>11.1f} {dc:>+11.1%} {di:>+11.1%}"
            )
    lines.append(f"at keepalive-10m's idle ({ref.idle_gpu_hours:.1f} GPU-h, cold {ref.cold_start_fraction:.3e}):")
    for fam in frontier.points:
        if fam not in FAMILIES:
            continue
        cold = cold_at_idle(frontier.points[fam], ref.idle_gpu_hours)
        share = share_closed(frontier, fam)
        cold_txt = f"{cold:.3e}" if cold is not None else "n/a (frontier starts above this idle)"
        share_txt = f"{share:+.0%}" if share is not None else "n/a"
        lines.append(f"  {fam:<12} cold {cold_txt}, share of keepalive-10m -> clairvoyant closed {share_txt}")
    return "\n".join(lines)


def plot_frontiers(frontiers: Sequence[Frontier], path: Path) -> Path:
    """One panel per frontier: cold-request fraction (log) against idle GPU-hours, one curve per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(frontiers))
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.0), squeeze=False)
    styles = {"keepalive": "o-", "hybrid": "s-", "slurmless": "D-", "clairvoyant": "k--"}
    for ax, fr in zip(axes[0], frontiers, strict=False):
        for fam, pts in fr.points.items():
            xs = [p.idle_gpu_hours for p in pts]
            ys = [max(p.cold_fraction, 1e-7) for p in pts]
            style = styles.get(fam, "x")
            ax.plot(xs, ys, style, ms=3.5, lw=1.2, label=fam if len(pts) > 1 else pts[0].policy)
        ref = fr.reference()
        ax.axvline(ref.idle_gpu_hours, color="grey", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("idle GPU-hours")
        ax.set_ylabel("cold-request fraction")
        ax.set_title(fr.label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
