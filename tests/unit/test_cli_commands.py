"""The `slurmless` command mounts every sub-command statically: a missing one is an import error."""

from __future__ import annotations

import subprocess
import sys

from typer.main import get_command

from slurmless.cli import app

COMMANDS = {
    "up",
    "gateway",
    "launcher",
    "status",
    "events",
    "simulate",
    "dev-cluster",
    "models",
    "keys",
    "tenants",
    "schedules",
}


def test_every_command_is_mounted() -> None:
    group = get_command(app)
    assert set(group.commands) == COMMANDS  # type: ignore[attr-defined]


def test_a_missing_command_module_fails_loudly_instead_of_vanishing() -> None:
    code = "import sys; sys.modules['tracesim.cli'] = None; import slurmless.cli"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "tracesim.cli" in result.stderr
