"""The launcher's Prometheus metrics, in a registry of its own (served at `/metrics` of the callback app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_PHASE_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
_COMMAND_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class LauncherMetrics:
    """Cold-start phase durations, instances by state, Slurm command latency and errors, decisions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cold_start_phase_s = Histogram(
            "slurmless_cold_start_phase_seconds",
            "Cold-start phase durations: queue_wait (submit to running), start (running to registered), load.",
            ["model", "phase"],
            buckets=_PHASE_BUCKETS_S,
            registry=self.registry,
        )
        self.instances = Gauge(
            "slurmless_instances", "Instances by model and state.", ["model", "state"], registry=self.registry
        )
        self.slurm_command_s = Histogram(
            "slurmless_slurm_command_seconds",
            "Latency of Slurm commands.",
            ["command"],
            buckets=_COMMAND_BUCKETS_S,
            registry=self.registry,
        )
        self.slurm_command_errors = Counter(
            "slurmless_slurm_command_errors", "Slurm commands that failed.", ["command"], registry=self.registry
        )
        self.instance_failures = Counter(
            "slurmless_instance_failures",
            "Instances that failed, by reason kind.",
            ["model", "kind"],
            registry=self.registry,
        )
        self.submissions = Counter("slurmless_submissions", "Jobs submitted.", ["model", "why"], registry=self.registry)
        self.tick_s = Histogram(
            "slurmless_launcher_tick_seconds",
            "Wall time of one reconciliation tick.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.ticks = Counter("slurmless_launcher_ticks", "Reconciliation ticks run.", registry=self.registry)
        self.exchange_rate = Gauge(
            "slurmless_launcher_exchange_rate",
            "Exchange rate in force per idle budget (idle GPU-seconds per user-second of waiting).",
            ["budget"],
            registry=self.registry,
        )
        self.idle_gpu_hours = Gauge(
            "slurmless_launcher_idle_gpu_hours",
            "Idle GPU-hours spent over the last day, per idle budget.",
            ["budget"],
            registry=self.registry,
        )
        self.idle_budget_gpu_hours = Gauge(
            "slurmless_launcher_idle_budget_gpu_hours",
            "Idle GPU-hours a day each idle budget allows.",
            ["budget"],
            registry=self.registry,
        )
        self.is_leader = Gauge(
            "slurmless_launcher_leader", "1 while this launcher holds the lease.", registry=self.registry
        )

    def on_slurm_command(self, command: str, seconds: float, ok: bool) -> None:
        """A `slurm.cli_backend.CommandHook`."""
        self.slurm_command_s.labels(command).observe(seconds)
        if not ok:
            self.slurm_command_errors.labels(command).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
