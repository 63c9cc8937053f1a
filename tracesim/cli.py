"""`slurmless simulate`: replay a trace directory through the warm-pool policies.

Mount it in the main typer app with either

    app.command("simulate")(tracesim.cli.simulate_command)
    app.add_typer(tracesim.cli.app)            # same command, as a sub-app

`--json` prints exactly one JSON object on stdout ({"policies": {...}}, plus "lecture" with --ics);
the human-readable table then goes to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from tracesim.coldstart import ColdStartModel
from tracesim.lecture import format_lecture, run_lecture
from tracesim.plot import plot_report
from tracesim.run import BASELINES, format_table, run_simulation
from tracesim.trace import load_trace_dir

app = typer.Typer(help="Trace-driven warm-pool simulator.")


def _default_plot_models(trace_dir: Path) -> list[str]:
    """Two representative models: the median and the 25th-percentile one by request count."""
    traces = load_trace_dir(trace_dir)
    totals = np.asarray([t.rate_per_s.sum() for t in traces])
    order = np.argsort(totals)
    picks = {int(order[len(order) // 2]), int(order[len(order) // 4])}
    return [traces[i].name for i in sorted(picks)]


@app.command("simulate")
def simulate_command(
    trace: Annotated[Path, typer.Option("--trace", help="Directory of chunk-<id>-trace.csv files.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for arrivals and cold-start draws.")] = 0,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of demand vs replicas here.")] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated client ids to plot (default: two representative).")
    ] = None,
    only: Annotated[bool, typer.Option(help="Simulate only the --models, not the whole directory.")] = False,
    ics: Annotated[Path | None, typer.Option(help="Also run the lecture scenario on this .ics timetable.")] = None,
    policies: Annotated[str | None, typer.Option(help="Comma-separated policy names.")] = None,
    gpus_per_model: Annotated[int, typer.Option(help="GPUs per replica.")] = 1,
    queue_median_s: Annotated[float, typer.Option(help="Median Slurm queue wait (lognormal).")] = 45.0,
    load_median_s: Annotated[float, typer.Option(help="Median model load time (lognormal).")] = 90.0,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Replay TRACE under every policy and report cold starts, waits and GPU-hours."""
    chosen = [m.strip() for m in models.split(",") if m.strip()] if models else []
    record = chosen or (_default_plot_models(trace) if plot is not None else [])
    cold = ColdStartModel(queue_median_s=queue_median_s, load_median_s=load_median_s)
    report = run_simulation(
        trace,
        seed=seed,
        policies=[p.strip() for p in policies.split(",")] if policies else list(BASELINES),
        models=chosen if only and chosen else None,
        record_models=record,
        cold=cold,
        gpus_per_model=gpus_per_model,
        workers=workers,
    )
    human = sys.stderr if json_out else sys.stdout
    print(format_table(report), file=human)
    doc: dict[str, object] = report.as_json()
    if ics is not None:
        outcomes = run_lecture(ics, seed=seed, cold=cold)
        print(format_lecture(outcomes), file=human)
        doc["lecture"] = {
            o.policy: {
                "cold_at_lecture_start": o.cold_at_start,
                "cold_requests": o.cold_requests,
                "requests": o.requests,
                "idle_gpu_hours": o.idle_gpu_hours,
            }
            for o in outcomes
        }
    if plot is not None:
        plot_report(report, plot)
        print(f"plot written to {plot}", file=human)
    if json_out:
        print(json.dumps(doc))


def main() -> None:
    """Run the simulator as a stand-alone program (`python -m tracesim.cli --trace DIR`)."""
    typer.run(simulate_command)


if __name__ == "__main__":
    main()
