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

from tracesim.budget import run_budget, run_policies
from tracesim.coldstart import ColdStartModel
from tracesim.frontier import FAMILIES, format_frontier, plot_frontiers, run_frontier, select_clients, slice_days
from tracesim.lecture import format_lecture, run_lecture
from tracesim.plot import plot_report
from tracesim.run import BASELINES, SimConfig, format_table, mix_for
from tracesim.tenant_budget import format_rates, parse_tenant_budgets, run_tenant_budgets
from tracesim.trace import TraceError, load_trace_dir

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
    split: Annotated[
        str, typer.Option(help="Clients to replay: all, even, odd, randA<seed>, randB<seed> (held-out halves).")
    ] = "all",
    frontier: Annotated[
        bool, typer.Option(help="Run every policy family across its knob; table, and a PNG with --plot.")
    ] = False,
    families: Annotated[str | None, typer.Option(help="Comma-separated families for --frontier.")] = None,
    exchange_rate: Annotated[
        float | None, typer.Option(help="slurmless's exchange rate: idle GPU-seconds per user-second of waiting.")
    ] = None,
    budget: Annotated[
        float | None, typer.Option(help="slurmless under an idle budget (GPU-hours per day, whole site).")
    ] = None,
    days: Annotated[
        str | None, typer.Option(help="FIRST:COUNT: replay only these days, from no history (e.g. 7:1).")
    ] = None,
    tenant_budgets: Annotated[
        str | None,
        typer.Option(
            help="Idle budgets per tenant, NAME=GPU_HOURS_PER_DAY@IDS,... (IDS: client ids and ranges joined by +; "
            "other clients: --budget or the fixed rate). See tracesim/tenant_budget.py."
        ),
    ] = None,
    shadow_share: Annotated[
        float | None,
        typer.Option(help="slurmless under a budget of this share of a 10-min keep-alive's idle on the same gaps."),
    ] = None,
) -> None:
    """Replay TRACE under every policy and report cold starts, waits and GPU-hours."""
    try:
        _simulate(
            trace, json_out, seed, plot, models, only, ics, policies, gpus_per_model, queue_median_s,
            load_median_s, workers, split, frontier, families, exchange_rate, budget, days, tenant_budgets,
            shadow_share,
        )  # fmt: skip
    except (TraceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


def _simulate(
    trace: Path,
    json_out: bool,
    seed: int,
    plot: Path | None,
    models: str | None,
    only: bool,
    ics: Path | None,
    policies: str | None,
    gpus_per_model: int,
    queue_median_s: float,
    load_median_s: float,
    workers: int,
    split: str,
    frontier: bool,
    families: str | None,
    exchange_rate: float | None,
    budget: float | None,
    days: str | None,
    tenant_budgets: str | None = None,
    shadow_share: float | None = None,
) -> None:
    tenants = parse_tenant_budgets(tenant_budgets) if tenant_budgets is not None else None
    if not trace.is_dir():
        raise TraceError(f"trace directory {trace} not found")
    if exchange_rate is not None and not 0 < exchange_rate <= 1000:
        raise ValueError("--exchange-rate must be in (0, 1000]")
    chosen = [m.strip() for m in models.split(",") if m.strip()] if models else []
    record = chosen or (_default_plot_models(trace) if plot is not None and not frontier else [])
    cold = ColdStartModel(queue_median_s=queue_median_s, load_median_s=load_median_s)
    names = [p.strip() for p in policies.split(",")] if policies else list(BASELINES)
    if exchange_rate is not None:
        names = [f"slurmless@{exchange_rate:g}" if p == "slurmless" else p for p in names]
    for name in names:
        mix_for(name)
    traces = select_clients(load_trace_dir(trace), split)
    if days is not None:
        first, _, count = days.partition(":")
        if not (first.isdigit() and count.isdigit()):
            raise ValueError("--days must be FIRST:COUNT, e.g. 7:1")
        traces = slice_days(traces, int(first), int(count))
    if only and chosen:
        traces = [t for t in traces if t.name in set(chosen)]
    if not traces:
        raise TraceError(f"no client of {trace} in split {split!r}")
    config = SimConfig(
        seed=seed,
        policies=tuple(names),
        cold=cold,
        gpus_per_model=gpus_per_model,
        record_models=tuple(record),
        workers=workers,
    )
    label = f"{trace} [{split}]" if split != "all" else str(trace)
    if days is not None:
        label += f" days {days}"
    human = sys.stderr if json_out else sys.stdout
    if frontier:
        fams = [f.strip() for f in families.split(",")] if families else list(FAMILIES)
        fr = run_frontier(traces, config, fams, label=f"{label} seed {seed}")
        print(format_frontier(fr), file=human)
        if plot is not None:
            plot_frontiers([fr], plot)
            print(f"plot written to {plot}", file=human)
        if json_out:
            print(json.dumps({"policies": {n: s.as_json() for n, s in fr.summaries.items()}}))
        return
    if tenants is not None:
        report, by_budget = run_tenant_budgets(traces, config, tenants, budget, label=label)
        print(format_table(report), file=human)
        print(format_rates(by_budget, mix_for("slurmless").exchange_rate), file=human)
        if json_out:
            print(json.dumps(report.as_json()))
        return
    if budget is not None or shadow_share is not None:
        report, rates = run_budget(traces, config, budget, shadow_share=shadow_share, label=label)
        print(format_table(report), file=human)
        print(f"exchange rate: start {mix_for('slurmless').exchange_rate:g}, end {rates[-1]:.3g}", file=human)
        if json_out:
            print(json.dumps(report.as_json()))
        return
    report = run_policies(traces, config, label=label)
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
