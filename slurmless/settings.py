"""Settings: one typed object, read from a TOML file and `SLURMLESS_*` environment variables.

Each component's section is declared beside it (`queue_gateway/settings.py`, `launcher/settings.py`,
`slurm/settings.py`, `warmpool/settings.py`) and imported by that component from there; this module
combines them, so the variable names (`SLURMLESS_GATEWAY__PORT`) and the TOML tables are one tree.

Precedence, highest first: constructor arguments, environment (`SLURMLESS_GATEWAY__PORT=8080`),
the TOML file named by `SLURMLESS_CONFIG` (or `./slurmless.toml`), then the embedded defaults,
which run everything on one machine (`slurmless up`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from launcher.settings import LauncherSettings
from queue_gateway.settings import ExternalSettings, GatewaySettings, MetricsSettings
from slurm.settings import DevClusterSettings, SlurmSettings
from warmpool.settings import (
    REDIS_SCHEMES,
    SITE_TENANT_LIMITS,
    PartitionLimits,
    RedisSettings,
    RegistrySettings,
    SiteTenantLimits,
    TenantLimits,
)

CONFIG_ENV = "SLURMLESS_CONFIG"
DEFAULT_CONFIG_FILE = Path("slurmless.toml")


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


# The sections are re-exported: the composition root (`up`, the CLI, tests) reads them all from here.
__all__ = [
    "CONFIG_ENV",
    "REDIS_SCHEMES",
    "SITE_TENANT_LIMITS",
    "DevClusterSettings",
    "ExternalSettings",
    "GatewaySettings",
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
