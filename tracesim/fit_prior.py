"""Fit `policies.gap_prior` (the population prior of `policies.currency`) on tuning traces.

    python -m tracesim.fit_prior traces/servegen-language/m-mid traces/servegen-language/m-small \
        --split even --seed 0 [--out policies/gap_prior.py]

For every client of the split: its arrivals (as `slurmless simulate` draws them), its idle gaps of at
least `GAP_MIN_S` between arrivals (as the gateway records them), binned like `GapHistory`, and the
wait a cold start at each gap's end causes, in cold starts. Each client's distribution is normalised
and the prior is their mean, so a busy client counts as much as a quiet one: the prior stands for
"a model", not "a request".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from policies.currency import GAP_MIN_S, NBINS, history_cells
from tracesim.arrivals import generate_arrivals, load_service_times
from tracesim.engine import prepare
from tracesim.frontier import select_clients
from tracesim.run import DEFAULT_AZURE_CSV, SimConfig
from tracesim.trace import load_trace_dir

FloatArray = np.ndarray


def fit(trace_dirs: list[Path], split: str, seed: int) -> tuple[FloatArray, FloatArray, int]:
    """(share of gaps per bin, waits per gap of all bins in cold starts, clients used).

    Shares: the mean of the clients' normalised gap distributions. Waits: per bin, the median over the
    clients with a gap there of their mean wait per gap, so that a few clients with thousands of
    requests per window do not make every new model look like them.
    """
    config = SimConfig(seed=seed)
    service = load_service_times(DEFAULT_AZURE_CSV)
    shares: list[FloatArray] = []
    per_gap: list[FloatArray] = []
    for trace_dir in trace_dirs:
        for index, trace in enumerate(load_trace_dir(trace_dir)):
            if not select_clients([trace], split):
                continue
            arr = generate_arrivals(trace, np.random.default_rng([seed, index, 0]), service, cap=config.cap)
            spec = config.spec(trace.name, float(service.mean()))
            prep = prepare(arr, trace.end_s, spec, config.cap)
            gaps = prep.arrival_gaps_s
            keep = np.isfinite(gaps) & (gaps >= GAP_MIN_S)
            if not keep.any():
                continue
            bins = history_cells(prep.times_s[keep] - gaps[keep], gaps[keep]) % NBINS
            c = np.bincount(bins, minlength=NBINS).astype(np.float64)
            w = np.bincount(bins, weights=prep.recorded_waits_s[keep] / spec.expected_cold_start_s, minlength=NBINS)
            shares.append(c / c.sum())
            per_gap.append(np.where(c > 0, w / np.maximum(c, 1.0), np.nan))
    if not shares:
        raise typer.BadParameter("no client of the split has an idle gap")
    share = np.mean(shares, axis=0)
    stacked = np.vstack(per_gap)
    seen = ~np.isnan(stacked).all(axis=0)
    median = np.ones(NBINS)
    median[seen] = np.nanmedian(stacked[:, seen], axis=0)
    return share, share * median, len(shares)


def render(share: FloatArray, waits: FloatArray, clients: int, source: str) -> str:
    def tup(xs: FloatArray) -> str:
        return "(\n" + "".join(f"    {x:.6g},\n" for x in xs) + ")"

    return (
        '"""The population prior of `policies.currency`: an idle gap of a model before it has history.\n\n'
        "Per gap bin of `policies.currency.EDGES_S`: the share of gaps (`PRIOR_COUNTS`, sums to 1) and the\n"
        "waiting a cold start at their end causes, in expected cold starts per gap of all bins\n"
        "(`PRIOR_WAITS_PER_COLD`). Written by `python -m tracesim.fit_prior`; the mean over "
        f"{clients} clients of\n{source}.\n"
        '"""\n\n'
        f"PRIOR_COUNTS: tuple[float, ...] = {tup(share)}\n"
        f"PRIOR_WAITS_PER_COLD: tuple[float, ...] = {tup(waits)}\n"
    )


def main(
    trace_dirs: Annotated[list[Path], typer.Argument(help="Tuning trace directories.")],
    split: Annotated[str, typer.Option(help="Client split to fit on (see tracesim.frontier).")] = "even",
    seed: Annotated[int, typer.Option(help="Arrival seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the module here (default: print it).")] = None,
) -> None:
    """Fit the population prior on the clients of `split` in TRACE_DIRS."""
    share, waits, clients = fit(trace_dirs, split, seed)
    names = ", ".join(f"{d.parent.name}/{d.name}" for d in trace_dirs)
    text = render(share, waits, clients, f"{names} ({split} client ids, seed {seed})")
    if out is None:
        print(text)
    else:
        out.write_text(text)


if __name__ == "__main__":
    typer.run(main)
