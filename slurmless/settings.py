"""Settings: one typed object, read from a TOML file and `SLURMLESS_*` environment variables.

Each component's section is declared beside it (`queue_gateway/settings.py`, `launcher/settings.py`,
`slurm/settings.py`, `warmpool/settings.py`) and imported by that component from there; this module
combines them, so the variable names (`SLURMLESS_GATEWAY__PORT`) and the TOML tables are one tree.

Precedence, highest first: constructor arguments, environment (`SLURMLESS_GATEWAY__PORT=8080`),
the TOML file named by `SLURMLESS_CONFIG` (or `./slurmless.toml`), then the embedded defaults,
which run everything on one machine (`slurmless up`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from launcher.settings import LauncherConfig, LauncherSettings
from queue_gateway.settings import ExternalSettings, GatewayConfig, GatewaySettings, MetricsSettings
from slurm.settings import DevClusterSettings, SlurmSettings
from warmpool.settings import (
    CONFIG_ENV,
    REDIS_SCHEMES,
    SITE_TENANT_LIMITS,
    PartitionLimits,
    RedisSettings,
    RegistrySettings,
    SettingsError,
    SiteTenantLimits,
    TenantLimits,
    load_config,
)


class Settings(GatewayConfig, LauncherConfig):
    """Everything slurmless reads at start-up; built once and passed down.

    The gateway's and the launcher's views (`GatewayConfig`, `LauncherConfig`) with the sections only
    `slurmless up` reads; unknown sections are refused here.
    """

    model_config = SettingsConfigDict(
        env_prefix="SLURMLESS_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    dev_cluster: DevClusterSettings = Field(default_factory=DevClusterSettings)
    state_dir: Path = Path("/tmp/slurmless")
    """Where `slurmless up` keeps its Redis data and logs."""


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and config file, with explicit overrides on top.

    Raises `SettingsError` (one line) for a bad value, so every process refuses it the same way at start.
    """
    return load_config(Settings, **overrides)


# The sections are re-exported: the composition root (`up`, the CLI, tests) reads them all from here.
__all__ = [
    "CONFIG_ENV",
    "REDIS_SCHEMES",
    "SITE_TENANT_LIMITS",
    "DevClusterSettings",
    "ExternalSettings",
    "GatewayConfig",
    "GatewaySettings",
    "LauncherConfig",
    "LauncherSettings",
    "MetricsSettings",
    "PartitionLimits",
    "RedisSettings",
    "RegistrySettings",
    "Settings",
    "SettingsError",
    "SiteTenantLimits",
    "SlurmSettings",
    "TenantLimits",
    "load_settings",
]
