"""Settings: one typed object, read from a TOML file and `SLURMLESS_*` environment variables.

Precedence, highest first: constructor arguments, environment (`SLURMLESS_GATEWAY__PORT=8080`),
the TOML file named by `SLURMLESS_CONFIG` (or `./slurmless.toml`), then the embedded defaults,
which run everything on one machine (`slurmless up`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from queue_gateway.batch_settings import BatchSettings

CONFIG_ENV = "SLURMLESS_CONFIG"
DEFAULT_CONFIG_FILE = Path("slurmless.toml")


REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
"""URL schemes every process (gateway, launcher with arq, admin API, `slurmless up`) can use."""


class RedisSettings(BaseModel):
    """Where the shared state lives."""

    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL used by every process: `redis://`, `rediss://` (TLS) or `unix://`. Sentinel URLs are refused
    (see docs/security.md). `slurmless up` starts its own server and overrides this."""
    key_prefix: str = "sl:"
    """Prefix of every key slurmless writes, so one Redis can host several deployments."""
    socket_timeout_s: float = 5.0
    """Timeout of a single Redis command; no call waits forever."""
    admin_url: str | None = None
    """The admin API's own connection (a Redis user that may write the registry and keys), when `url` is one
    that may not, as with the per-role ACL users of docs/security.md. None: the admin API uses `url`."""

    @field_validator("url", "admin_url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.partition("://")[0].lower()
        if scheme not in REDIS_SCHEMES:
            if "sentinel" in scheme:
                raise ValueError(
                    f"{scheme}:// is not supported: point redis.url at the current master (redis:// or rediss://),"
                    " e.g. through a Sentinel-aware proxy"
                )
            raise ValueError(f"redis.url must start with redis://, rediss:// or unix://, not {scheme}://")
        return value


class GatewaySettings(BaseModel):
    """The OpenAI-compatible front door."""

    host: str = "127.0.0.1"
    """Address the gateway listens on; 0.0.0.0 behind a load balancer."""
    port: int = 8000
    """Port of the OpenAI API (and the admin API under /admin, health and metrics)."""
    cold_wait_budget_s: float = 900.0
    """How long a request may wait while no instance of its model runs (Slurm queue + load)."""
    warm_wait_budget_s: float = 30.0
    """How long a request may wait while instances run but are all busy."""
    queue_max_per_model: int = 1000
    """Tickets one model's queue may hold before new requests are refused."""
    queue_max_global: int = 20000
    """Tickets all queues together may hold."""
    progress_interval_s: float = 5.0
    """Seconds between SSE comment lines sent to a held streaming client."""
    key_cache_ttl_s: float = 5.0
    """How long a verified API key is trusted in-process; a revoked key stops working after this."""
    lease_ttl_s: float = 15.0
    """A gateway process that has not renewed its lease for this long is dead; its tickets and slots are reclaimed."""
    async_result_ttl_s: float = 3600.0
    """How long async results stay fetchable."""
    upstream_connect_timeout_s: float = 5.0
    """Timeout of connecting to an engine."""
    upstream_read_timeout_s: float = 600.0
    """Longest silence tolerated from an engine while streaming."""
    upstream_max_connections: int = 2000
    """Connections to engines one gateway process keeps open at most."""
    upstream_retries: int = 1
    """Retries on another instance when an engine fails before the first byte reached the client."""
    speculative_forward: bool = True
    """Send a request to its engine while its admit is on the way to Redis when the last admit left the model's
    only ready instance at most half full; the answer is used only if the admit gives that instance the slot."""
    model_cache_ttl_s: float = 2.0
    """How long a resolved model spec is trusted in-process; registrations and changes show after this."""
    grant_check_interval_s: float = 1.0
    """Safety net: how often held tickets are looked up in case a grant message was lost."""
    async_max_running: int = 256
    """Async requests one gateway process runs (holds or proxies) at once."""
    max_body_bytes: int = Field(10_000_000, ge=1024)
    """Largest request body on the OpenAI surface (413 beyond it); async bodies (kept in Redis) share the cap."""
    max_header_bytes: int = Field(32_768, ge=1024)
    """Largest request line plus headers (431 beyond it), like NGINX's `large_client_header_buffers 4 8k`."""
    header_timeout_s: float = Field(60.0, gt=0)
    """A request's line and headers must arrive within this time (408), like NGINX's `client_header_timeout`."""
    body_timeout_s: float = Field(60.0, gt=0)
    """A request's whole body must arrive within this time (408), like NGINX's `client_body_timeout`."""
    max_connections: int = Field(10_000, ge=1)
    """Open client connections one gateway process accepts; more are answered 503 and closed."""
    async_max_result_bytes: int = Field(16_000_000, ge=1024)
    """Largest async answer kept in Redis; a longer one is stored as a 502 error saying so."""
    metrics_public: bool = False
    """Serve `/metrics` without a token; by default it needs `metrics.token` or the admin token."""
    serve_admin: bool = True
    """Mount the admin API at `/admin`. Web-facing gateways of a site that keeps admin credentials off them
    set this false and run one internal gateway with it (docs/security.md)."""
    batch: BatchSettings = Field(default_factory=BatchSettings)
    """The Files and Batches API and the batch runner."""


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
    """Let batch lines that find no ready instance start one (by default batch work only uses warm instances)."""
    pending_cancel_grace_s: float = 30.0
    """A pending job is cancelled when nobody has waited for its model this long (and no policy wants it)."""
    failure_backoff_s: float = 10.0
    """Wait before resubmitting after a failed start; doubles per consecutive failure."""
    max_backoff_s: float = 600.0
    """Longest wait between failed starts."""
    default_keepalive_s: float = 600.0
    """Idle time before an unused model scales to zero, until its idle histogram says otherwise."""
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


class SlurmSettings(BaseModel):
    """How to reach Slurm."""

    backend: str = "cli"
    """How Slurm is reached: "cli" runs sbatch, squeue, scancel and sinfo."""
    bin_dir: Path | None = None
    """Directory of the Slurm commands; None finds them on PATH."""
    conf: Path | None = None
    """SLURM_CONF for the command-line tools; None uses the system's."""
    command_timeout_s: float = 30.0
    """Timeout of one Slurm command; the command is killed when it expires."""
    default_partition: str | None = None
    """Partition used for models that name none; None leaves it to the cluster's default."""
    local_cluster: bool = True
    """`slurmless up` starts a throwaway single-node cluster when true."""


class PartitionLimits(BaseModel):
    """What one Slurm partition offers a single instance; registrations beyond it are refused."""

    gpu_mem_gb: float = 80.0
    """Memory of one GPU in the partition, for estimating GPUs from a model's config.json."""
    gpus_per_node: int = 8
    """GPUs of one node: the most one instance may ask for per node."""
    max_nodes: int = 1
    """Nodes one instance may span (multi-node tensor/pipeline parallelism)."""
    cpus_per_node: int | None = None
    """CPUs of one node, when registrations must fit them."""
    mem_mb_per_node: int | None = None
    """Memory of one node in MB, when registrations must fit it."""


class TenantLimits(BaseModel):
    """What a tenant's self-service keys may ask for; None inherits (from the site's `tenant_limits`).

    In the site's defaults a None cap means unlimited and an empty list allows nothing but the
    cluster's default (no partition, account or QOS named). Admins are not bound by these.
    """

    model_config = ConfigDict(extra="forbid")

    max_gpus: int | None = Field(None, ge=0)
    """GPUs the tenant's instances may hold at once (requested through draining), checked at each submission."""
    max_gpu_hours_per_day: float | None = Field(None, ge=0)
    """GPU-hours the tenant's jobs may be granted per UTC day, each charged at submission for its full time limit."""
    partitions: list[str] | None = None
    """Partitions the tenant may name."""
    accounts: list[str] | None = None
    """Slurm accounts the tenant may name."""
    qos: list[str] | None = None
    """QOS the tenant may name."""
    max_min_replicas: int | None = Field(None, ge=0)
    max_replicas: int | None = Field(None, ge=0)
    max_keepalive_s: float | None = Field(None, ge=0)
    max_cold_wait_budget_s: float | None = Field(None, gt=0)
    max_warm_wait_budget_s: float | None = Field(None, gt=0)
    max_queue: int | None = Field(None, ge=1)
    max_gpus_per_instance: int | None = Field(None, ge=0)
    """GPUs per node times nodes of one instance."""
    max_time_limit_min: int | None = Field(None, ge=1)
    max_warm_s: float | None = Field(None, gt=0)
    """Longest `models warm` a tenant may ask for."""


class SiteTenantLimits(TenantLimits):
    """The limits of every tenant unless its own say otherwise: deliberately small, a site raises them."""

    max_gpus: int | None = Field(8, ge=0)
    """GPUs a tenant's instances may hold at once (requested through draining), checked before each `sbatch`."""
    max_gpu_hours_per_day: float | None = Field(96.0, ge=0)
    """GPU-hours a tenant's jobs may be granted per UTC day, each charged at submission for its whole time limit."""
    partitions: list[str] | None = Field(default_factory=list)
    """Partitions a tenant may name (empty: only the cluster's default)."""
    accounts: list[str] | None = Field(default_factory=list)
    """Slurm accounts a tenant may name (empty: none, the job runs under the launcher's default)."""
    qos: list[str] | None = Field(default_factory=list)
    """QOS a tenant may name (empty: none)."""
    max_min_replicas: int | None = Field(0, ge=0)
    """Largest `policy.min_replicas` (replicas kept warm whatever the demand)."""
    max_replicas: int | None = Field(2, ge=0)
    """Largest `policy.max_replicas`."""
    max_keepalive_s: float | None = Field(3600.0, ge=0)
    """Largest `policy.keepalive_min_s` and `policy.keepalive_max_s`."""
    max_cold_wait_budget_s: float | None = Field(1800.0, gt=0)
    """Largest `policy.cold_wait_budget_s`."""
    max_warm_wait_budget_s: float | None = Field(120.0, gt=0)
    """Largest `policy.warm_wait_budget_s`."""
    max_queue: int | None = Field(200, ge=1)
    """Largest `policy.queue_max`."""
    max_gpus_per_instance: int | None = Field(4, ge=0)
    """Most GPUs (per node times nodes) one instance of a tenant's model may ask for."""
    max_time_limit_min: int | None = Field(480, ge=1)
    """Longest `resources.time_limit_min`."""
    max_warm_s: float | None = Field(8 * 3600.0, gt=0)
    """Longest `models warm` a tenant may ask for."""


SITE_TENANT_LIMITS = SiteTenantLimits()
"""The defaults as a value (the launcher's, when it is built without settings)."""


class RegistrySettings(BaseModel):
    """What the admin API accepts when models are registered."""

    partitions: dict[str, PartitionLimits] = Field(default_factory=dict)
    """Known partitions and their limits; when non-empty, other partitions are refused."""
    default_limits: PartitionLimits = Field(default_factory=PartitionLimits)
    """Limits assumed for the cluster default partition and when `partitions` is empty."""
    allow_hub_ids: bool = False
    """Accept hub ids (org/name) as sources: only for sites whose nodes reach a model hub."""
    check_paths_locally: bool = False
    """Also check config.json / adapter_config.json at registration (single-machine deployments)."""
    kv_headroom_tokens: int = 8192
    """KV-cache room reserved per instance when estimating GPUs (capped by the model's context)."""
    tenant_limits: SiteTenantLimits = Field(default_factory=SiteTenantLimits)
    """Limits of every tenant's self-service keys, unless the tenant's own `limits` say otherwise."""


class MetricsSettings(BaseModel):
    """What Prometheus is told about engines, and the credential it scrapes them with."""

    token: str | None = None
    """Bearer token that may read the gateway's /metrics, the admin API's service discovery, pool metrics and
    engine metrics proxy, nothing else: give Prometheus this rather than an admin key. Unset: only admin
    credentials may."""
    cluster: str = "slurm"
    """Value of the `cluster` label on discovered engines (the Slurm cluster's name)."""
    gateway_url: str | None = None
    """Base URL Prometheus reaches this gateway at, for the engine targets it discovers; unset: the URL the
    discovery request itself came to."""
    engine_timeout_s: float = Field(5.0, gt=0)
    """Timeout of one proxied scrape of an engine's /metrics."""

    @field_validator("gateway_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"{value!r} is not an http(s) URL with a host and no query: http://gw.example.org:8000")
        return value


class DevClusterSettings(BaseModel):
    """The throwaway local cluster used by `slurmless up` and the tests."""

    base_dir: Path = Path("/tmp/slurmless-dev-cluster")
    """Directory holding the local cluster's configuration, state and logs."""
    gpus: int = 4
    """Fake GPUs the local node declares."""


class Settings(BaseSettings):
    """Everything slurmless reads at start-up; built once and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="SLURMLESS_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    launcher: LauncherSettings = Field(default_factory=LauncherSettings)
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    dev_cluster: DevClusterSettings = Field(default_factory=DevClusterSettings)
    state_dir: Path = Path("/tmp/slurmless")
    """Where `slurmless up` keeps its Redis data and logs."""
    admin_token: str | None = None
    """Bootstrap admin bearer token; `slurmless up` generates one when unset."""
    model_roots: list[Path] = Field(default_factory=list)
    """Model paths must lie under one of these directories."""
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file),
        )


class SettingsError(ValueError):
    """The settings are unusable; the message is one line naming the setting."""


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and config file, with explicit overrides on top.

    Raises `SettingsError` (one line) for a bad value, so every process refuses it the same way at start.
    """
    path = os.environ.get(CONFIG_ENV)
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"{CONFIG_ENV}={path} does not exist: create it or unset the variable")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {where}: {message}") from None
