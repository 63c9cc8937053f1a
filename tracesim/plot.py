"""Plot demand against warm replicas for a few models (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracesim.run import SimReport
from tracesim.trace import WINDOW_S

PLOT_POLICIES = ("keepalive-10m", "hybrid-histogram", "slurmless")


def _steps(timeline: list[tuple[float, int, float]], end_s: float) -> tuple[list[float], list[int]]:
    xs: list[float] = [0.0]
    ys: list[int] = [0]
    for t, held, _ready in timeline:
        xs.append(t)
        ys.append(held)
    xs.append(end_s)
    ys.append(ys[-1])
    return xs, ys


def plot_report(report: SimReport, path: Path, *, policies: tuple[str, ...] = PLOT_POLICIES) -> Path:
    """One panel per (model, policy): demand (req/s per 10-min window) and replicas held, cold requests marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(report.recorded)
    shown = [p for p in policies if any(p in report.recorded[m] for m in models)]
    rows = max(1, len(models) * max(1, len(shown)))
    fig, axes = plt.subplots(rows, 1, figsize=(14, 2.4 * rows), squeeze=False, sharex=True)
    row = 0
    for model in models:
        rate = report.demand.get(model, np.zeros(0))
        t_h = np.arange(rate.size) * WINDOW_S / 3600.0
        end_s = rate.size * WINDOW_S
        for policy in shown:
            res = report.recorded[model].get(policy)
            ax = axes[row][0]
            row += 1
            ax.fill_between(t_h, rate, step="post", alpha=0.35, color="tab:blue", label="demand (req/s)")
            ax.set_ylabel("req/s")
            ax.set_yscale("symlog", linthresh=0.01)
            if res is None:
                continue
            ax2 = ax.twinx()
            xs, ys = _steps(res.timeline, end_s)
            ax2.step(np.asarray(xs) / 3600.0, ys, where="post", color="tab:red", lw=0.8, label="replicas held")
            ax2.set_ylabel("replicas")
            cold = np.concatenate([np.zeros(0), *res.cold_arrivals_s])
            if cold.size:
                ax2.plot(cold / 3600.0, np.zeros(cold.size), "kx", ms=3, label="cold request")
            ax.set_title(
                f"model {model} / {policy}: cold fraction {res.cold_fraction:.2e}, "
                f"{res.cold_starts} cold starts, idle {res.idle_gpu_s / 3600:.1f} GPU-h",
                fontsize=9,
            )
    axes[-1][0].set_xlabel("hours since trace start")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
