"""The parsers against real output of every Slurm version the local cluster runs (22.05, 24.11, 26.05).

Fixtures in tests/data/slurm/<version>/ were recorded by `python -m tests.matrix.record_fixtures`:
one job failed (exit 3), one cancelled while held, one running on 1 of 4 GPUs, one pending on
resources in the `preempt` partition, all named `slurmless-<what>-<id>` with comment `slurmless:<what>-<id>`.
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest

from slurm.errors import SlurmParseError
from slurm.parse import parse_sinfo, parse_squeue, parse_squeue_lines, parse_test_only, partitions_from_nodes
from slurm.types import JobState, SlurmJob

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
VERSIONS = ("22.05", "24.11", "26.05")
REST_APIS = {"22.05": ("v0.0.38",), "24.11": ("v0.0.41", "v0.0.42"), "26.05": ("v0.0.42", "v0.0.45")}


def _read(version: str, name: str) -> str:
    return (DATA / version / name).read_text()


def _by_name(jobs: list[SlurmJob]) -> dict[str, SlurmJob]:
    return {j.name: j for j in jobs}


def _check_all_four(jobs: dict[str, SlurmJob]) -> None:
    failed = jobs["slurmless-failed-f1"]
    assert failed.state is JobState.FAILED and failed.exit_code == 3 and failed.reason == "NonZeroExitCode"
    assert jobs["slurmless-cancelled-c1"].state is JobState.CANCELLED
    _check_active(jobs)


def _check_active(jobs: dict[str, SlurmJob]) -> None:
    running = jobs["slurmless-running-r1"]
    assert running.state is JobState.RUNNING and running.reason is None
    assert running.instance_id == "running-r1"
    assert running.node_list == "sl-node0" and running.partition == "gpu"
    assert running.start_time is not None and running.end_time is not None
    assert running.time_limit_min in (10, 30)  # backfill may start it at its --time-min
    pending = jobs["slurmless-pending-p1"]
    assert pending.state is JobState.PENDING and pending.reason == "Resources"
    assert pending.partition == "preempt" and pending.node_list == ""
    assert pending.time_limit_min == 30


@pytest.mark.parametrize("version", VERSIONS)
def test_squeue_format_lines(version: str) -> None:
    jobs = _by_name(parse_squeue_lines(_read(version, "squeue.txt")))
    assert len(jobs) == 4
    _check_all_four(jobs)


@pytest.mark.parametrize("version", VERSIONS)
def test_squeue_json(version: str) -> None:
    jobs = _by_name(parse_squeue(_read(version, "squeue.json")))
    # 22.05's --json lists ended jobs without --states=all (it ignores every filter); later ones do not.
    assert len(jobs) == (4 if version == "22.05" else 2)
    _check_active(jobs)


@pytest.mark.parametrize(("version", "api"), [(v, a) for v, apis in REST_APIS.items() for a in apis])
def test_slurmrestd_jobs_and_nodes(version: str, api: str) -> None:
    jobs = _by_name(parse_squeue(_read(version, f"rest_{api}_jobs.json")))
    assert len(jobs) == 4
    _check_all_four(jobs)
    (node,) = parse_sinfo(_read(version, f"rest_{api}_nodes.json"))
    assert (node.name, node.gpus_total, node.gpus_used, node.cpus_total) == ("sl-node0", 4, 1, 8)
    assert node.available and node.gpus_free == 3


@pytest.mark.parametrize("version", VERSIONS)
def test_sinfo_json(version: str) -> None:
    (node,) = parse_sinfo(_read(version, "sinfo.json"))
    assert node.name == "sl-node0" and node.partitions == ("gpu", "preempt")
    assert (node.gpus_total, node.gpus_used, node.cpus_total, node.mem_total_mb) == (4, 1, 8, 8000)
    assert "mixed" in node.state and node.available
    parts = {p.name: p for p in partitions_from_nodes([node])}
    assert parts["gpu"].gpus_free == 3 and parts["preempt"].gpus_total == 4


@pytest.mark.parametrize("version", VERSIONS)
def test_sbatch_test_only(version: str) -> None:
    estimate = parse_test_only(_read(version, "sbatch_test_only.txt"), tz=UTC)
    assert (estimate.partition, estimate.node_list, estimate.processors) == ("gpu", "sl-node0", 1)
    assert estimate.start_time.year >= 2026


@pytest.mark.parametrize("version", VERSIONS)
def test_sbatch_test_only_rejection(version: str) -> None:
    with pytest.raises(SlurmParseError, match="Requested node configuration is not available"):
        parse_test_only(_read(version, "sbatch_test_only_rejected.txt"))
