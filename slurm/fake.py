"""An in-memory `SlurmBackend` with a clock the caller moves: for fast tests of what reacts to Slurm.

`FakeSlurm` keeps jobs in a dict and changes them only when told to, the way httpx's
`MockTransport` answers only what its handler says. Submissions read the script's `#SBATCH`
lines (name, comment, time limit, time-min, partition, QOS) like `sbatch` does; then:

- `hold(job_id, reason, est_start_s)`: a pending job's reason and the scheduler's start estimate;
- `start(job_id, node, limit_min)`: it runs from now; its end is now plus its limit (backfill may
  give it anything from `--time-min` to `--time`: pass `limit_min`);
- `advance(seconds)` moves the clock; a running job whose end has passed ends in `TIMEOUT`;
- `fail_node(node)`: every job running there ends in `NODE_FAIL`;
- `preempt(job_id)`: it ends in `PREEMPTED` (or is queued again with `requeue=True`);
- `cancel(job_id)` (the interface's scancel): `CANCELLED`; cancelling an ended job is not an error;
- `fail_submissions(n, error)`: the next n `submit` calls raise `error` (default: Slurm unreachable);
- `unavailable = error`: every query and submission raises it until set back to None;
- `estimate_refusals[(partition, qos)] = message`: `estimate_start` fails there as `sbatch --test-only` does;
- `estimates[(partition, qos)] = start_s`: what `estimate_start` (`sbatch --test-only`) answers;
- `addresses[node] = (...)`: what `node_addresses` adds to the node's name.

Ended jobs stay listed for `min_job_age_s`, as squeue lists them for `MinJobAge`. Times are the
clock's seconds since the epoch; `calls` counts each method like `SlurmCLI.calls` counts commands.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from slurm.errors import JobNotFound, SlurmCommandError, SlurmError, SlurmUnavailable
from slurm.types import JobState, NodeInfo, Partition, SlurmJob, StartEstimate

__all__ = ["FakeSlurm"]

_SBATCH = re.compile(r"^#SBATCH\s+--([\w-]+)(?:=(.*))?$", re.MULTILINE)


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _minutes(value: str) -> int:
    """A `--time` value in minutes: "M", "H:M:S", "D-H[:M[:S]]" (what the job scripts use)."""
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1 and not days:
        minutes = parts[0]
    else:
        while len(parts) < 3:
            parts.append(0)
        minutes = parts[0] * 60 + parts[1] + (1 if parts[2] else 0)
    return minutes + int(days or 0) * 1440


@dataclass
class _Job:
    job: SlurmJob
    ended_s: float | None = None


class FakeSlurm:
    """See the module docstring; `now_s` is the clock."""

    def __init__(
        self,
        *,
        now_s: float = 1_800_000_000.0,
        job_name_prefix: str = "slurmless-",
        nodes: tuple[str, ...] = ("n01",),
        partition: str = "gpu",
        gpus_per_node: int = 4,
        cpus_per_node: int = 32,
        mem_per_node_mb: int = 256_000,
        min_job_age_s: float = 300.0,
    ) -> None:
        self.now_s = now_s
        self.job_name_prefix = job_name_prefix
        self.node_names = nodes
        self.partition = partition
        self.gpus_per_node = gpus_per_node
        self.cpus_per_node = cpus_per_node
        self.mem_per_node_mb = mem_per_node_mb
        self.unavailable: SlurmError | None = None
        """When set, every query and submission raises it (a controller that is down or times out)."""
        self.estimate_refusals: dict[tuple[str | None, str | None], str] = {}
        """Placements whose `sbatch --test-only` fails, with sbatch's message."""
        self.min_job_age_s = min_job_age_s
        self.estimates: dict[tuple[str | None, str | None], float] = {}
        self.addresses: dict[str, tuple[str, ...]] = {}
        """Other names and addresses of a node (`NodeAddr`, `NodeHostname`), for `node_addresses`."""
        self.scripts: dict[int, str] = {}
        self.calls: Counter[str] = Counter()
        self._jobs: dict[int, _Job] = {}
        self._next_id = 1000
        self._refusals: list[SlurmError] = []

    # --- the SlurmBackend interface -------------------------------------------------------------

    async def submit(self, script: str) -> int:
        self.calls["submit"] += 1
        self._reachable()
        if self._refusals:
            raise self._refusals.pop(0)
        opts = {m.group(1): (m.group(2) or "") for m in _SBATCH.finditer(script)}
        self._next_id += 1
        job_id = self._next_id
        self.scripts[job_id] = script
        self._jobs[job_id] = _Job(
            SlurmJob(
                job_id=job_id,
                name=opts.get("job-name", "sbatch"),
                state=JobState.PENDING,
                reason="Priority",
                comment=opts.get("comment", ""),
                partition=opts.get("partition", self.partition),
                qos=opts.get("qos", "normal"),
                time_limit_min=_minutes(opts["time"]) if "time" in opts else None,
                time_min_min=_minutes(opts["time-min"]) if "time-min" in opts else None,
                submit_time=_at(self.now_s),
            )
        )
        return job_id

    async def jobs(self) -> list[SlurmJob]:
        self.calls["jobs"] += 1
        self._reachable()
        self._settle()
        return [j.job for j in self._jobs.values() if j.job.name.startswith(self.job_name_prefix)]

    async def job(self, job_id: int) -> SlurmJob | None:
        self.calls["job"] += 1
        self._settle()
        held = self._jobs.get(job_id)
        return held.job if held is not None else None

    async def node_addresses(self, node: str) -> tuple[str, ...]:
        self.calls["node_addresses"] += 1
        return (node, *self.addresses.get(node, ()))

    async def cancel(self, job_id: int) -> None:
        self.calls["cancel"] += 1
        held = self._jobs.get(job_id)
        if held is not None and held.job.state.is_active:
            self._end(job_id, JobState.CANCELLED)

    async def signal(self, job_id: int, signal: str, *, batch_only: bool = True) -> None:
        self.calls["signal"] += 1
        held = self._jobs.get(job_id)
        if held is None or not held.job.state.is_active:
            raise JobNotFound("scancel", 1, f"Kill job error on job id {job_id}: Invalid job id specified")

    async def estimate_start(
        self, script: str, *, partition: str | None = None, qos: str | None = None
    ) -> StartEstimate:
        self.calls["estimate_start"] += 1
        self._reachable()
        refusal = self.estimate_refusals.get((partition, qos))
        if refusal is not None:
            raise SlurmCommandError("sbatch", 1, refusal)
        start_s = self.estimates.get((partition, qos), self.now_s)
        return StartEstimate(
            start_time=_at(start_s),
            partition=partition or self.partition,
            node_list=self.node_names[0],
            processors=1,
            qos=qos,
        )

    async def nodes(self) -> list[NodeInfo]:
        self.calls["nodes"] += 1
        self._reachable()
        return [
            NodeInfo(
                name=name,
                state=("mixed",),
                partitions=(self.partition,),
                cpus_total=self.cpus_per_node,
                mem_total_mb=self.mem_per_node_mb,
                gpus_total=self.gpus_per_node,
                gpus_used=0,
                gres=f"gpu:{self.gpus_per_node}",
            )
            for name in self.node_names
        ]

    async def partitions(self) -> list[Partition]:
        self.calls["partitions"] += 1
        gpus = self.gpus_per_node * len(self.node_names)
        return [Partition(name=self.partition, nodes=self.node_names, gpus_total=gpus, gpus_free=gpus)]

    # --- what the test makes Slurm do -----------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the clock on; running jobs past their end time out."""
        self.now_s += seconds
        self._settle()

    def hold(self, job_id: int, reason: str, *, est_start_s: float | None = None) -> None:
        """A pending job waits for `reason` ("Resources", "Priority", "QOSMaxGRESPerUser"...)."""
        job = self.peek(job_id)
        self._set(job_id, reason=reason, start_time=_at(est_start_s) if est_start_s is not None else None)
        assert job.state is JobState.PENDING, f"job {job_id} is {job.state}, not pending"

    def start(
        self, job_id: int, *, node: str | None = None, limit_min: int | None = None, at_s: float | None = None
    ) -> None:
        """The job runs on `node` from `at_s` (moving the clock there; default now) for `limit_min` (default
        its `--time`)."""
        if at_s is not None:
            self.advance(at_s - self.now_s)
        job = self.peek(job_id)
        limit = limit_min if limit_min is not None else job.time_limit_min
        host = node or self.node_names[0]
        self._set(
            job_id,
            state=JobState.RUNNING,
            reason=None,
            start_time=_at(self.now_s),
            end_time=_at(self.now_s + 60 * limit) if limit is not None else None,
            time_limit_min=limit,
            node_list=host,
            batch_host=host,
            node_count=1,
        )

    def fail_node(self, node: str) -> list[int]:
        """Every job running on `node` ends in NODE_FAIL; returns their ids."""
        hit = [i for i, j in self._jobs.items() if j.job.state is JobState.RUNNING and j.job.batch_host == node]
        for job_id in hit:
            self._end(job_id, JobState.NODE_FAIL)
        return hit

    def preempt(self, job_id: int, *, requeue: bool = False) -> None:
        """A higher-priority job takes the resources: PREEMPTED, or back to pending (`requeue`)."""
        if requeue:
            self._set(job_id, state=JobState.PENDING, reason="BeginTime", start_time=None, end_time=None)
        else:
            self._end(job_id, JobState.PREEMPTED)

    def finish(self, job_id: int, state: JobState, *, exit_code: int | None = None, reason: str | None = None) -> None:
        """The job ends in `state` (FAILED with an exit code, OUT_OF_MEMORY, COMPLETED...)."""
        self._end(job_id, state, exit_code=exit_code, reason=reason)

    def fail_submissions(self, count: int = 1, error: SlurmError | None = None) -> None:
        """The next `count` submissions raise `error` (default: the controller is unreachable)."""
        for _ in range(count):
            self._refusals.append(error or SlurmUnavailable("sbatch", "Socket timed out on send/recv operation"))

    def peek(self, job_id: int) -> SlurmJob:
        """The job as the next `jobs()` lists it, without counting a call (KeyError once it was forgotten)."""
        return self._jobs[job_id].job

    def by_instance(self, instance_id: str) -> SlurmJob:
        """The job whose comment carries `instance_id` (the latest one)."""
        found = [j.job for j in self._jobs.values() if j.job.instance_id == instance_id]
        if not found:
            raise KeyError(instance_id)
        return max(found, key=lambda j: j.job_id)

    def active(self) -> list[SlurmJob]:
        """Jobs pending or running."""
        return [j.job for j in self._jobs.values() if j.job.state.is_active]

    # --- internals ------------------------------------------------------------------------------

    def _reachable(self) -> None:
        if self.unavailable is not None:
            raise self.unavailable

    def _set(self, job_id: int, **fields: object) -> None:
        held = self._jobs[job_id]
        held.job = replace(held.job, **fields)  # type: ignore[arg-type]

    def _end(self, job_id: int, state: JobState, *, exit_code: int | None = None, reason: str | None = None) -> None:
        held = self._jobs[job_id]
        end = self.now_s
        held.job = replace(held.job, state=state, end_time=_at(end), exit_code=exit_code, reason=reason)
        held.ended_s = end

    def _settle(self) -> None:
        for job_id, held in list(self._jobs.items()):
            job = held.job
            if job.state is JobState.RUNNING and job.end_time is not None and job.end_time.timestamp() <= self.now_s:
                self._end(job_id, JobState.TIMEOUT)
            elif held.ended_s is not None and self.now_s - held.ended_s > self.min_job_age_s:
                del self._jobs[job_id]
