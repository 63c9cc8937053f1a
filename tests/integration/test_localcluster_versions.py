"""The local cluster on the newer Slurm releases (chrooted into their cached roots): it starts, runs a
job inside the root with its GPUs, serves slurmrestd, and `stop()` leaves no process behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from slurm.localcluster import LocalCluster
from slurm.localprocs import all_pids, has_fd_under, read_stat
from slurm.rootfs import RootfsMissing, SlurmRuntime
from tests.fixtures.slurm_cluster import require_slurm_binaries

pytestmark = pytest.mark.slurm


@pytest.mark.parametrize("version", ["24.11", "26.05"])
def test_a_chrooted_cluster_runs_jobs_in_its_root_and_stops_clean(version: str, tmp_path: Path) -> None:
    require_slurm_binaries()
    try:
        runtime = SlurmRuntime.for_version(version)
    except RootfsMissing as exc:
        pytest.skip(str(exc))
    out = tmp_path / "out"
    out.mkdir()
    cluster = LocalCluster(Path(f"/tmp/slurmless-lcv-{version}"), runtime=runtime, gpus=2)
    cluster.start()
    try:
        assert cluster.run(["sinfo", "--version"]).strip() == f"slurm-wlm {version}.5"
        script = (
            "#!/bin/bash\n"
            f"#SBATCH --output={out}/%j.out\n"
            "#SBATCH --gres=gpu:1\n"
            'echo "$(cat /etc/debian_version) gpus=$CUDA_VISIBLE_DEVICES"; sleep 300\n'
        )
        job_id = subprocess.run(
            cluster.runtime.argv(["sbatch", "--parsable"]),
            input=script,
            env={"SLURM_CONF": str(cluster.conf_path), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        log = out / f"{job_id}.out"
        for _ in range(100):
            if log.exists() and "gpus=" in log.read_text():
                break
            time.sleep(0.1)
        # The job ran inside the root (trixie is 13.x, sid "forky/sid"), with one of the fake GPUs.
        text = log.read_text()
        assert "gpus=0" in text and not text.startswith("12."), text
        steps = _slurmstepds(cluster)
        assert steps, "the job's slurmstepd runs"
    finally:
        cluster.stop()
    # The chrooted slurmstepd shows its files through the root's path; stop() still finds it.
    assert not (steps & _slurmstepds(cluster)), "slurmstepd survived stop()"
    assert not Path(f"/tmp/slurmless-lcv-{version}").exists()


def _slurmstepds(cluster: LocalCluster) -> set[int]:
    """This cluster's slurmstepd processes: their files show through the root's path."""
    prefix = f"{cluster.runtime.rootfs}{cluster.base_dir}/"
    found = set()
    for pid in all_pids():
        info = read_stat(pid)
        if info is not None and info[0] == "slurmstepd" and info[1] != "Z" and has_fd_under(pid, prefix):
            found.add(pid)
    return found
