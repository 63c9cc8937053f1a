"""An instance's life as a table: (what Slurm did, the record's state) -> the step, on `FakeSlurm`.

Each row makes the in-memory Slurm do something (hold a job, start it, time it out, fail its
node, preempt it...) and asks `launcher.lifecycle` what to do with a record in a given state. No
Redis, no subprocess: the whole table runs in milliseconds. The same transitions are exercised
against real Slurm by tests/integration/test_launcher_*.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from launcher import lifecycle as lc
from launcher.history import ModelHistory
from launcher.settings import LauncherSettings
from slurm.errors import SlurmUnavailable
from slurm.fake import FakeSlurm
from slurm.types import JobState, SlurmJob
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.learnt import QUEUE_WAITS

S = InstanceState
T0 = 1_800_000_000.0
SETTINGS = LauncherSettings(register_timeout_s=30.0, drain_grace_s=5.0, signal_lead_s=30)
TERMINATED = "terminated by Slurm (scancel or preemption)"
REFUSED = "job refused to start: model path (see the job's log)"
SCRIPT = """#!/bin/bash
#SBATCH --job-name=slurmless-m-i1
#SBATCH --comment=slurmless:i1
#SBATCH --time=120
#SBATCH --time-min=30
"""


def record(state: InstanceState, **fields: object) -> InstanceRecord:
    since = float(fields.pop("since_s", T0))  # type: ignore[arg-type]
    base: dict[str, object] = {
        "id": "i1",
        "model": "m",
        "state": state,
        "created_s": T0,
        "state_since_s": since,
        "timestamps": {S.REQUESTED.value: T0, S.PENDING.value: T0},
    }
    if state is not S.REQUESTED:
        base["job_id"] = "1001"
    base.update(fields)
    return InstanceRecord.model_validate(base)


def submitted() -> tuple[FakeSlurm, int]:
    fake = FakeSlurm(now_s=T0)
    job_id = asyncio.run(fake.submit(SCRIPT))
    return fake, job_id


def observed(fake: FakeSlurm, job_id: int) -> SlurmJob | None:
    return next((j for j in asyncio.run(fake.jobs()) if j.job_id == job_id), None)


@dataclass
class Row:
    name: str
    slurm: Callable[[FakeSlurm, int], object]
    record: InstanceRecord
    expect: tuple[lc.Action, ...]
    gone_from_squeue: bool = False
    after_s: float = 0.0
    check: Callable[[lc.Step], None] = field(default=lambda step: None)


def nothing(fake: FakeSlurm, job_id: int) -> None:
    pass


def running_since(minutes: int) -> Callable[[FakeSlurm, int], object]:
    def act(fake: FakeSlurm, job_id: int) -> None:
        fake.start(job_id, node="n01")
        fake.advance(60 * minutes)

    return act


def running_for_s(seconds: float) -> Callable[[FakeSlurm, int], object]:
    def act(fake: FakeSlurm, job_id: int) -> None:
        fake.start(job_id, node="n01")
        fake.advance(seconds)

    return act


def noted_run(fake_start_s: float, limit_min: int) -> lc.Note:
    return lc.Note((("end_time_s", fake_start_s + 60 * limit_min), ("time_limit_s", 60.0 * limit_min), ("node", "n01")))


def ran(then: Callable[[FakeSlurm, int], object]) -> Callable[[FakeSlurm, int], object]:
    def act(fake: FakeSlurm, job_id: int) -> None:
        fake.start(job_id, node="n01")
        fake.advance(60)
        then(fake, job_id)

    return act


RUN_FACTS = {"end_time_s": T0 + 7200, "time_limit_s": 7200.0, "node": "n01", "timestamps": {"job_start": T0}}

ROWS = [
    Row("requested, no job yet, within grace", nothing, record(S.REQUESTED), (), gone_from_squeue=True),
    Row(
        "requested, no job after the grace",
        nothing,
        record(S.REQUESTED),
        (lc.Fail("submission lost: no job in squeue"),),
        gone_from_squeue=True,
        after_s=lc.SUBMIT_GRACE_S + 1,
    ),
    Row(
        "requested, its job pending on resources: adopted with reason and estimate",
        lambda f, j: f.hold(j, "Resources", est_start_s=T0 + 900),
        record(S.REQUESTED),
        (lc.Adopt("1001"), lc.Note((("slurm_reason", "Resources"), ("est_start_s", T0 + 900)))),
    ),
    Row(
        "pending, same reason and estimate as recorded",
        lambda f, j: f.hold(j, "Priority"),
        record(S.PENDING, slurm_reason="Priority"),
        (),
    ),
    Row(
        "pending, started: facts noted, queue wait observed, starting",
        lambda f, j: f.start(j, node="n01", at_s=T0 + 30),
        record(S.PENDING),
        (
            noted_run(T0 + 30, 120),
            lc.Note((("timestamps", {"requested": T0, "pending": T0, "job_start": T0 + 30}),)),
            lc.Observe(QUEUE_WAITS, "queue_wait", 30.0),
            lc.Move(S.STARTING, T0 + 30, (("slurm_reason", None),)),
        ),
    ),
    Row(
        "starting, backfill gave it only its time-min",
        lambda f, j: f.start(j, node="n01", limit_min=30),
        record(S.STARTING, timestamps={"job_start": T0}),
        (noted_run(T0, 30),),
    ),
    Row(
        "starting, no registration within register_timeout_s",
        running_since(1),
        record(S.STARTING, **RUN_FACTS),
        (lc.Fail("registration never came within 30s"),),
    ),
    Row("ready and running, nothing new", running_since(10), record(S.READY, **RUN_FACTS), ()),
    Row(
        "ready, walltime reached: ended, not failed",
        running_since(121),
        record(S.READY, **RUN_FACTS),
        (lc.Ended("walltime reached"),),
    ),
    Row(
        "ready batch instance, its walltime within batch_signal_lead_s: drained and cancelled",
        running_for_s(60 * 120 - 5),
        record(S.READY, batch=True, **RUN_FACTS),
        (lc.Drain(lc.BATCH_END, cancel=True),),
    ),
    Row(
        "ready batch instance, its walltime further off: nothing",
        running_for_s(60 * 120 - SETTINGS.batch_signal_lead_s - 1),
        record(S.READY, batch=True, **RUN_FACTS),
        (),
    ),
    Row("ready, preempted", ran(lambda f, j: f.preempt(j)), record(S.READY, **RUN_FACTS), (lc.Ended("preempted"),)),
    Row(
        "ready, preempted and requeued: drained, cancelled",
        ran(lambda f, j: f.preempt(j, requeue=True)),
        record(S.READY, **RUN_FACTS),
        (lc.Drain("requeued by Slurm", cancel=True),),
    ),
    Row(
        "ready, its node failed",
        ran(lambda f, j: f.fail_node("n01")),
        record(S.READY, **RUN_FACTS),
        (lc.Fail("node failure", cancel_job=False),),
    ),
    Row(
        "ready, cancelled by someone else",
        ran(lambda f, j: asyncio.run(f.cancel(j))),
        record(S.READY, **RUN_FACTS),
        (lc.Fail("job cancelled outside slurmless", cancel_job=False),),
    ),
    Row(
        "loading, engine crashed the job",
        ran(lambda f, j: f.finish(j, JobState.FAILED, exit_code=3, reason="NonZeroExitCode")),
        record(S.LOADING, **RUN_FACTS),
        (lc.Fail("job failed (exit code 3): NonZeroExitCode", cancel_job=False),),
    ),
    Row(
        "ready, job completing: unrouted until Slurm says how it ended",
        ran(lambda f, j: f._set(j, state=JobState.COMPLETING)),
        record(S.READY, **RUN_FACTS),
        (lc.Unroute(),),
    ),
    Row(
        "draining, we cancelled it",
        ran(lambda f, j: asyncio.run(f.cancel(j))),
        record(S.DRAINING, reason="idle: scaling down", timestamps={"job_start": T0, lc.CANCEL_SENT: T0}),
        (lc.Gone(),),
    ),
    Row(
        "draining after a SIGTERM we did not send, then CANCELLED: scancel from outside",
        ran(lambda f, j: asyncio.run(f.cancel(j))),
        record(S.DRAINING, reason="terminated by Slurm (scancel or preemption)", timestamps={"job_start": T0}),
        (lc.Fail("job cancelled outside slurmless", cancel_job=False),),
    ),
    Row(
        "ready, job vanished from squeue",
        nothing,
        record(S.READY, **RUN_FACTS),
        (lc.Fail("job vanished from Slurm"),),
        gone_from_squeue=True,
    ),
    Row(
        "draining after its warning, then PREEMPTED: gone, and why is kept",
        ran(lambda f, j: f.preempt(j)),
        record(S.DRAINING, reason="walltime warning from Slurm", timestamps={"job_start": T0, lc.JOB_DRAIN: T0}),
        (lc.Gone("preempted"),),
    ),
    Row(
        "draining after a SIGTERM we did not send, then PREEMPTED: gone as preempted, not a failure",
        ran(lambda f, j: f.preempt(j)),
        record(S.DRAINING, reason=TERMINATED, timestamps={"job_start": T0}),
        (lc.Gone("preempted"),),
    ),
    Row("draining, job vanished: gone", nothing, record(S.DRAINING), (lc.Gone(),), gone_from_squeue=True),
    Row("failed records are history", ran(nothing), record(S.FAILED), ()),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_next_step(row: Row) -> None:
    fake, job_id = submitted()
    row.slurm(fake, job_id)
    fake.advance(row.after_s)
    job = None if row.gone_from_squeue else observed(fake, job_id)
    assert row.gone_from_squeue or job is not None
    step = lc.next_step(row.record, job, fake.now_s, SETTINGS)
    assert step.actions == row.expect


def test_ended_jobs_leave_squeue_after_min_job_age() -> None:
    fake, job_id = submitted()
    fake.start(job_id)
    fake.advance(121 * 60)
    assert fake.peek(job_id).state is JobState.TIMEOUT
    fake.advance(fake.min_job_age_s + 1)
    assert observed(fake, job_id) is None


def test_refused_submissions_raise_then_succeed() -> None:
    fake = FakeSlurm(now_s=T0)
    fake.fail_submissions(1)
    with pytest.raises(SlurmUnavailable):
        asyncio.run(fake.submit(SCRIPT))
    assert asyncio.run(fake.submit(SCRIPT)) > 0


@pytest.mark.parametrize(
    ("ready", "loading_s", "budget_s", "expect"),
    [
        (True, 5.0, 60.0, (lc.MarkReady(),)),
        (False, 5.0, 60.0, ()),
        (False, 61.0, 60.0, (lc.Fail("load timeout after 61s (budget 60s)"),)),
    ],
)
def test_loading_step(ready: bool, loading_s: float, budget_s: float, expect: tuple[lc.Action, ...]) -> None:
    loading = record(S.LOADING, timestamps={S.LOADING.value: T0})
    assert lc.loading_step(loading, ready, T0 + loading_s, budget_s).actions == expect


def test_load_budget_is_generous_until_observed() -> None:
    fresh = ModelHistory.from_fields({})
    seen = ModelHistory.from_fields({"load_times_s": "[10.0, 12.0]"})
    assert lc.load_budget_s(fresh, SETTINGS) == SETTINGS.first_load_timeout_s
    assert lc.load_budget_s(seen, SETTINGS) == max(
        12.0 * SETTINGS.load_timeout_factor, SETTINGS.first_load_timeout_s / 10
    )


@pytest.mark.parametrize(
    ("timestamps", "busy", "draining_s", "expect"),
    [
        ({}, 2.0, 1.0, ()),  # requests still running, within the grace
        ({}, 0.0, 1.0, (lc.Cancel(),)),  # idle: cancel at once
        ({}, None, 1.0, (lc.Cancel(),)),  # the engine does not answer: nothing to wait for
        ({}, 2.0, 5.0, (lc.Cancel(),)),  # grace over
        ({lc.JOB_DRAIN: T0}, 0.0, 34.0, ()),  # the job drains itself until its warning lead runs out
        ({lc.JOB_DRAIN: T0}, 0.0, 35.0, (lc.Cancel(),)),
        ({lc.CANCEL_SENT: T0}, 0.0, 99.0, ()),  # already cancelled
    ],
)
def test_drain_step(
    timestamps: dict[str, float], busy: float | None, draining_s: float, expect: tuple[lc.Action, ...]
) -> None:
    draining = record(S.DRAINING, timestamps=timestamps, host="n01", port=8000)
    assert lc.drain_step(draining, busy, T0 + draining_s, SETTINGS).actions == expect
    assert lc.needs_busy_probe(draining, T0 + draining_s, SETTINGS) == (
        not timestamps and draining_s < SETTINGS.drain_grace_s
    )


@pytest.mark.parametrize(
    ("state", "reason", "expect"),
    [
        (S.READY, "engine-exited:137", (lc.Fail("engine exited with code 137"),)),
        (S.STARTING, "refused:model path", (lc.Fail(REFUSED), lc.Broken(REFUSED))),
        (S.READY, "walltime-warning", (lc.Drain("walltime warning from Slurm", cancel=False, by_job=True),)),
        (
            S.READY,
            "walltime-warning:3600",
            (lc.Drain("preempted (Slurm's warning came 3600 s before the walltime)", cancel=False, by_job=True),),
        ),
        (
            S.LOADING,
            "terminated",
            (lc.Drain("terminated by Slurm (scancel or preemption)", cancel=False, by_job=True),),
        ),
        (S.READY, "odd", (lc.Drain("deregistered: odd", cancel=False, by_job=True),)),
        (S.DRAINING, "terminated", ()),
        (S.GONE, "engine-exited:1", ()),
    ],
)
def test_deregister_step(state: InstanceState, reason: str, expect: tuple[lc.Action, ...]) -> None:
    # `walltime-warning:N`: the record's job ends N s after the warning (default: the warning's lead).
    reason, _, left = reason.partition(":") if reason.startswith("walltime") else (reason, "", "")
    end_s = T0 + (float(left) if left else SETTINGS.signal_lead_s)
    assert lc.deregister_step(record(state, end_time_s=end_s), reason, T0, SETTINGS).actions == expect


def test_a_warning_after_slurm_moved_the_end_to_the_grace_time_is_a_preemption() -> None:
    """Once preempted, squeue's end time is the end of the grace time; the limit the job got is unchanged."""
    hit = record(
        S.READY, end_time_s=T0 + 20, time_limit_s=3600.0, timestamps={S.PENDING.value: T0 - 100, lc.JOB_START: T0 - 100}
    )
    [drain] = lc.deregister_step(hit, "walltime-warning", T0, SETTINGS).actions
    assert drain == lc.Drain("preempted (Slurm's warning came 3500 s before the walltime)", cancel=False, by_job=True)


def test_a_warning_up_to_a_minute_early_is_still_the_walltime() -> None:
    """Slurm may send --signal up to 60 s before the lead it was given (its event resolution)."""
    early = record(S.READY, end_time_s=T0 + SETTINGS.signal_lead_s + 60)
    [drain] = lc.deregister_step(early, "walltime-warning", T0, SETTINGS).actions
    assert drain == lc.Drain("walltime warning from Slurm", cancel=False, by_job=True)
