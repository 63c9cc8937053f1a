"""The local Slurm cluster runs real jobs with fake GPUs, side by side, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import pytest

from slurm.localcluster import LocalCluster, LocalClusterError
from tests.fixtures.slurm_cluster import require_slurm_binaries

_TIMEOUT_S = 60.0
T = TypeVar("T")

# Waits until the file named by $RELEASE exists (at most 120 s), so the test decides when the job ends.
_HOLD_SCRIPT = """#!/bin/bash
echo "start $(date +%s.%N) CVD=$CUDA_VISIBLE_DEVICES JOB_GPUS=$SLURM_JOB_GPUS" \\
    "NODE=$SLURMD_NODENAME HOST=$(hostname)"
echo $$ > "$PID_FILE"
for _ in $(seq 1200); do
    [ -e "$RELEASE" ] && break
    sleep 0.1
done
echo "end $(date +%s.%N)"
"""


def _wait_until(probe: Callable[[], T | None], timeout_s: float = _TIMEOUT_S, what: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what or probe}")


def _run(cluster: LocalCluster, args: list[str], timeout_s: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        env={**os.environ, **cluster.env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _sbatch(cluster: LocalCluster, args: list[str], env: dict[str, str] | None = None) -> int:
    proc = subprocess.run(
        ["sbatch", "--parsable", *args],
        env={**os.environ, **cluster.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=15.0,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().split(";")[0])


def _job_state(cluster: LocalCluster, job_id: int) -> str:
    out = _run(cluster, ["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"]).stdout.strip()
    return out or "GONE"


def _wait_state(cluster: LocalCluster, job_id: int, states: set[str]) -> str:
    return _wait_until(
        lambda: s if (s := _job_state(cluster, job_id)) in states else None,
        what=f"job {job_id} in {states}",
    )


def _pid_alive(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2] not in "ZX"


def _ppid(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[1])


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A world-traversable temp dir: munged refuses sockets below pytest's private tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="slurmless-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _HoldJobs:
    """Submits hold jobs into a directory and releases them (and cancels leftovers) at the end."""

    def __init__(self, cluster: LocalCluster, work: Path) -> None:
        self.cluster = cluster
        self.work = work
        self.script = work / "hold.sh"
        self.script.write_text(_HOLD_SCRIPT)
        self.release = work / "release"
        self.job_ids: list[int] = []

    def submit(self, *args: str, name: str) -> int:
        job_id = _sbatch(
            self.cluster,
            [f"--output={self.work / name}.out", f"--job-name={name}", *args, str(self.script)],
            env={"RELEASE": str(self.release), "PID_FILE": str(self.work / f"{name}.pid")},
        )
        self.job_ids.append(job_id)
        return job_id

    def output(self, name: str) -> str:
        return (self.work / f"{name}.out").read_text()

    def finish(self) -> None:
        self.release.touch()
        for job_id in self.job_ids:
            _wait_state(self.cluster, job_id, {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "GONE"})


@pytest.fixture
def hold_jobs(slurm_cluster: LocalCluster, tmp_path: Path) -> Iterator[_HoldJobs]:
    jobs = _HoldJobs(slurm_cluster, tmp_path)
    try:
        yield jobs
    finally:
        jobs.release.touch()
        if jobs.job_ids:
            _run(slurm_cluster, ["scancel", *map(str, jobs.job_ids)])
        jobs.finish()


def test_gpu_job_runs_and_sees_its_gpu(slurm_cluster: LocalCluster, hold_jobs: _HoldJobs) -> None:
    job_id = hold_jobs.submit("--gres=gpu:1", "--time=5", name="gpu1")
    hold_jobs.finish()

    assert _job_state(slurm_cluster, job_id) == "COMPLETED"
    out = hold_jobs.output("gpu1")
    match = re.search(r"CVD=(\S*) JOB_GPUS=(\S*) NODE=(\S+) HOST=(\S+)", out)
    assert match, out
    cvd, job_gpus, node, host = match.groups()
    assert cvd == job_gpus
    assert int(cvd) in range(slurm_cluster.gpus)
    assert node == slurm_cluster.node_name
    assert host
    assert "end " in out


def test_two_jobs_run_at_once_on_different_gpus(slurm_cluster: LocalCluster, hold_jobs: _HoldJobs) -> None:
    first = hold_jobs.submit("--gres=gpu:1", "--time=5", name="a")
    second = hold_jobs.submit("--gres=gpu:1", "--time=5", name="b")

    def both_running() -> bool:
        out = _run(slurm_cluster, ["squeue", "-h", "-j", f"{first},{second}", "-o", "%i %T"]).stdout
        states = dict(line.split() for line in out.splitlines())
        return states == {str(first): "RUNNING", str(second): "RUNNING"}

    _wait_until(both_running, what="both jobs RUNNING at once")
    hold_jobs.finish()

    gpus = {re.search(r"CVD=(\S+)", hold_jobs.output(name))[1] for name in ("a", "b")}  # type: ignore[index]
    assert len(gpus) == 2


def test_test_only_estimates_start_after_the_blocking_job(slurm_cluster: LocalCluster, hold_jobs: _HoldJobs) -> None:
    blocker = hold_jobs.submit(f"--gres=gpu:{slurm_cluster.gpus}", "--time=30", name="blocker")
    _wait_state(slurm_cluster, blocker, {"RUNNING"})
    squeue = json.loads(_run(slurm_cluster, ["squeue", "--json"]).stdout)
    blocker_end = next(j["end_time"] for j in squeue["jobs"] if j["job_id"] == blocker)

    proc = _run(slurm_cluster, ["sbatch", "--test-only", "--gres=gpu:1", "--time=10", "--wrap=true"])

    assert proc.returncode == 0, proc.stderr
    match = re.search(r"to start at (\S+) using (\d+) processors on nodes (\S+) in partition (\S+)", proc.stderr)
    assert match, proc.stderr
    # Slurm prints local time without a zone; a naive datetime's timestamp() reads it as local time too.
    start = datetime.fromisoformat(match[1]).timestamp()
    assert abs(start - blocker_end) <= 120
    assert match[3] == slurm_cluster.node_name
    assert match[4] == "gpu"


def test_squeue_and_sinfo_json(slurm_cluster: LocalCluster, hold_jobs: _HoldJobs) -> None:
    job_id = hold_jobs.submit("--gres=gpu:2", "--time=5", "--partition=preempt", name="json")
    _wait_state(slurm_cluster, job_id, {"RUNNING"})

    jobs = json.loads(_run(slurm_cluster, ["squeue", "--json"]).stdout)["jobs"]
    nodes = json.loads(_run(slurm_cluster, ["sinfo", "--json"]).stdout)["nodes"]

    job = next(j for j in jobs if j["job_id"] == job_id)
    assert job["job_state"] == "RUNNING"
    assert job["partition"] == "preempt"
    assert job["nodes"] == slurm_cluster.node_name
    assert job["tres_per_node"] == "gres:gpu:2"
    assert job["time_limit"] == 5
    node = next(n for n in nodes if n["name"] == slurm_cluster.node_name)
    assert node["gres"] == f"gpu:{slurm_cluster.gpus}"
    assert node["gres_used"].startswith("gpu:")
    assert int(node["gres_used"].split(":")[1].split("(")[0]) >= 2
    assert set(node["partitions"]) == set(slurm_cluster.partitions)


def test_stop_kills_daemons_steps_and_jobs_and_removes_dir(tmp_path: Path) -> None:
    require_slurm_binaries()
    cluster = LocalCluster(gpus=1)
    try:
        cluster.start()
        jobs = _HoldJobs(cluster, tmp_path)
        jobs.submit("--gres=gpu:1", "--time=5", name="victim")
        job_pid = int(_wait_until(lambda: _read_if_exists(tmp_path / "victim.pid"), what="job pid file"))
        step_pid = _ppid(job_pid)
        daemon_pids = cluster.pids

        # A lost node daemon leaves the job running; a restarted one takes the node back.
        cluster.stop_slurmd()
        assert not _pid_alive(daemon_pids["slurmd"])
        assert _pid_alive(job_pid)
        cluster.start_slurmd()
        assert cluster.status().running
        daemon_pids = cluster.pids
    finally:
        base_dir = cluster.base_dir
        cluster.stop()

    assert not base_dir.exists()
    for pid in [*daemon_pids.values(), step_pid, job_pid]:
        assert not _pid_alive(pid), pid


def test_persistent_cluster_is_reloaded_and_stopped_from_another_process(open_dir: Path) -> None:
    require_slurm_binaries()
    base_dir = open_dir / "cluster"
    code = "import sys; from pathlib import Path; from slurm.localcluster import LocalCluster; "
    code += "LocalCluster(Path(sys.argv[1]), gpus=2).start()"
    subprocess.run([sys.executable, "-c", code, str(base_dir)], check=True, timeout=120)
    first = LocalCluster.load(base_dir)
    assert first.status().running
    assert "gpu:2" in first.run(["scontrol", "show", "node", first.node_name])

    # Starting over a stale directory first stops whatever the previous run left there.
    second = LocalCluster(base_dir, gpus=1)
    try:
        second.start()
        assert not any(_pid_alive(pid) for pid in first.pids.values())
        reloaded = LocalCluster.load(base_dir)
        assert reloaded.pids == second.pids
    finally:
        LocalCluster.load(base_dir).stop()

    assert not base_dir.exists()
    assert not any(_pid_alive(pid) for pid in second.pids.values())


def test_refuses_a_base_dir_munged_cannot_use(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    with pytest.raises(LocalClusterError, match="world-traversable"):
        LocalCluster(tmp_path / "cluster").start()
    assert not (tmp_path / "cluster").exists()


def test_refuses_a_foreign_directory(open_dir: Path) -> None:
    (open_dir / "precious.txt").write_text("keep me")
    with pytest.raises(LocalClusterError, match="not a local cluster directory"):
        LocalCluster(open_dir).start()
    assert (open_dir / "precious.txt").read_text() == "keep me"


def _read_if_exists(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
