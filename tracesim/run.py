"""Replay a trace directory under every policy and aggregate the figures.

Models are simulated independently (they interact only through a cluster GPU budget, which the replay
leaves unlimited), in parallel worker processes. Every policy sees the same arrivals and the same
sequence of cold-start draws for a model (common random numbers), so differences come from the
policies, not from luck.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from policies.combine import POLICY_MIXES
from policies.currency import RATE_GRID
from policies.types import Occurrence, PolicyMix, ScalingSpec
from tracesim.arrivals import DEFAULT_CAP, FloatArray, generate_arrivals, load_service_times
from tracesim.coldstart import ColdStartModel
from tracesim.engine import ModelResult, _Replay, prepare
from tracesim.trace import ModelTrace, load_trace_dir

TRACES_DIR = Path(__file__).resolve().parents[1] / "traces"
DEFAULT_AZURE_CSV = TRACES_DIR / "azure-llm-2023/AzureLLMInferenceTrace_conv.csv"

# How the policies price a cold start, in idle GPU-seconds. One principle: one idle GPU-second is
# worth one user-second of waiting, so a cold start costs the expected cold start times the requests
# it delays (learnt from history: those arriving within one cold start after an idle gap; with
# `PolicyMix.price_waits`, each weighted by the share of the cold start it waits), and nothing per
# event in the keep-alive. `VALUE_FACTOR` sets the per-event price of the forecast's pre-warm: the
# first request's wait, one expected cold start (the burst behind it is not forecast per slot).
VALUE_FACTOR = 1.0
LOCKSTEP_S = 86_400.0
"""A model's policies are replayed side by side, this much trace time at a time."""

BASELINES = (
    "always-on",
    "keepalive-5m",
    "keepalive-10m",
    "keepalive-60m",
    "reactive-avg",
    "hybrid-histogram",
    "forecast",
    "slurmless-hist",
    "slurmless",
)


def mix_for(name: str) -> PolicyMix:
    """The policy mix a simulator policy name stands for.

    Besides `POLICY_MIXES`: `keepalive-<minutes>m`, `hybrid-p<percentile>` (Shahrad et al.'s window),
    `slurmless@<rate>` (a fixed exchange rate), `slurmless-site@<share>` (the site's one rate spends that
    share of what a 10-minute keep-alive would on its gaps; `slurmless` is the default share; replayed
    by `tracesim.budget.run_policies`), `slurmless-budget@<share>[:<rate cap>]` (the same, each model on
    its own gaps) and
    `clairvoyant@<rate>` (the offline bound at that price).
    """
    if name in POLICY_MIXES:
        return POLICY_MIXES[name]
    try:
        if name.startswith("keepalive-") and name.endswith("m"):
            minutes = float(name[len("keepalive-") : -1])
            if minutes > 0:
                return PolicyMix(keepalive="fixed", fixed_keepalive_s=60.0 * minutes, forecast=False, schedules=False)
        elif name.startswith("hybrid-p"):
            pct = float(name[len("hybrid-p") :])
            if 0 < pct <= 100:
                return PolicyMix(keepalive="histogram", keepalive_percentile=pct, forecast=False, schedules=False)
        elif name.startswith("slurmless-site@"):
            # Replayed by `tracesim.budget.run_policies`, which sets the site's rate as it goes.
            if float(name.partition("@")[2]) > 0:
                return POLICY_MIXES["slurmless"]
        elif name.startswith("slurmless-budget@"):
            raw_margin, _, raw_cap = name.partition("@")[2].partition(":")
            margin = float(raw_margin)
            cap = float(raw_cap) if raw_cap else float(RATE_GRID[-1])
            if 0 < margin <= 100 and cap > 0:
                return replace(POLICY_MIXES["slurmless"], budget_margin=margin, exchange_rate=cap)
        elif name.startswith(("slurmless@", "clairvoyant@", "slurmless-keepalive@")):
            family, _, raw = name.partition("@")
            rate = float(raw)
            if rate > 0:
                if family == "clairvoyant":
                    return PolicyMix(keepalive="oracle", forecast=False, schedules=False, exchange_rate=rate)
                if family == "slurmless-keepalive":
                    return PolicyMix(keepalive="currency", forecast=False, schedules=False, exchange_rate=rate)
                return replace(POLICY_MIXES["slurmless"], exchange_rate=rate, budget_margin=None)
    except ValueError:
        pass
    raise ValueError(
        f"unknown policy {name!r}; known: {sorted(POLICY_MIXES)}, keepalive-<min>m, hybrid-p<pct>, "
        "slurmless@<rate>, slurmless-site@<share>, slurmless-budget@<share>[:<cap>], clairvoyant@<rate>"
    )


@dataclass(frozen=True)
class SimConfig:
    """Everything a replay depends on besides the trace."""

    seed: int = 0
    policies: tuple[str, ...] = BASELINES
    cold: ColdStartModel = field(default_factory=ColdStartModel)
    gpus_per_model: int = 1
    target_concurrency: float = 32.0
    cap: int = DEFAULT_CAP
    service_csv: Path | None = DEFAULT_AZURE_CSV
    record_models: tuple[str, ...] = ()
    workers: int = 2

    def spec(self, name: str, mean_service_s: float) -> ScalingSpec:
        mean_cold_s = self.cold.mean_s()
        return ScalingSpec(
            name=name,
            max_replicas=100_000,
            gpus_per_replica=self.gpus_per_model,
            target_concurrency=self.target_concurrency,
            expected_cold_start_s=mean_cold_s,
            cold_start_p99_s=self.cold.quantile_s(0.99),
            cold_start_value_s=VALUE_FACTOR * mean_cold_s,
            keepalive_event_value_s=0.0,
            cold_request_value_s=mean_cold_s,
            mean_service_s=mean_service_s,
            reload_idle_s=self.cold.mean_load_s(),
        )


@dataclass(frozen=True)
class PolicySummary:
    """The figures the issue asks for, for one policy over a whole trace."""

    cold_start_fraction: float
    cold_start_fraction_p75: float
    cold_wait_p50_s: float
    cold_wait_p99_s: float
    gpu_hours: float
    idle_gpu_hours: float
    cold_starts: int
    requests: float
    cold_requests: float

    def as_json(self) -> dict[str, float]:
        return {
            "cold_start_fraction": self.cold_start_fraction,
            "cold_start_fraction_p75": self.cold_start_fraction_p75,
            "cold_wait_p50_s": self.cold_wait_p50_s,
            "cold_wait_p99_s": self.cold_wait_p99_s,
            "gpu_hours": self.gpu_hours,
            "idle_gpu_hours": self.idle_gpu_hours,
            "cold_starts": float(self.cold_starts),
            "requests": self.requests,
            "cold_requests": self.cold_requests,
        }


@dataclass
class SimReport:
    """Per-policy summaries, plus the per-model results of the recorded models (for plots)."""

    trace: str
    seed: int
    summaries: dict[str, PolicySummary]
    recorded: dict[str, dict[str, ModelResult]] = field(default_factory=dict)
    demand: dict[str, FloatArray] = field(default_factory=dict)
    models: int = 0

    def as_json(self) -> dict[str, object]:
        return {"policies": {name: s.as_json() for name, s in self.summaries.items()}}


def weighted_quantile(values: FloatArray, weights: FloatArray, q: float) -> float:
    """The q-quantile of `values` where each counts `weights` times; NaN when empty."""
    if values.size == 0:
        return float("nan")
    order = np.argsort(values)
    v = values[order]
    cw = np.cumsum(weights[order])
    idx = int(np.searchsorted(cw, q * cw[-1], side="left"))
    return float(v[min(idx, v.size - 1)])


def summarise(results: Sequence[ModelResult]) -> PolicySummary:
    """Aggregate one policy's per-model results."""
    requests = sum(r.requests for r in results)
    cold = sum(r.cold_requests for r in results)
    fractions = np.asarray([r.cold_fraction for r in results if r.requests > 0])
    waits = np.concatenate([np.zeros(0), *(w for r in results for w in r.cold_waits_s)])
    weights = np.concatenate([np.zeros(0), *(w for r in results for w in r.cold_weights)])
    return PolicySummary(
        cold_start_fraction=cold / requests if requests else 0.0,
        cold_start_fraction_p75=float(np.percentile(fractions, 75)) if fractions.size else 0.0,
        cold_wait_p50_s=weighted_quantile(waits, weights, 0.50) if waits.size else 0.0,
        cold_wait_p99_s=weighted_quantile(waits, weights, 0.99) if waits.size else 0.0,
        gpu_hours=sum(r.gpu_s for r in results) / 3600.0,
        idle_gpu_hours=sum(r.idle_gpu_s for r in results) / 3600.0,
        cold_starts=sum(r.cold_starts for r in results),
        requests=requests,
        cold_requests=cold,
    )


def simulate_one(
    trace: ModelTrace,
    index: int,
    config: SimConfig,
    service_samples: FloatArray,
    occurrences: tuple[Occurrence, ...] = (),
) -> list[ModelResult]:
    """Every configured policy on one model; seeded by (seed, model index)."""
    arrivals = generate_arrivals(trace, np.random.default_rng([config.seed, index, 0]), service_samples, cap=config.cap)
    mean_service_s = float(service_samples.mean())
    spec = config.spec(trace.name, mean_service_s)
    prep = prepare(arrivals, trace.end_s, spec, config.cap)
    record = trace.name in config.record_models
    # What the policies learn is shared between them (`_Replay._learn_shared`); they advance a day at a
    # time together so that the shared steps of days every policy has passed can be dropped.
    shared: dict[tuple[str, int], object] = {}
    replays = [
        _Replay(
            trace.name,
            policy,
            prep,
            mix_for(policy),
            spec,
            config.cold,
            np.random.default_rng([config.seed, index, 1]),
            occurrences,
            record,
            shared,
        )
        for policy in config.policies
    ]
    for rep in replays:
        rep.start()
    stop_s = 0.0
    while stop_s < prep.end_s:
        stop_s = min(stop_s + LOCKSTEP_S, prep.end_s)
        for rep in replays:
            rep.advance(stop_s)
        done_w = min(rep.learnt_windows for rep in replays)
        for key in [k for k in shared if k[1] < done_w]:
            del shared[key]
    return [rep.finish() for rep in replays]


def _worker(args: tuple[ModelTrace, int, SimConfig, FloatArray]) -> list[ModelResult]:
    trace, index, config, service = args
    return simulate_one(trace, index, config, service)


def run_traces(traces: Sequence[ModelTrace], config: SimConfig, *, label: str = "") -> SimReport:
    """Replay already loaded model traces under every configured policy."""
    for policy in config.policies:
        mix_for(policy)
    service = load_service_times(config.service_csv)
    jobs = [(t, i, config, service) for i, t in enumerate(traces)]
    # The biggest models first, so one straggler does not finish alone at the end.
    jobs.sort(key=lambda j: -float(j[0].rate_per_s.sum()))
    results: list[list[ModelResult]]
    workers = max(1, min(config.workers, os.cpu_count() or 1))
    if workers == 1 or len(jobs) == 1:
        results = [_worker(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_worker, jobs, chunksize=1))
    by_policy: dict[str, list[ModelResult]] = {p: [] for p in config.policies}
    recorded: dict[str, dict[str, ModelResult]] = {}
    for model_results in results:
        for r in model_results:
            by_policy[r.policy].append(r)
            if r.model in config.record_models:
                recorded.setdefault(r.model, {})[r.policy] = r
    demand = {t.name: t.rate_per_s for t in traces if t.name in config.record_models}
    return SimReport(
        trace=label,
        seed=config.seed,
        summaries={p: summarise(rs) for p, rs in by_policy.items()},
        recorded=recorded,
        demand=demand,
        models=len(traces),
    )


def run_simulation(
    trace_dir: Path,
    *,
    seed: int = 0,
    policies: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    record_models: Sequence[str] = (),
    cold: ColdStartModel | None = None,
    gpus_per_model: int = 1,
    workers: int = 2,
    service_csv: Path | None = DEFAULT_AZURE_CSV,
) -> SimReport:
    """Replay every `chunk-<id>-trace.csv` in `trace_dir` (each client one model) under `policies`.

    `models` restricts the replay to those client ids; `record_models` keeps their timelines for the
    plot. Defaults: all baselines and ours, the default cold-start model, 1 GPU per model.
    """
    traces = load_trace_dir(trace_dir)
    if models:
        wanted = set(models)
        traces = [t for t in traces if t.name in wanted]
    config = SimConfig(
        seed=seed,
        policies=tuple(policies) if policies else BASELINES,
        cold=cold or ColdStartModel(),
        gpus_per_model=gpus_per_model,
        record_models=tuple(record_models),
        workers=workers,
        service_csv=service_csv,
    )
    return run_traces(traces, config, label=str(trace_dir))


def format_table(report: SimReport) -> str:
    """A plain-text table of the per-policy figures."""
    head = (
        f"{'policy':<17} {'cold frac':>10} {'p75/model':>10} {'wait p50 s':>10} {'wait p99 s':>10} "
        f"{'cold starts':>11} {'GPU-h':>12} {'idle GPU-h':>11}"
    )
    lines = [f"trace {report.trace} ({report.models} models, seed {report.seed})", head, "-" * len(head)]
    for name, s in report.summaries.items():
        lines.append(
            f"{name:<17} {s.cold_start_fraction:>10.3e} {s.cold_start_fraction_p75:>10.3e} "
            f"{s.cold_wait_p50_s:>10.1f} {s.cold_wait_p99_s:>10.1f} {s.cold_starts:>11d} "
            f"{s.gpu_hours:>12.1f} {s.idle_gpu_hours:>11.1f}"
        )
    return "\n".join(lines)
