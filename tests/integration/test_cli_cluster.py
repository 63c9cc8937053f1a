"""`slurmless dev-cluster up|status|down` from the shell, as an operator would run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from slurm.localcluster import LocalCluster
from slurm.localdbd import accounting_missing
from slurm.localprocs import start_ticks

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


def test_dev_cluster_with_accounting_is_stopped_whole() -> None:
    if accounting_missing():
        pytest.skip(f"accounting not installed (missing {', '.join(accounting_missing())})")
    base = Path("/tmp") / f"sl-cli-{uuid.uuid4().hex[:8]}"
    try:
        up = run("dev-cluster", "up", "--dir", str(base), "--accounting")
        assert up.returncode == 0, up.stderr
        assert "# accounting: slurmdbd on port" in up.stdout
        status = run("dev-cluster", "status", "--dir", str(base))
        assert status.returncode == 0
        assert all(f"{name} " in status.stdout for name in ("mariadb", "slurmdbd")), status.stdout
        pids = LocalCluster.load(base).pids
        added = run("dev-cluster", "exec", "--dir", str(base), "--", "sacctmgr", "-i", "add", "account", "lab")
        assert added.returncode == 0, added.stderr
        shown = run("dev-cluster", "exec", "--dir", str(base), "--", "sacctmgr", "-nP", "show", "account", "lab")
        assert shown.stdout.startswith("lab|"), shown.stdout
        down = run("dev-cluster", "down", "--dir", str(base))
        assert down.returncode == 0, down.stderr
        # Every daemon, the database and slurmdbd included, is gone with the directory.
        # (zombies count as gone: their parent, the `up` process, has exited and init reaps them.)
        assert not [name for name, pid in pids.items() if start_ticks(pid) is not None]
        assert not base.exists()
    finally:
        if base.exists():
            run("dev-cluster", "down", "--dir", str(base))
            shutil.rmtree(base, ignore_errors=True)


def test_dev_cluster_accounting_needs_the_hosts_slurm() -> None:
    refused = run("dev-cluster", "up", "--dir", "/tmp/sl-cli-never", "--accounting", "--slurm", "24.11")
    assert refused.returncode == 1
    assert refused.stderr.startswith("slurmless: ") and len(refused.stderr.strip().splitlines()) == 1
    assert not Path("/tmp/sl-cli-never").exists()
