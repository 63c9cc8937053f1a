"""`slurmless` under an idle GPU-hour budget: the exchange rate as a Lagrange multiplier, moved online.

All models are replayed in lockstep, `UPDATE_S` at a time. After each step the site's idle GPU time over
the last day is compared with the budget (pro rata on the first day) and `policies.currency.adjust_rate`
moves the one exchange rate every model prices with, exactly as the launcher does with the idle time
its instances report. Models stay independent between steps, so each worker process owns a share of
them and advances them step by step.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection

import numpy as np

from policies.currency import adjust_rate
from tracesim.arrivals import FloatArray, generate_arrivals, load_service_times
from tracesim.engine import ModelResult, _Replay, prepare
from tracesim.run import SimConfig, SimReport, mix_for, summarise
from tracesim.trace import ModelTrace

UPDATE_S = 3600.0
"""How often the multiplier moves."""
WINDOW_S = 86_400.0
"""Spending is compared with the budget over this trailing window (the budget is per day)."""
GAIN = 0.1


def _replays(
    jobs: Sequence[tuple[ModelTrace, int]], config: SimConfig, service: FloatArray, policy: str
) -> list[_Replay]:
    out: list[_Replay] = []
    mix = mix_for(policy)
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
            False,
        )
        rep.start()
        out.append(rep)
    return out


def _serve(conn: Connection, jobs: list[tuple[ModelTrace, int]], config: SimConfig, policy: str) -> None:
    replays = _replays(jobs, config, load_service_times(config.service_csv), policy)
    while True:
        msg = conn.recv()
        if msg is None:
            conn.send([r.finish() for r in replays])
            return
        stop_s, rate = msg
        for r in replays:
            r.set_rate(rate)
            r.advance(stop_s)
        conn.send(sum(r.res.idle_gpu_s for r in replays))


def run_budget(
    traces: Sequence[ModelTrace],
    config: SimConfig,
    budget_gpu_h_per_day: float,
    *,
    policy: str = "slurmless",
    label: str = "",
) -> tuple[SimReport, list[float]]:
    """`policy` on `traces` with its rate tracking the budget; the report and the rate after each step."""
    if budget_gpu_h_per_day <= 0:
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
    budget_s = budget_gpu_h_per_day * 3600.0
    rate = mix_for(policy).exchange_rate
    spent: list[tuple[float, float]] = [(0.0, 0.0)]
    rates: list[float] = []
    t = 0.0
    try:
        while t < end_s:
            t = min(t + UPDATE_S, end_s)
            for conn in pipes:
                conn.send((t, rate))
            total = float(sum(conn.recv() for conn in pipes))
            spent.append((t, total))
            since = max(0.0, t - WINDOW_S)
            before = np.interp(since, [s for s, _ in spent], [v for _, v in spent])
            window_s = t - since
            rate = adjust_rate(rate, total - before, budget_s * window_s / WINDOW_S, gain=GAIN)
            rates.append(rate)
        results: list[ModelResult] = []
        for conn in pipes:
            conn.send(None)
            results.extend(conn.recv())
    finally:
        for proc in procs:
            proc.join(timeout=5)
    name = f"slurmless budget {budget_gpu_h_per_day:g} GPU-h/day"
    results = [replace(r, policy=name) for r in results]
    report = SimReport(trace=label, seed=config.seed, summaries={name: summarise(results)}, models=len(traces))
    return report, rates
