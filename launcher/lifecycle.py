"""An instance's life as pure decisions: what to do next, given what Slurm and the engine said.

The states (docs/architecture.md, "An instance's life")::

    requested -> pending -> starting -> loading -> ready -> draining -> gone
             \\-------------------------------------------------------> failed (with a reason)

`next_step(record, job, now_s, settings)` reads one instance record and its job as `squeue`
reported it (None when Slurm does not know the job) and returns a `Step`: the actions that bring
the record in line with the facts, in order. `loading_step`, `drain_step` and `deregister_step`
decide from the other facts the launcher observes (a readiness probe, how busy a draining engine
is, a job's own callback). Nothing here reads a clock, Redis or Slurm; the controller applies a
step in one place (`Launcher._apply`).
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.history import ModelHistory
from launcher.settings import LauncherSettings
from slurm.limits import pending_limit
from slurm.types import JobState, SlurmJob
from warmpool.instances import LIVE_STATES, InstanceRecord, InstanceState
from warmpool.learnt import QUEUE_WAITS

S = InstanceState

CANCEL_SENT = "cancel_sent"
"""Timestamp key: when the launcher itself asked Slurm to end the job."""
JOB_DRAIN = "job_drain"
"""Timestamp key: when the job said it stops (walltime warning, SIGTERM); it ends by itself."""
JOB_START = "job_start"
"""Timestamp key: the job's start as Slurm reports it (whole seconds, rounded down)."""
BATCH_END = "batch job at its walltime"
"""Why a batch job was drained and cancelled `batch_signal_lead_s` before its end."""
SUBMIT_GRACE_S = 120.0
"""How long a `requested` record without a job may wait for its job to show up in squeue."""

# How a job that ended tells us why, when the launcher did not end it itself.
END_REASONS: dict[JobState, str] = {
    JobState.CANCELLED: "job cancelled outside slurmless",
    JobState.NODE_FAIL: "node failure",
    JobState.FAILED: "job failed",
    JobState.BOOT_FAIL: "node boot failure",
    JobState.OUT_OF_MEMORY: "out of memory",
    JobState.DEADLINE: "deadline reached",
    JobState.COMPLETED: "job ended",
    JobState.TIMEOUT: "walltime reached",
    JobState.PREEMPTED: "preempted",
}
# Endings that are the normal fate of a serving job: they drain, they do not count as failures.
EXPECTED_ENDS = frozenset({JobState.TIMEOUT, JobState.PREEMPTED})
_QUEUED = frozenset({JobState.PENDING, JobState.REQUEUED, JobState.CONFIGURING})


@dataclass(frozen=True, slots=True)
class Adopt:
    """A `requested` record's job showed up in squeue: it is `pending` with that job id."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Move:
    """Enter `state` at `at_s`, setting `fields` on the record."""

    state: InstanceState
    at_s: float
    fields: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class Note:
    """Record facts learnt from Slurm without a change of state."""

    fields: tuple[tuple[str, object], ...]


@dataclass(frozen=True, slots=True)
class Observe:
    """Add a duration to the model's history (`field` of `ModelHistory`, `phase` of the metric)."""

    field: str
    phase: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Unroute:
    """Stop routing to it (its job is completing); its state follows once Slurm says how it ended."""


@dataclass(frozen=True, slots=True)
class MarkReady:
    """The engine serves the model: route to it."""


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop routing; cancel the job now (`cancel`) or once its requests are done.

    `by_job`: the job itself said it stops; it is cancelled only if it outlives its warning.
    """

    reason: str
    cancel: bool
    by_job: bool = False


@dataclass(frozen=True, slots=True)
class Ended:
    """The job ended the way serving jobs normally do (walltime, preemption): drained, then gone."""

    reason: str


@dataclass(frozen=True, slots=True)
class Gone:
    """The job has ended after a drain; `reason` replaces the drain's when Slurm told more (preempted)."""

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """A draining instance's time is up: scancel its job."""


@dataclass(frozen=True, slots=True)
class Broken:
    """The model cannot start as registered (its job refused its paths): no retry until an admin changes it."""

    reason: str


@dataclass(frozen=True, slots=True)
class Fail:
    """It will not serve: keep why, end its job unless it already ended (`cancel_job`), back off."""

    reason: str
    cancel_job: bool = True


Action = Adopt | Move | Note | Observe | Unroute | MarkReady | Drain | Ended | Gone | Cancel | Fail | Broken


@dataclass(frozen=True, slots=True)
class Step:
    """What to do with one instance now, in order (empty: nothing)."""

    actions: tuple[Action, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.actions)


HOLD = Step()


def next_step(record: InstanceRecord, job: SlurmJob | None, now_s: float, settings: LauncherSettings) -> Step:
    """What brings a live instance in line with its job as squeue reports it (None: Slurm does not know it)."""
    if record.state not in LIVE_STATES:
        return HOLD
    actions: list[Action] = []
    state = record.state
    queued_since_s = record.timestamps.get(S.PENDING.value, record.created_s)
    if state is S.REQUESTED:
        if job is None:
            if now_s - record.created_s > SUBMIT_GRACE_S:
                return Step((Fail("submission lost: no job in squeue"),))
            return HOLD
        actions.append(Adopt(str(job.job_id)))
        state = S.PENDING
        queued_since_s = record.timestamps.get(S.PENDING.value, now_s)
    if job is None:
        if record.job_id is None:
            return HOLD
        return Step((Gone(),) if state is S.DRAINING else (Fail("job vanished from Slurm"),))
    if job.state is JobState.COMPLETING:
        # Its processes are ending; the final state (why it ended) shows on a later tick.
        if state is S.READY:
            actions.append(Unroute())
    elif job.state.is_finished:
        actions.append(_ended(record, state, job))
    elif job.state in _QUEUED:
        if state is S.PENDING:
            est_s = job.start_time.timestamp() if job.start_time else None
            if (record.slurm_reason, record.est_start_s) != (job.reason, est_s):
                actions.append(Note((("slurm_reason", job.reason), ("est_start_s", est_s))))
        elif state is not S.DRAINING:
            # It ran and is queued again: a requeue, which drains like preemption.
            actions.append(Drain("requeued by Slurm", cancel=True))
    elif job.state is JobState.RUNNING:
        actions.extend(_running(record, state, job, queued_since_s, now_s, settings))
    return Step(tuple(actions))


def _running(
    record: InstanceRecord,
    state: InstanceState,
    job: SlurmJob,
    queued_since_s: float,
    now_s: float,
    settings: LauncherSettings,
) -> list[Action]:
    actions: list[Action] = []
    end_s = job.end_time.timestamp() if job.end_time else None
    limit_s = 60.0 * job.time_limit_min if job.time_limit_min is not None else None
    node = job.batch_host or None
    if (record.end_time_s, record.time_limit_s, record.node) != (end_s, limit_s, node):
        actions.append(Note((("end_time_s", end_s), ("time_limit_s", limit_s), ("node", node))))
    start_s = record.timestamps.get(JOB_START)
    if start_s is None and job.start_time is not None:
        # Learnt once, whatever the state: a job that registered before any tick saw it run
        # (the usual case for a fast engine) gets its queue wait observed too.
        start_s = job.start_time.timestamp()
        actions.append(Note((("timestamps", {**record.timestamps, JOB_START: start_s}),)))
        actions.append(Observe(QUEUE_WAITS, "queue_wait", start_s - queued_since_s))
    if state is S.PENDING:
        actions.append(
            Move(S.STARTING, min(start_s if start_s is not None else now_s, now_s), (("slurm_reason", None),))
        )
    elif state is S.STARTING and now_s - record.state_since_s > settings.register_timeout_s:
        actions.append(Fail(f"registration never came within {settings.register_timeout_s:.0f}s"))
    elif state is S.READY and record.batch and end_s is not None and now_s >= end_s - settings.batch_signal_lead_s:
        # Slurm does not warn batch jobs (its warning may come half a minute early): ended on time here, the
        # lines they run are retried.
        actions.append(Drain(BATCH_END, cancel=True))
    return actions


def _ended(record: InstanceRecord, state: InstanceState, job: SlurmJob) -> Action:
    why = END_REASONS.get(job.state, f"job ended ({job.state.value})")
    if job.state is JobState.FAILED and job.exit_code is not None:
        why = f"job failed (exit code {job.exit_code})"
    if job.reason and job.state is not JobState.CANCELLED:
        why = f"{why}: {job.reason}"
    if state is S.DRAINING:
        if job.state is JobState.PREEMPTED:
            # Its warning or SIGTERM could have been the walltime's or an scancel's: now Slurm says.
            return Gone(why)
        # A SIGTERM we did not send, ending in CANCELLED, was an scancel from outside.
        we_ended_it = CANCEL_SENT in record.timestamps
        terminated = (record.reason or "").startswith("terminated")
        if not (job.state is JobState.CANCELLED and not we_ended_it and terminated):
            return Gone()
    elif job.state in EXPECTED_ENDS:
        return Ended(why)
    return Fail(why, cancel_job=False)


def load_budget_s(hist: ModelHistory, settings: LauncherSettings) -> float:
    """How long an instance may load: generous until the model's load times were observed."""
    observed = hist.load_p95_s
    if observed is None:
        return settings.first_load_timeout_s
    return max(observed * settings.load_timeout_factor, settings.first_load_timeout_s / 10)


def loading_step(record: InstanceRecord, ready: bool, now_s: float, budget_s: float) -> Step:
    """After a readiness probe of a loading instance: route to it, wait, or give up on it."""
    if ready:
        return Step((MarkReady(),))
    loading_s = now_s - record.timestamps.get(S.LOADING.value, record.state_since_s)
    if loading_s > budget_s:
        return Step((Fail(f"load timeout after {loading_s:.0f}s (budget {budget_s:.0f}s)"),))
    return HOLD


def waits_to_cancel(record: InstanceRecord) -> bool:
    """A draining instance whose job the launcher has yet to cancel."""
    return record.state is S.DRAINING and CANCEL_SENT not in record.timestamps and record.job_id is not None


def needs_busy_probe(record: InstanceRecord, now_s: float, settings: LauncherSettings) -> bool:
    """Whether `drain_step` needs to know how busy the engine is (it drains by its own requests)."""
    return (
        waits_to_cancel(record)
        and JOB_DRAIN not in record.timestamps
        and record.url is not None
        and now_s - record.state_since_s < settings.drain_grace_s
    )


def drain_step(record: InstanceRecord, busy: float | None, now_s: float, settings: LauncherSettings) -> Step:
    """Cancel a draining instance's job once its requests are done (`busy`: running requests, None unknown)
    or its grace is over; one the job drains itself is cancelled only if it outlives its warning."""
    if not waits_to_cancel(record):
        return HOLD
    draining_s = now_s - record.state_since_s
    if JOB_DRAIN in record.timestamps:
        done = draining_s >= settings.signal_lead_s + settings.drain_grace_s
    else:
        done = not busy or draining_s >= settings.drain_grace_s
    return Step((Cancel(),)) if done else HOLD


WARNING_SLACK_S = 90.0
"""Slurm may send `--signal` up to a minute before the lead it was given: a warning later than the lead plus
this slack before the walltime is the walltime's; an earlier one is preemption's (`send_user_signal`)."""


def deregister_step(record: InstanceRecord, reason: str, now_s: float, settings: LauncherSettings) -> Step:
    """A job's own word that it stops serving: it refused to start, its engine exited, Slurm warned or
    terminated it.

    The job gets the same USR1 for its walltime and, with `PreemptParameters=send_user_signal`, for a
    preemption; a warning long before the walltime Slurm gave the job (its start plus its limit: a
    preemption moves squeue's end time to the end of the grace time, not the limit) is the preemption's.
    """
    if record.state not in LIVE_STATES or record.state is S.DRAINING:
        return HOLD
    if reason.startswith("refused:"):
        # The job found its directory or model path unsafe before starting: retrying cannot help.
        why = f"job refused to start: {reason.removeprefix('refused:')} (see the job's log)"
        return Step((Fail(why), Broken(why)))
    if reason.startswith("engine-exited"):
        code = reason.partition(":")[2] or "?"
        return Step((Fail(f"engine exited with code {code}"),))
    start_s, limit_s = record.timestamps.get(JOB_START), record.time_limit_s
    end_s = start_s + limit_s if start_s is not None and limit_s is not None else record.end_time_s
    left_s = None if end_s is None else end_s - now_s
    if reason == "walltime-warning" and left_s is not None and left_s > settings.signal_lead_s + WARNING_SLACK_S:
        why = f"preempted (Slurm's warning came {left_s:.0f} s before the walltime)"
    elif reason == "walltime-warning":
        why = "walltime warning from Slurm"
    elif reason == "terminated":
        why = "terminated by Slurm (scancel or preemption)"
    else:
        why = f"deregistered: {reason[:100]}"
    return Step((Drain(why, cancel=False, by_job=True),))


def newly_held(record: InstanceRecord, fields: tuple[tuple[str, object], ...]) -> str | None:
    """ "waiting: ..." when a Note gives the pending job an accounting-limit reason it did not have."""
    reason = dict(fields).get("slurm_reason", record.slurm_reason)
    held = pending_limit(reason if isinstance(reason, str) else None, account=record.account, qos=record.qos)
    was = pending_limit(record.slurm_reason, account=record.account, qos=record.qos)
    return held if held != was else None
