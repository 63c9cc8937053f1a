"""The rest backend against a real slurmrestd (the host's 22.05, JWT auth), and how it fails."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm.backends import BackendUnavailable, check_backend, make_backend
from slurm.errors import SlurmUnavailable
from slurm.localcluster import LocalCluster
from slurm.rest_backend import SlurmRest
from slurm.settings import SlurmRestSettings, SlurmSettings
from slurm.types import JobState
from tests.fixtures.slurm_cluster import require_slurm_binaries

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def rest_cluster() -> Iterator[LocalCluster]:
    require_slurm_binaries()
    cluster = LocalCluster(gpus=4, rest=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _script(tmp_path: Path, name: str) -> str:
    return "\n".join(
        [
            "#!/bin/bash",
            f"#SBATCH --job-name=slurmless-{name}",
            f"#SBATCH --comment=slurmless:{name}",
            "#SBATCH --nodes=1",
            "#SBATCH --cpus-per-task=1",
            "#SBATCH --mem=64M",
            "#SBATCH --time=5",
            "#SBATCH --signal=B:USR1@30",
            "#SBATCH --gres=gpu:1",
            f"#SBATCH --output={tmp_path}/%j.out",
            f"#SBATCH --chdir={tmp_path}",
            "#SBATCH --no-requeue",
            'echo "gpus=$CUDA_VISIBLE_DEVICES"; sleep 60',
            "",
        ]
    )


async def test_submit_list_cancel_round_trip(rest_cluster: LocalCluster, tmp_path: Path) -> None:
    rest = SlurmRest(rest_cluster.rest_url, token=rest_cluster.token(), job_name_prefix="slurmless-rt")
    try:
        assert await rest.api() == "v0.0.38"
        job_id = await rest.submit(_script(tmp_path, "rt-i1"))
        for _ in range(50):
            job = await rest.job(job_id)
            if job is not None and job.state is JobState.RUNNING:
                break
            await asyncio.sleep(0.2)
        assert job is not None and job.state is JobState.RUNNING, job
        assert job.instance_id == "rt-i1" and job.time_limit_min == 5 and job.node_list == "sl-node0"
        assert await rest.node_addresses("sl-node0") == ("sl-node0", "127.0.0.1", socket.gethostname().split(".")[0])
        (gpu,) = [p for p in await rest.partitions() if p.name == "gpu"]
        assert gpu.gpus_total == 4 and gpu.gpus_free == 3
        await rest.cancel(job_id)
        await rest.cancel(job_id)  # twice: not an error
        for _ in range(50):
            job = await rest.job(job_id)
            if job is not None and job.state is JobState.CANCELLED:
                break
            await asyncio.sleep(0.2)
        assert job is not None and job.state is JobState.CANCELLED
        assert (tmp_path / f"{job_id}.out").read_text().startswith("gpus=0")
    finally:
        await rest.aclose()


async def test_a_refused_token_is_slurm_unavailable_not_an_empty_cluster(rest_cluster: LocalCluster) -> None:
    rest = SlurmRest(rest_cluster.rest_url, token="not-a-jwt", api_version="v0.0.38", retry_wait_s=0.01)
    try:
        # 22.05 answers 500 "Failed while looking for jobs" here, later releases 401.
        with pytest.raises(SlurmUnavailable, match=r"HTTP (401|500)"):
            await rest.jobs()
        assert rest.calls["jobs"] == 3  # retried with backoff
    finally:
        await rest.aclose()


async def test_unreachable_or_unconfigured_backends_are_one_line_at_start(rest_cluster: LocalCluster) -> None:
    closed = SlurmSettings(backend="rest", rest=SlurmRestSettings(url="http://127.0.0.1:9", token="x"))
    backend = make_backend(closed, job_name_prefix="slurmless-")
    assert isinstance(backend, SlurmRest)
    backend.retry_wait_s = 0.01
    with pytest.raises(BackendUnavailable) as info:
        await check_backend(backend)
    assert "\n" not in str(info.value) and "Slurm unavailable" in str(info.value)
    with pytest.raises(BackendUnavailable, match=r"needs slurm\.rest\.token"):
        make_backend(SlurmSettings(backend="rest"), job_name_prefix="slurmless-")
    with pytest.raises(BackendUnavailable, match="pyslurm is not installed"):
        make_backend(SlurmSettings(backend="pyslurm"), job_name_prefix="slurmless-")
    with pytest.raises(BackendUnavailable, match="sbatch is not installed"):
        make_backend(SlurmSettings(backend="cli", bin_dir=Path("/nonexistent")), job_name_prefix="slurmless-")
    good = SlurmSettings(backend="rest", rest=SlurmRestSettings(url=rest_cluster.rest_url, token=rest_cluster.token()))
    await check_backend(make_backend(good, job_name_prefix="slurmless-"))
