"""Plain value types of the Slurm boundary, independent of Slurm's version and backend.

Times are timezone-aware UTC `datetime`s; a time limit of `None` means "no limit" (INFINITE).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["COMMENT_PREFIX", "JobState", "NodeInfo", "Partition", "SlurmJob", "StartEstimate"]

#: Every slurmless job carries `--comment=slurmless:<instance_id>`.
COMMENT_PREFIX = "slurmless:"


class JobState(enum.StrEnum):
    """A job's base state, normalised across Slurm versions (flags are kept apart)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    REQUEUED = "REQUEUED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_active(self) -> bool:
        """True while the job holds or waits for resources (it has not ended)."""
        return self in _ACTIVE

    @property
    def is_finished(self) -> bool:
        """True once the job has ended, whatever the outcome."""
        return not self.is_active and self is not JobState.UNKNOWN


_ACTIVE = frozenset(
    {
        JobState.PENDING,
        JobState.CONFIGURING,
        JobState.RUNNING,
        JobState.SUSPENDED,
        JobState.COMPLETING,
        JobState.REQUEUED,
    }
)


@dataclass(frozen=True, slots=True)
class SlurmJob:
    """One job as the controller reports it.

    For a pending job `start_time` is the scheduler's estimate when it has one (backfill sets it);
    for a running job it is the real start and `end_time` the real end given the limit the job got
    (backfill may have shrunk `time_limit_min` down to `time_min_min`).
    """

    job_id: int
    name: str
    state: JobState
    #: Extra state words Slurm reported alongside the base state (23.x+ lists, e.g. "REQUEUED").
    state_flags: tuple[str, ...] = ()
    #: Why a job is pending or ended ("Resources", "Priority", "NonZeroExitCode"); None when "None".
    reason: str | None = None
    comment: str = ""
    partition: str = ""
    qos: str = ""
    account: str = ""
    user_name: str = ""
    #: Compressed node list as Slurm prints it ("n[01-03]"); empty while pending.
    node_list: str = ""
    node_count: int | None = None
    batch_host: str = ""
    time_limit_min: int | None = None
    time_min_min: int | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    exit_code: int | None = None
    exit_signal: int | None = None

    @property
    def instance_id(self) -> str | None:
        """The slurmless instance id from the job's comment, or None for foreign jobs."""
        if self.comment.startswith(COMMENT_PREFIX):
            return self.comment[len(COMMENT_PREFIX) :] or None
        return None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One compute node with its CPU, memory and GPU capacity and use."""

    name: str
    #: Lower-case state words, e.g. ("mixed",) or ("idle", "drain").
    state: tuple[str, ...]
    partitions: tuple[str, ...]
    cpus_total: int = 0
    cpus_alloc: int = 0
    mem_total_mb: int = 0
    mem_alloc_mb: int = 0
    gpus_total: int = 0
    gpus_used: int = 0
    gres: str = ""
    gres_used: str = ""
    features: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        """False when the node cannot take new work (down, drained, failing, powered off...)."""
        bad = {
            "down",
            "drain",
            "draining",
            "drained",
            "fail",
            "failing",
            "maint",
            "not_responding",
            "powered_down",
            "powering_down",
            "reboot_issued",
            "reserved",
            "future",
            "unknown",
        }
        return not any(s in bad for s in self.state)

    @property
    def gpus_free(self) -> int:
        """GPUs a new job could get now (0 on unavailable nodes)."""
        return max(0, self.gpus_total - self.gpus_used) if self.available else 0


@dataclass(frozen=True, slots=True)
class Partition:
    """A partition with GPU totals summed over its nodes."""

    name: str
    nodes: tuple[str, ...] = field(default_factory=tuple)
    gpus_total: int = 0
    gpus_free: int = 0
    cpus_total: int = 0
    cpus_idle: int = 0


@dataclass(frozen=True, slots=True)
class StartEstimate:
    """What `sbatch --test-only` predicts for a script in a given placement."""

    start_time: datetime
    partition: str
    node_list: str
    processors: int
    qos: str | None = None
