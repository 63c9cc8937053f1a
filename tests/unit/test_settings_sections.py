"""Each component's settings live beside it; `slurmless.settings` combines them under the same names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from launcher.settings import LauncherSettings
from queue_gateway.settings import GatewaySettings, MetricsSettings
from slurm.settings import DevClusterSettings, SlurmSettings
from slurmless.settings import Settings, load_settings
from testing.pyast import parse_file
from warmpool.settings import RedisSettings, RegistrySettings

ROOT = Path(__file__).resolve().parents[2]
SECTION_MODULES = ("queue_gateway/settings.py", "launcher/settings.py", "slurm/settings.py", "warmpool/settings.py")


def test_the_combined_settings_are_the_components_sections() -> None:
    fields = Settings.model_fields
    sections = {
        "redis": RedisSettings,
        "gateway": GatewaySettings,
        "launcher": LauncherSettings,
        "slurm": SlurmSettings,
        "dev_cluster": DevClusterSettings,
        "registry": RegistrySettings,
        "metrics": MetricsSettings,
    }
    for name, section in sections.items():
        assert fields[name].annotation is section, name


def test_environment_variable_names_are_unchanged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLURMLESS_CONFIG", str(tmp_path / "absent.toml"))
    (tmp_path / "absent.toml").write_text("")
    monkeypatch.setenv("SLURMLESS_GATEWAY__PORT", "8123")
    monkeypatch.setenv("SLURMLESS_LAUNCHER__TICK_S", "2.5")
    monkeypatch.setenv("SLURMLESS_SLURM__COMMAND_TIMEOUT_S", "7")
    monkeypatch.setenv("SLURMLESS_REDIS__KEY_PREFIX", "x:")
    monkeypatch.setenv("SLURMLESS_METRICS__CLUSTER", "big")
    monkeypatch.setenv("SLURMLESS_REGISTRY__ALLOW_HUB_IDS", "true")
    monkeypatch.setenv("SLURMLESS_DEV_CLUSTER__GPUS", "2")
    s = load_settings()
    assert (s.gateway.port, s.launcher.tick_s, s.slurm.command_timeout_s, s.redis.key_prefix) == (8123, 2.5, 7, "x:")
    assert (s.metrics.cluster, s.registry.allow_hub_ids, s.dev_cluster.gpus) == ("big", True, 2)


@pytest.mark.parametrize("path", SECTION_MODULES)
def test_a_components_settings_do_not_import_the_composition_root(path: str) -> None:
    tree = parse_file(ROOT / path)
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert not any(m.split(".")[0] == "slurmless" for m in imported), imported
