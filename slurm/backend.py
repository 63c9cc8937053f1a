"""The interface every Slurm backend implements (CLI today; slurmrestd or pyslurm later)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from slurm.types import NodeInfo, Partition, SlurmJob, StartEstimate

__all__ = ["SlurmBackend"]


@runtime_checkable
class SlurmBackend(Protocol):
    """Submit, observe and stop slurmless's jobs.

    Every method has its own bounded timeout and raises only `slurm.errors` exceptions.
    """

    job_name_prefix: str

    async def submit(self, script: str) -> int:
        """Submit a rendered batch script; return the job id."""
        ...

    async def jobs(self) -> list[SlurmJob]:
        """All slurmless jobs (name starts with the prefix) the controller knows, in one query."""
        ...

    async def job(self, job_id: int) -> SlurmJob | None:
        """One slurmless job by id (with its batch host once running), or None if Slurm does not list it."""
        ...

    async def node_addresses(self, node: str) -> tuple[str, ...]:
        """The names and addresses Slurm knows a node by: its name, `NodeAddr` and `NodeHostname`."""
        ...

    async def cancel(self, job_id: int) -> None:
        """Cancel a job; cancelling a job that has already ended is not an error."""
        ...

    async def signal(self, job_id: int, signal: str, *, batch_only: bool = True) -> None:
        """Send a signal (e.g. "USR1") to the job's batch shell, or to all its steps.

        Raises `JobNotFound` when the job no longer exists.
        """
        ...

    async def estimate_start(
        self, script: str, *, partition: str | None = None, qos: str | None = None
    ) -> StartEstimate:
        """When the script would start in this placement (`sbatch --test-only`); submits nothing."""
        ...

    async def nodes(self) -> list[NodeInfo]:
        """Every node with its GPU capacity and use."""
        ...

    async def partitions(self) -> list[Partition]:
        """Every partition with total and free GPUs."""
        ...
