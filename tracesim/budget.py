"""`slurmless` under a site-wide idle GPU-hour budget: one exchange rate, chosen so spending meets it.

All models are replayed in lockstep, `UPDATE_S` at a time. After each step the rate for the next one
is chosen by `policies.currency.rate_for_budget` (a bisection over `RATE_GRID`): the largest rate at
which the learnt gap histories say the gaps of the last day would have cost at most the budget minus
the residual, where the residual is what was actually spent beyond what the histories predicted at
the rates in force (pre-warms, idle inside bursts, the model's error). No multiplier is integrated,
so nothing winds up while models have no history. Models stay independent between steps, so each
worker process owns a share of them and advances them step by step.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection

import numpy as np

from policies.currency import DEFAULT_BUDGET_SHARE, SITE_RATES, budget_terms, rate_for_budget, spend_curve_s
from tracesim.arrivals import FloatArray, generate_arrivals, load_service_times
from tracesim.engine import ModelResult, _Replay, prepare
from tracesim.run import SimConfig, SimReport, mix_for, run_traces, summarise
from tracesim.trace import ModelTrace

UPDATE_S = 3600.0
"""How often the rate is chosen again."""
WINDOW_S = 86_400.0
"""The budget is per day: spending and the gaps priced are those of this trailing window."""
RATES: FloatArray = SITE_RATES
_STEPS = int(WINDOW_S // UPDATE_S)


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

    The answer: idle GPU-seconds spent so far, the spending the histories predict for the gaps of the
    trailing day at every rate of `RATES`, and their prediction for the gaps of the step just replayed
    at the rate that was in force.
    """
    replays = _replays(jobs, config, load_service_times(config.service_csv), policy)
    past: list[deque[FloatArray]] = [deque([_counts(r)], maxlen=_STEPS + 1) for r in replays]
    while True:
        msg = conn.recv()
        if msg is None:
            conn.send([r.finish() for r in replays])
            return
        stop_s, rate = msg
        curve = np.zeros(RATES.size)
        site = np.zeros(RATES.size)
        predicted_s = shadow_s = 0.0
        for r, seen in zip(replays, past, strict=True):
            r.set_rate(rate)
            r.advance(stop_s)
            now = _counts(r)
            step = now - seen[-1]
            seen.append(now)
            if step.any():
                predicted_s += float(spend_curve_s(r.gaps, r.spec, np.asarray([rate]), counts=step)[0])
            day = now - seen[0]
            if day.any():
                curve += spend_curve_s(r.gaps, r.spec, RATES, counts=day)
            site_curve, site_shadow_s = budget_terms(r.gaps, r.spec)
            site += site_curve
            shadow_s += site_shadow_s
        conn.send((sum(r.res.idle_gpu_s for r in replays), curve, predicted_s, site, shadow_s))


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
    budget_s = (budget_gpu_h_per_day or 0.0) * 3600.0
    rate = min(mix_for(policy).exchange_rate, float(RATES[-1]))
    residuals: deque[float] = deque(maxlen=_STEPS)
    spent_s = 0.0
    rates: list[float] = []
    t = 0.0
    try:
        while t < end_s:
            t = min(t + UPDATE_S, end_s)
            for conn in pipes:
                conn.send((t, rate))
            answers = [conn.recv() for conn in pipes]
            total = float(sum(a[0] for a in answers))
            curve = np.sum([a[1] for a in answers], axis=0)
            predicted_s = float(sum(a[2] for a in answers))
            residuals.append((total - spent_s) - predicted_s)
            spent_s = total
            if shadow_share is not None:
                # `policies.currency.site_rate`, summed across the workers.
                site = np.sum([a[3] for a in answers], axis=0)
                rate = rate_for_budget(site, shadow_share * float(sum(a[4] for a in answers)), RATES)
            else:
                window_s = min(t, WINDOW_S)
                rate = rate_for_budget(curve, budget_s * window_s / WINDOW_S - sum(residuals), RATES)
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
