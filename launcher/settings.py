"""The launcher's settings (`launcher` in `slurmless.settings.Settings`, `SLURMLESS_LAUNCHER__*`), beside
the code that uses them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from policies.currency import DEFAULT_BUDGET_SHARE, DEFAULT_RATE
from slurm.settings import SlurmSettings
from warmpool.keys import DEFAULT_CLUSTER
from warmpool.settings import SharedConfig
from warmpool.specs import CLUSTER_NAME_RE


class LauncherSettings(BaseModel):
    """The owner of every instance's life."""

    tick_s: float = 5.0
    """Reconciliation period: one `squeue` per tick for all jobs."""
    callback_host: str = "127.0.0.1"
    """Address the launcher's callback server (job callbacks and /metrics) listens on."""
    callback_port: int = 8099
    """Port of the callback server; 0 picks a free one."""
    callback_public_url: str | None = None
    """URL jobs use to register; defaults to http://callback_host:callback_port."""
    engine_command: list[str] = Field(default_factory=lambda: ["python3", "-m", "vllm.entrypoints.openai.api_server"])
    """argv of the engine started by each job; tests use the engine simulator."""
    job_name_prefix: str = "slurmless-"
    """Prefix of every job's name: the launcher lists and adopts only jobs whose name starts with it."""
    job_output_dir: Path = Path("~/.slurmless/jobs")
    """Where jobs run (`--chdir`) and write their output (engine logs): storage the compute nodes share,
    created mode 0700; one other users can write to is refused (a home or project directory)."""
    allow_loopback_engines: bool = False
    """Accept engines that register a loopback or link-local address: only for a single-machine dev cluster
    (`slurmless up` turns it on for its local cluster). Off, such registrations are refused."""
    health_poll_s: float = 1.0
    """How often a loading engine is probed until it serves."""
    first_load_timeout_s: float = 1800.0
    """Load budget before any load time was observed: generous, never kill a loader early."""
    register_timeout_s: float = 300.0
    """How long a running job may take to call back before it is declared failed."""
    drain_grace_s: float = 60.0
    """How long a draining instance may finish in-flight requests before it is cancelled."""
    lease_ttl_s: float = 15.0
    """Leader lease: a standby takes over this long after the leader stops renewing."""
    max_failures: int = 5
    """Consecutive failed starts after which a model is marked broken and not retried."""
    env_setup_lines: list[str] = Field(default_factory=list)
    """Admin-chosen lines run before the engine (module loads, apptainer wrappers)."""
    engine_env: dict[str, str] = Field(default_factory=dict)
    """Extra environment for the engine in every job (HF_HOME; ENGINESIM_* in tests)."""
    engine_priority_scheduling: bool = True
    """Start every engine with vLLM's `--scheduling-policy priority` (unless the model's `engine_args` name a
    policy), so that an engine admits waiting interactive requests (priority 0) before waiting batch lines
    (`gateway.batch.line_priority`). Every engine, because any warm instance may run a batch's lines and
    batches start after engines do; with every request at 0 the policy is first-come-first-served."""
    helper_python: str = "python3"
    """Python the job script's helpers (free port, callbacks) run with on the compute node."""
    health_timeout_s: float = 3.0
    """Timeout of one readiness/liveness probe of an engine."""
    unhealthy_after: int = 3
    """Consecutive failed probes after which a ready instance is declared failed."""
    health_check_s: float = 5.0
    """How often every ready instance's `/health` is probed (its own loop, outside the tick)."""
    default_queue_wait_s: float = 120.0
    """p95 Slurm queue wait assumed until one was observed (plans walltime renewal)."""
    default_load_s: float = 300.0
    """p95 load time assumed until one was observed (plans walltime renewal)."""
    load_timeout_factor: float = 3.0
    """Load budget once load times were observed: this many times their p95 (never below first_load_timeout_s / 10)."""
    renew_margin_s: float = 30.0
    """Extra lead for submitting a successor, on top of p95 queue wait + p95 load + the job's signal lead."""
    signal_lead_s: int = 120
    """Seconds of warning (USR1) a job gets before its walltime ends; it deregisters and drains then."""
    batch_cold_starts: bool = False
    """Let batch backlogs start batch jobs: preemptible, backfill-fitted instances that take lines until their
    walltime (by default batch work only uses warm instances' idle capacity)."""
    batch_max_instances: int = Field(4, ge=0)
    """Most instances one model holds for batch backlog (interactive demand may hold more)."""
    batch_lines_per_instance_hour: float = Field(1000.0, gt=0)
    """Batch lines one instance is counted to run in an hour: a backlog asks one instance per this many lines."""
    batch_time_min_min: int = Field(10, ge=1)
    """Longest `--time-min` of a batch job (Slurm's backfill may cut its limit down to it); lower when the model
    sets a lower one or loads in a quarter of it (`launcher.batch_scaling.batch_time_min_min`)."""
    batch_signal_lead_s: int = Field(10, ge=10)
    """Walltime warning of a batch job: its lines are short and retried, so it serves until nearly the end."""
    pending_cancel_grace_s: float = 30.0
    """A pending job is cancelled when nobody has waited for its model this long (and no policy wants it)."""
    failure_backoff_s: float = 10.0
    """Wait before resubmitting after a failed start; doubles per consecutive failure."""
    max_backoff_s: float = 600.0
    """Longest wait between failed starts."""
    failed_submissions_cap: int = Field(10, ge=1)
    """Failed starts (over all models) in `failed_submissions_window_s` past which models that never served
    or are failing submit nothing until the window has room (`policies.submit_cap`)."""
    failed_submissions_window_s: float = Field(300.0, gt=0)
    """The window of `failed_submissions_cap`."""
    default_keepalive_s: float = 600.0
    """Idle time before an unused model scales to zero, until its idle histogram says otherwise."""
    exchange_rate: float = Field(DEFAULT_RATE, gt=0, le=1000)
    """Idle GPU-seconds worth one user-second of waiting: prices every keep-alive and pre-warm
    (`policies.currency`). Lower spends less idle GPU time for more cold starts."""
    idle_budget_share: float | None = Field(DEFAULT_BUDGET_SHARE, gt=0, le=10)
    """The default idle budget: this share of what a fixed 10-minute keep-alive would have spent on the gaps
    every model recorded; the site's one rate is chosen every hour to stay within it (`launcher.site_rate`,
    replayed by `slurmless simulate`'s default policy). None: the fixed `exchange_rate`. Budgets in
    GPU-hours (below, and tenants') take precedence."""
    idle_budget_gpu_hours_per_day: float | None = Field(None, gt=0, le=1_000_000)
    """Idle GPU-hours a day the whole site's warm pool may spend: when set, `exchange_rate` is only where the
    rate starts, and the launcher moves it every hour so that idle spending over the last day tracks this
    (`policies.idle_budget`). Tenants with their own budget (`slurmless tenants set-quota
    --idle-gpu-hours-per-day`) are priced at their own rate. None: the fixed `exchange_rate`."""
    gpu_budget: int | None = Field(None, ge=0)
    """GPUs slurmless may hold at once over all models; when full, the replica worth least gives way. None: no limit."""
    preemptible_partitions: list[str] = Field(default_factory=list)
    """Partitions whose jobs may be preempted: tried first when they start as soon as the others."""
    preemptible_qos: list[str] = Field(default_factory=list)
    """QOS whose jobs may be preempted: tried first like preemptible partitions."""
    gone_retention_s: float = 3600.0
    """How long records of gone and failed instances stay readable before they are purged."""
    launcher_id: str | None = None
    """Identity in the leader lease; a random one per process when unset."""
    cluster: str = Field(DEFAULT_CLUSTER, pattern=CLUSTER_NAME_RE.pattern)
    """The Slurm cluster this launcher submits to: one leader (plus standbys) per cluster, all sharing one
    Redis and one set of gateways (docs/clusters.md). Single-cluster deployments keep "default"."""
    cluster_estimate_ttl_s: float = Field(10.0, gt=0)
    """Several clusters: how long a cluster's `sbatch --test-only` estimate for a model is reused and compared."""
    cluster_estimate_wait_s: float = Field(2.0, ge=0)
    """Several clusters: how long a placement waits for the other live clusters' estimates before it
    decides among those that came (a launcher whose Slurm hangs must not hold up the others)."""
    placement_claim_ttl_s: float = Field(10.0, gt=0)
    """Several clusters: lease of the per-model claim a launcher holds while it writes a new instance,
    so two clusters never submit the same replica."""


class LauncherConfig(SharedConfig):
    """What one launcher process reads from slurmless's settings (`slurmless.settings.Settings` is one)."""

    launcher: LauncherSettings = Field(default_factory=LauncherSettings)
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)


__all__ = ["LauncherConfig", "LauncherSettings"]
