"""`slurmless dev-cluster up|status|down` from the shell, as an operator would run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

SLURMLESS = [sys.executable, "-m", "slurmless.cli"]


def run(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLURMLESS, *args], capture_output=True, text=True, timeout=timeout_s, check=False)


def test_dev_cluster_lifecycle() -> None:
    base = Path("/tmp") / f"sl-cli-{uuid.uuid4().hex[:8]}"
    try:
        up = run("dev-cluster", "up", "--dir", str(base), "--gpus", "2")
        assert up.returncode == 0, up.stderr
        assert f"SLURM_CONF={base}/slurm.conf" in up.stdout
        sinfo = subprocess.run(
            ["sinfo", "-h", "-o", "%G %t"],
            env={**os.environ, "SLURM_CONF": str(base / "slurm.conf")},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert "gpu:2" in sinfo.stdout
        status = run("dev-cluster", "status", "--dir", str(base))
        assert status.returncode == 0 and "IDLE" in status.stdout
        down = run("dev-cluster", "down", "--dir", str(base))
        assert down.returncode == 0, down.stderr
        assert not base.exists()
        again = run("dev-cluster", "status", "--dir", str(base))
        assert again.returncode == 1
        assert again.stderr.startswith("slurmless: ") and len(again.stderr.strip().splitlines()) == 1
    finally:
        if base.exists():
            run("dev-cluster", "down", "--dir", str(base))
            shutil.rmtree(base, ignore_errors=True)
