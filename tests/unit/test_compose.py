"""compose.yaml is valid against the Compose specification (no Docker engine runs here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_matches_compose_spec() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_redis_with_aof_and_both_services() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    assert {"redis", "gateway", "launcher"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    for name in ("gateway", "launcher"):
        env = services[name]["environment"]
        assert env["SLURMLESS_REDIS__URL"].startswith("redis://redis:")


def test_compose_spec_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check can fail: a service with an unknown key is refused."""
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  x:\n    image: redis\n    bogus_key: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
