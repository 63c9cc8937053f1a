"""The pyslurm backend's pure parts, fed plain records shaped like pyslurm 24.11's objects, and a
stand-in module whose calls fail the ways libslurm does. The real pyslurm runs in tests/matrix
(the 24.11-pyslurm pair, inside the Slurm 24.11 root)."""

from __future__ import annotations

import os
import pwd
from types import SimpleNamespace
from typing import Any

import pytest

from slurm.errors import JobNotFound, ScriptValidationError, SlurmCommandError, SlurmUnavailable
from slurm.pyslurm_backend import SlurmPyslurm, job_from_pyslurm, node_from_pyslurm, submit_attributes
from slurm.types import JobState
from tests.unit.test_slurm_rest import SCRIPT


def _job(**over: Any) -> SimpleNamespace:
    fields: dict[str, Any] = {
        "id": 27,
        "name": "slurmless-m-i1",
        "state": "RUNNING",
        "state_reason": "None",
        "comment": "slurmless:i1",
        "partition": "gpu",
        "qos": None,
        "account": None,
        "user_name": pwd.getpwuid(os.getuid()).pw_name,
        "allocated_nodes": "sl-node0",
        "num_nodes": 1,
        "batch_host": "sl-node0",
        "time_limit": 30,
        "time_limit_min": 5,
        "submit_time": 1796289327,
        "start_time": 1796289328,
        "end_time": 1796291128,
        "exit_code": 0,
        "exit_code_signal": 0,
        "gres_per_node": {"gres/gpu": 2},
    }
    fields.update(over)
    return SimpleNamespace(**fields)


def test_job_mapping() -> None:
    job = job_from_pyslurm(_job())
    assert job.state is JobState.RUNNING and job.reason is None and job.instance_id == "i1"
    assert (job.time_limit_min, job.time_min_min, job.node_list) == (30, 5, "sl-node0")
    assert job.start_time is not None and job.start_time.timestamp() == 1796289328
    failed = job_from_pyslurm(_job(state="FAILED", state_reason="NonZeroExitCode", exit_code=3, start_time=0))
    assert failed.state is JobState.FAILED and failed.exit_code == 3 and failed.start_time is None


def test_node_mapping_counts_gpus_from_running_jobs() -> None:
    node = SimpleNamespace(
        name="sl-node0",
        state="MIXED+PLANNED",
        partitions=["gpu", "preempt"],
        total_cpus=8,
        allocated_cpus=1,
        real_memory=8000,
        allocated_memory=1000,
        configured_gres={"gpu": 4},
        allocated_gres={},
        active_features=[],
    )
    info = node_from_pyslurm(node, gpus_used=2)
    assert info.state == ("mixed", "planned") and info.gpus_total == 4 and info.gpus_free == 2
    assert info.gres == "gpu:4" and info.gres_used == "gpu:2"


def test_submit_attributes() -> None:
    attrs = submit_attributes(SCRIPT)
    assert attrs["name"] == "slurmless-m-i1" and attrs["time_limit"] == 60 and attrs["time_limit_min"] == 10
    assert attrs["signal"] == "B:SIGUSR1@120" and attrs["is_requeueable"] is False
    assert attrs["gres_per_node"] == "gpu:2" and attrs["memory_per_node"] == "16G"
    assert attrs["partitions"] == "gpu" and "partition" not in attrs
    assert attrs["environment"] == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    with pytest.raises(ScriptValidationError):
        submit_attributes("#!/bin/bash\n#SBATCH --exclusive\ntrue\n")


class _RPCError(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


def _module(jobs: Any = None, *, kill_error: str | None = None) -> SimpleNamespace:
    class Job:
        def __init__(self, job_id: int) -> None:
            self.job_id = job_id

        def cancel(self) -> None:
            if kill_error:
                raise _RPCError(kill_error)

        def send_signal(self, signal: str, steps: str = "children") -> None:
            self.cancel()

    class Jobs:
        @staticmethod
        def load() -> Any:
            if isinstance(jobs, Exception):
                raise jobs
            return jobs

    return SimpleNamespace(RPCError=_RPCError, Job=Job, Jobs=Jobs)


async def test_rpc_errors_map_to_the_tree() -> None:
    gone = SlurmPyslurm(module=_module(kill_error="Invalid job id specified"), retry_wait_s=0.01)
    await gone.cancel(5)  # already gone: not an error
    with pytest.raises(JobNotFound):
        await gone.signal(5, "USR1")
    down = SlurmPyslurm(
        module=_module(_RPCError("Unable to contact slurm controller (connect failure)")), retry_wait_s=0.01
    )
    with pytest.raises(SlurmUnavailable):
        await down.jobs()
    assert down.calls["jobs"] == 3  # retried with backoff, never an empty list
    odd = SlurmPyslurm(module=_module(RuntimeError("segfault-ish")), retry_wait_s=0.01)
    with pytest.raises(SlurmUnavailable, match="RuntimeError: segfault-ish"):
        await odd.jobs()
    refused = SlurmPyslurm(module=_module(kill_error="Access/permission denied"), retry_wait_s=0.01)
    with pytest.raises(SlurmCommandError) as info:
        await refused.signal(5, "USR1")
    assert not isinstance(info.value, SlurmUnavailable)


async def test_jobs_keep_only_ours() -> None:
    backend = SlurmPyslurm(
        module=_module({1: _job(id=1), 2: _job(id=2, name="research-x"), 3: _job(id=3, user_name="someone-else")})
    )
    assert [j.job_id for j in await backend.jobs()] == [1]
