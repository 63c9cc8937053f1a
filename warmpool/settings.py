"""The warm pool's settings: where the shared state lives, and what registrations may ask for.

Part of slurmless's one settings object (`slurmless.settings.Settings`: `redis`, `registry`), read
from the same TOML file and `SLURMLESS_*` variables; kept here, beside the code that uses them.

`SharedConfig` is the root of every process's view of that one file: the sections all components
share (`redis`, `registry`, `model_roots`) and how they are read (precedence, highest first:
constructor arguments, environment (`SLURMLESS_GATEWAY__PORT=8080`), the TOML file named by
`SLURMLESS_CONFIG` (or `./slurmless.toml`), then the embedded defaults). Each component extends it
with its own sections (`queue_gateway.settings.GatewayConfig`, `launcher.settings.LauncherConfig`)
and loads only that with `load_config`; `slurmless.settings.Settings` combines them all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from warmpool.specs import ClusterName

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
    """Slurm accounts a tenant's models and its own `account` may name (empty: none, the job runs under the
    launcher's default)."""
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
    clusters: list[ClusterName] = Field(default_factory=list)
    """The site's clusters (each launcher's `launcher.cluster`); when non-empty, a model naming another is refused."""
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


class SettingsError(ValueError):
    """The settings are unusable; the message is one line naming the setting."""


class SharedConfig(BaseSettings):
    """The sections every component reads, and where all sections come from (see the module docstring).

    A component's view ignores the sections of others; the combined `slurmless.settings.Settings`
    forbids unknown ones, so a misspelt table is refused by `slurmless up` and the CLI.
    """

    model_config = SettingsConfigDict(env_prefix="SLURMLESS_", env_nested_delimiter="__", extra="ignore")

    redis: RedisSettings = Field(default_factory=RedisSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    model_roots: list[Path] = Field(default_factory=list)
    """Model paths must lie under one of these directories."""

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


ConfigT = TypeVar("ConfigT", bound=SharedConfig)


def load_config(cls: type[ConfigT], **overrides: object) -> ConfigT:
    """Read `cls` from the environment and config file, with explicit overrides on top.

    Raises `SettingsError` (one line) for a bad value, so every process refuses it the same way at start.
    """
    path = os.environ.get(CONFIG_ENV)
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"{CONFIG_ENV}={path} does not exist: create it or unset the variable")
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {where}: {message}") from None


__all__ = [
    "CONFIG_ENV",
    "REDIS_SCHEMES",
    "SITE_TENANT_LIMITS",
    "PartitionLimits",
    "RedisSettings",
    "RegistrySettings",
    "SettingsError",
    "SharedConfig",
    "SiteTenantLimits",
    "TenantLimits",
    "load_config",
]
