"""`slurmless` under idle GPU-hour budgets per tenant, replayed as the launcher runs them.

`--tenant-budgets "chem=40@0-19,bio=12.5@20-39+41"` gives each tenant an idle budget (GPU-hours a day)
and its clients: client ids (the trace's `chunk-<id>` numbers) as ids and ranges joined by `+`. A client
of no tenant is priced by the site's budget (`--budget`) when one is given, else at the fixed default
rate. Every budget is one controller of `policies.idle_budget`, the launcher's own (`launcher.idle_budgets`)
and `--budget`'s: all models are replayed in lockstep one hour at a time; each budget's idle spending in
that hour and the step curve of the gaps its models recorded in it are summed, and its rate is chosen
again; each model then continues at its budget's rate.
"""

from __future__ import annotations

import multiprocessing as mp
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

import numpy as np

from policies import idle_budget
from policies.types import GapHistory, ScalingSpec
from tracesim.arrivals import generate_arrivals, load_service_times
from tracesim.engine import ModelResult, _Replay, prepare
from tracesim.run import SimConfig, SimReport, mix_for, summarise
from tracesim.trace import ModelTrace, TraceError

SITE = "_site"
"""The site's budget among the tenants' (as the launcher names it)."""
_ENTRY = re.compile(r"^([a-z0-9][a-z0-9-]{0,62})=([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)@([0-9+\-]+)$")


@dataclass(frozen=True)
class TenantBudget:
    """One tenant's idle budget and the client ids it owns."""

    tenant: str
    gpu_h_per_day: float
    clients: frozenset[str]


def parse_tenant_budgets(text: str) -> list[TenantBudget]:
    """`NAME=GPU_HOURS@IDS,...` (IDS: ids and FIRST-LAST ranges joined by `+`); a bad entry is a one-line error."""
    out: list[TenantBudget] = []
    seen: set[str] = set()
    for raw in (e.strip() for e in text.split(",")):
        match = _ENTRY.match(raw)
        if match is None:
            raise TraceError(f"--tenant-budgets: {raw!r} is not NAME=GPU_HOURS_PER_DAY@IDS (e.g. chem=40@0-19+25)")
        name, hours, ids = match.group(1), float(match.group(2)), match.group(3)
        if name == SITE or name in {b.tenant for b in out}:
            raise TraceError(f"--tenant-budgets: tenant {name!r} given twice")
        if not 0 < hours <= 1_000_000:
            raise TraceError(f"--tenant-budgets: {name}'s budget must be above 0 and at most 1000000")
        clients: set[str] = set()
        for part in ids.split("+"):
            first, _, last = part.partition("-")
            if not first.isdigit() or (last and not last.isdigit()) or (last and int(last) < int(first)):
                raise TraceError(f"--tenant-budgets: {part!r} is not an id or a FIRST-LAST range")
            clients |= {str(i) for i in range(int(first), int(last or first) + 1)}
        if clients & seen:
            raise TraceError(f"--tenant-budgets: client {sorted(clients & seen)[0]} is given to two tenants")
        seen |= clients
        out.append(TenantBudget(name, hours, frozenset(clients)))
    return out


def _replays(
    jobs: Sequence[tuple[ModelTrace, int, str | None]], config: SimConfig, service: np.ndarray, policy: str
) -> list[tuple[_Replay, str | None]]:
    out: list[tuple[_Replay, str | None]] = []
    mix = mix_for(policy)
    for trace, index, budget in jobs:
        arrivals = generate_arrivals(trace, np.random.default_rng([config.seed, index, 0]), service, cap=config.cap)
        spec = config.spec(trace.name, float(service.mean()))
        prep = prepare(arrivals, trace.end_s, spec, config.cap)
        rng = np.random.default_rng([config.seed, index, 1])
        rep = _Replay(trace.name, policy, prep, mix, spec, config.cold, rng, (), False)
        rep.start()
        out.append((rep, budget))
    return out


def _serve(conn: Connection, jobs: list[tuple[ModelTrace, int, str | None]], config: SimConfig, policy: str) -> None:
    """One worker: advance its models to the instant sent, each at its budget's rate; answer, per budget,
    its models' idle GPU-seconds so far and the step curve of the gaps they recorded in the step."""
    replays = _replays(jobs, config, load_service_times(config.service_csv), policy)
    before = [np.asarray(r.gaps.counts if r.gaps is not None else (), dtype=np.float64) for r, _ in replays]
    while True:
        msg = conn.recv()
        if msg is None:
            conn.send([r.finish() for r, _ in replays])
            return
        stop_s, rates = msg
        spent: dict[str, float] = {}
        steps: dict[str, list[tuple[GapHistory | None, ScalingSpec, np.ndarray]]] = {}
        for k, (rep, budget) in enumerate(replays):
            if budget is None:
                rep.advance(stop_s)
                continue
            rep.set_rate(rates[budget])
            rep.advance(stop_s)
            rep.learn(stop_s)
            spent[budget] = spent.get(budget, 0.0) + rep.res.idle_gpu_s
            now = np.asarray(rep.gaps.counts if rep.gaps is not None else (), dtype=np.float64)
            steps.setdefault(budget, []).append((rep.gaps, rep.spec, now - before[k]))
            before[k] = now
        conn.send({b: (spent[b], idle_budget.step_curve_s(steps[b], rates[b])) for b in spent})


def run_tenant_budgets(
    traces: Sequence[ModelTrace],
    config: SimConfig,
    tenants: Sequence[TenantBudget],
    site_gpu_h_per_day: float | None = None,
    *,
    policy: str = "slurmless",
    label: str = "",
) -> tuple[SimReport, dict[str, list[float]]]:
    """`policy` on `traces` with one rate per budget; the report (one line per budget) and each budget's rates."""
    if mix_for(policy).keepalive != "currency":
        raise ValueError(f"{policy} has no exchange rate to adjust")
    owner = {c: b.tenant for b in tenants for c in b.clients}
    per_day = {b.tenant: b.gpu_h_per_day for b in tenants}
    if site_gpu_h_per_day is not None:
        per_day[SITE] = site_gpu_h_per_day
    jobs = [(t, i, owner.get(t.name, SITE if site_gpu_h_per_day is not None else None)) for i, t in enumerate(traces)]
    jobs.sort(key=lambda j: -float(j[0].rate_per_s.sum()))
    nworkers = max(1, min(config.workers, len(jobs)))
    ctx = mp.get_context("fork")
    pipes: list[Connection] = []
    procs = []
    for k in range(nworkers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, jobs[k::nworkers], config, policy), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    start_rate = min(mix_for(policy).exchange_rate, float(idle_budget.RATES[-1]))
    states = {name: idle_budget.new_state(start_rate, 0.0) for name in per_day}
    rates: dict[str, list[float]] = {name: [] for name in per_day}
    cumulative = dict.fromkeys(per_day, 0.0)
    end_s = max(t.end_s for t in traces)
    t = 0.0
    try:
        while t < end_s:
            t = min(t + idle_budget.UPDATE_S, end_s)
            for conn in pipes:
                conn.send((t, {name: s.rate for name, s in states.items()}))
            total: dict[str, float] = dict.fromkeys(per_day, 0.0)
            curves = {name: np.zeros(idle_budget.NRATES + 1) for name in per_day}
            for conn in pipes:
                for name, (spent, curve) in conn.recv().items():
                    total[name] += spent
                    curves[name] += curve
            for name, gpu_h_per_day in per_day.items():
                spent_state = idle_budget.record_idle(states[name], total[name] - cumulative[name])
                states[name] = idle_budget.step(spent_state, t, gpu_h_per_day, curves[name])
                rates[name].append(states[name].rate)
            cumulative = total
        results: list[ModelResult] = []
        for conn in pipes:
            conn.send(None)
            results.extend(conn.recv())
    finally:
        for proc in procs:
            proc.join(timeout=5)
    budget_of = {t.name: b for t, _i, b in jobs}
    summaries = {}
    for name in [*per_day, None]:
        mine = [r for r in results if budget_of[r.model] == name]
        if mine:
            title = f"{policy} {'fixed rate' if name is None else f'{name} {per_day[name]:g} GPU-h/day'}"
            summaries[title] = summarise([replace(r, policy=title) for r in mine])
    return SimReport(trace=label, seed=config.seed, summaries=summaries, models=len(traces)), rates


def format_rates(rates: Mapping[str, list[float]], start: float) -> str:
    """One line per budget: its rate at the start and the end of the replay."""
    return "\n".join(f"exchange rate of {name}: start {start:g}, end {r[-1]:.3g}" for name, r in rates.items() if r)
