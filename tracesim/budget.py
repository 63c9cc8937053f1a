"""`slurmless` under a site-wide idle GPU-hour budget: one exchange rate, chosen so spending meets it.

All models are replayed in lockstep, `UPDATE_S` at a time, and the rate for the next step is chosen by
`policies.idle_budget`, the launcher's own controller: the largest rate at which the learnt gap
histories say the gaps of the last day would have cost at most the budget minus the residual, the idle
actually spent beyond what the histories predicted at the rates in force (pre-warms, idle inside bursts,
the model's error). The day's gaps are the sum of the last 24 step curves, each the gaps recorded in one
step priced by the windows of its time, exactly as the launcher accumulates them. No multiplier is
integrated, so nothing winds up while models have no history. Models stay independent between steps,
so each worker process owns a share of them and advances them step by step.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection

import numpy as np

from policies import idle_budget
from policies.currency import DEFAULT_BUDGET_SHARE, budget_terms, rate_for_budget
from tracesim.arrivals import FloatArray, generate_arrivals, load_service_times
from tracesim.engine import ModelResult, _Replay, prepare
from tracesim.run import SimConfig, SimReport, mix_for, run_traces, summarise
from tracesim.trace import ModelTrace

UPDATE_S = idle_budget.UPDATE_S
"""How often the rate is chosen again."""
WINDOW_S = idle_budget.WINDOW_S
"""The budget is per day: spending and the gaps priced are those of this trailing window."""
RATES: FloatArray = idle_budget.RATES


def _replays(
    jobs: Sequence[tuple[ModelTrace, int]], config: SimConfig, service: FloatArray, policy: str
) -> list[_Replay]:
    out: list[_Replay] = []
    # The site's one rate replaces each model's own budget rate.
    mix = replace(mix_for(policy), budget_margin=None)
    for trace, index in jobs:
        arrivals = generate_arrivals(trace, np.random.default_rng([config.seed, index, 0]), service, cap=config.cap)
        spec = config.spec(trace.name, float(service.mean()))
        prep = prepare(arrivals, trace.end_s, spec, config.cap)
        rep = _Replay(
            trace.name,
            f"{policy}",
            prep,
            mix,
            spec,
            config.cold,
            np.random.default_rng([config.seed, index, 1]),
            (),
            trace.name in config.record_models,
        )
        rep.start()
        out.append(rep)
    return out


def _counts(rep: _Replay) -> FloatArray:
    assert rep.gaps is not None
    return np.asarray(rep.gaps.counts, dtype=np.float64)


def _serve(conn: Connection, jobs: list[tuple[ModelTrace, int]], config: SimConfig, policy: str) -> None:
    """One worker: advance its models a step at the rate sent; answer with what the parent needs.

    The answer: idle GPU-seconds spent so far; under a budget in GPU-hours (`priced`), the step curve of
    its models' gaps recorded in the step (`policies.idle_budget.step_curve_s`, from each model's counts
    now minus at the previous step: only those are kept); else its models' share of the default budget
    (`budget_terms`).
    """
    replays = _replays(jobs, config, load_service_times(config.service_csv), policy)
    before = [_counts(r) for r in replays]
    while True:
        msg = conn.recv()
        if msg is None:
            conn.send([r.finish() for r in replays])
            return
        stop_s, rate, priced = msg
        site = np.zeros(RATES.size)
        shadow_s = 0.0
        steps = []
        for k, r in enumerate(replays):
            r.set_rate(rate)
            r.advance(stop_s)
            if priced:
                r.learn(stop_s)  # the gaps recorded up to the step, as the launcher reads them
            now = _counts(r)
            steps.append((r.gaps, r.spec, now - before[k]))
            before[k] = now
            if not priced:
                site_curve, site_shadow_s = budget_terms(r.gaps, r.spec)
                site += site_curve
                shadow_s += site_shadow_s
        curve = idle_budget.step_curve_s(steps if priced else (), rate)
        conn.send((sum(r.res.idle_gpu_s for r in replays), curve, site, shadow_s))


def run_budget(
    traces: Sequence[ModelTrace],
    config: SimConfig,
    budget_gpu_h_per_day: float | None,
    *,
    shadow_share: float | None = None,
    policy: str = "slurmless",
    label: str = "",
    name: str | None = None,
) -> tuple[SimReport, list[float]]:
    """`policy` on `traces` with its rate tracking the budget; the report and the rate after each step.

    The budget is `budget_gpu_h_per_day` of idle, measured; or, with `shadow_share`, that share of what
    a 10-minute keep-alive would have spent on the site's gaps of the last day (priced from the same
    histories, so the rate is a function of them alone: no measured spending is fed back).
    """
    if (budget_gpu_h_per_day is None) == (shadow_share is None):
        raise ValueError("give either an idle budget or a share of the 10-minute keep-alive's spending")
    if (budget_gpu_h_per_day is not None and budget_gpu_h_per_day <= 0) or (
        shadow_share is not None and shadow_share <= 0
    ):
        raise ValueError("the idle budget must be positive")
    if mix_for(policy).keepalive != "currency":
        raise ValueError(f"{policy} has no exchange rate to adjust")
    indexed = sorted(((t, i) for i, t in enumerate(traces)), key=lambda j: -float(j[0].rate_per_s.sum()))
    nworkers = max(1, min(config.workers, len(indexed)))
    shares = [indexed[k::nworkers] for k in range(nworkers)]
    ctx = mp.get_context("fork")
    pipes: list[Connection] = []
    procs = []
    for share in shares:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, share, config, policy), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    end_s = max(t.end_s for t in traces)
    rate = min(mix_for(policy).exchange_rate, float(RATES[-1]))
    state = idle_budget.new_state(rate, 0.0)
    spent_s = 0.0
    rates: list[float] = []
    t = 0.0
    try:
        while t < end_s:
            t = min(t + UPDATE_S, end_s)
            for conn in pipes:
                conn.send((t, rate, shadow_share is None))
            answers = [conn.recv() for conn in pipes]
            total = float(sum(a[0] for a in answers))
            state = idle_budget.record_idle(state, total - spent_s)
            spent_s = total
            if shadow_share is not None:
                # `policies.currency.site_rate`, summed across the workers.
                site = np.sum([a[2] for a in answers], axis=0)
                rate = rate_for_budget(site, shadow_share * float(sum(a[3] for a in answers)), RATES)
            else:
                # `policies.idle_budget`, the launcher's controller, on the step curves summed across the workers.
                state = idle_budget.step(state, t, budget_gpu_h_per_day or 0.0, np.sum([a[1] for a in answers], axis=0))
                rate = state.rate
            rates.append(rate)
        results: list[ModelResult] = []
        for conn in pipes:
            conn.send(None)
            results.extend(conn.recv())
    finally:
        for proc in procs:
            proc.join(timeout=5)
    if name is None:
        name = (
            f"slurmless budget {budget_gpu_h_per_day:g} GPU-h/day"
            if budget_gpu_h_per_day is not None
            else f"slurmless-site@{shadow_share:g}"
        )
    results = [replace(r, policy=name) for r in results]
    report = SimReport(trace=label, seed=config.seed, summaries={name: summarise(results)}, models=len(traces))
    report.recorded = {r.model: {name: r} for r in results if r.model in config.record_models}
    return report, rates


def site_share(policy: str) -> float | None:
    """The budget share a policy name runs under, site-wide: `slurmless` (the default) and
    `slurmless-site@<share>`; None for every other policy (replayed model by model)."""
    if policy == "slurmless":
        return DEFAULT_BUDGET_SHARE
    if policy.startswith("slurmless-site@"):
        return float(policy.partition("@")[2])
    return None


def run_policies(traces: Sequence[ModelTrace], config: SimConfig, *, label: str = "") -> SimReport:
    """`run_traces`, except that the site-budgeted policies (`site_share`) run in lockstep over all models."""
    lockstep = [p for p in config.policies if site_share(p) is not None]
    others = tuple(p for p in config.policies if p not in lockstep)
    report = (
        run_traces(traces, replace(config, policies=others), label=label)
        if others
        else SimReport(trace=label, seed=config.seed, summaries={}, models=len(traces))
    )
    for policy in lockstep:
        site, _rates = run_budget(traces, config, None, shadow_share=site_share(policy), label=label, name=policy)
        report.summaries[policy] = site.summaries[policy]
        for model, results in site.recorded.items():
            report.recorded.setdefault(model, {}).update(results)
    report.summaries = {p: report.summaries[p] for p in config.policies}
    return report
