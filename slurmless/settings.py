"""Settings: one typed object, read from a TOML file and `SLURMLESS_*` environment variables.

Precedence, highest first: constructor arguments, environment (`SLURMLESS_GATEWAY__PORT=8080`),
the TOML file named by `SLURMLESS_CONFIG` (or `./slurmless.toml`), then the embedded defaults,
which run everything on one machine (`slurmless up`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "SLURMLESS_CONFIG"
DEFAULT_CONFIG_FILE = Path("slurmless.toml")


class RedisSettings(BaseModel):
    """Where the shared state lives."""

    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL used by every process. `slurmless up` starts its own server and overrides this."""
    key_prefix: str = "sl:"
    """Prefix of every key slurmless writes, so one Redis can host several deployments."""
    socket_timeout_s: float = 5.0
    """Timeout of a single Redis command; no call waits forever."""


class GatewaySettings(BaseModel):
    """The OpenAI-compatible front door."""

    host: str = "127.0.0.1"
    port: int = 8000
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
    upstream_read_timeout_s: float = 600.0
    """Longest silence tolerated from an engine while streaming."""
    upstream_max_connections: int = 2000


class LauncherSettings(BaseModel):
    """The owner of every instance's life."""

    tick_s: float = 5.0
    """Reconciliation period: one `squeue` per tick for all jobs."""
    callback_host: str = "127.0.0.1"
    callback_port: int = 8099
    callback_public_url: str | None = None
    """URL jobs use to register; defaults to http://callback_host:callback_port."""
    engine_command: list[str] = Field(
        default_factory=lambda: ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    )
    """argv of the engine started by each job; tests use the engine simulator."""
    job_name_prefix: str = "slurmless-"
    job_output_dir: Path = Path("/tmp/slurmless-jobs")
    health_poll_s: float = 1.0
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


class SlurmSettings(BaseModel):
    """How to reach Slurm."""

    backend: str = "cli"
    bin_dir: Path | None = None
    conf: Path | None = None
    """SLURM_CONF for the command-line tools; None uses the system's."""
    command_timeout_s: float = 30.0
    default_partition: str | None = None
    local_cluster: bool = True
    """`slurmless up` starts a throwaway single-node cluster when true."""


class DevClusterSettings(BaseModel):
    """The throwaway local cluster used by `slurmless up` and the tests."""

    base_dir: Path = Path("/tmp/slurmless-dev-cluster")
    gpus: int = 4


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


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and config file, with explicit overrides on top."""
    path = os.environ.get(CONFIG_ENV)
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"{CONFIG_ENV}={path} does not exist: create it or unset the variable")
    return Settings(**overrides)  # type: ignore[arg-type]
