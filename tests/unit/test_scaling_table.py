"""The scaling plan as a table: (a model's instances and load) -> desired replicas, submissions, drains.

Instances are real job records of `FakeSlurm` (submitted, started, given their walltime), the
inputs are what the tick reads from Redis, and `launcher.scaling` answers with a value; nothing is
applied. The whole table runs in milliseconds beside the real-Slurm tests of the same behaviour
(tests/integration/test_launcher_policies.py, test_launcher_walltime.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from launcher.batch_scaling import batch_needs
from launcher.desired import fit_to_budget
from launcher.history import ModelHistory
from launcher.scaling import DrainOrder, ModelInputs, Planner, Submission, live_by_model, model_actions
from launcher.settings import LauncherSettings
from slurm.fake import FakeSlurm
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.snapshot import ModelSnapshot
from warmpool.specs import ModelSpec, Policy, Resources

S = InstanceState
T0 = 1_800_000_000.0
SETTINGS = LauncherSettings(default_keepalive_s=600.0, pending_cancel_grace_s=5.0, signal_lead_s=30)


SHORT_KEEPALIVE: dict[str, object] = {"keepalive_min_s": 10, "keepalive_max_s": 20}
BATCH_JOBS: dict[str, object] = {"batch_cold_starts": True, "batch_lines_per_instance_hour": 1000.0}


def spec(name: str = "m", policy: dict[str, object] | None = None) -> ModelSpec:
    return ModelSpec(
        name=name,
        source=f"/models/{name}",
        resources=Resources(gpus=1, time_limit_min=120),
        policy=Policy.model_validate({"max_replicas": 3, **(policy or {})}),
    )


def instance(
    fake: FakeSlurm, iid: str, state: InstanceState, *, runs_for_min: int | None = None, batch: bool = False
) -> InstanceRecord:
    """A record in `state` whose job FakeSlurm holds; a ready one runs, ending at its walltime."""
    script = (
        f"#!/bin/bash\n#SBATCH --job-name=slurmless-m-{iid}\n#SBATCH --comment=slurmless:{iid}\n#SBATCH --time=120\n"
    )
    job_id = asyncio.run(fake.submit(script))
    end_s = None
    if state in (S.STARTING, S.LOADING, S.READY):
        fake.start(job_id, limit_min=runs_for_min)
        end_time = fake.peek(job_id).end_time
        end_s = end_time.timestamp() if end_time else None
    return InstanceRecord(
        id=iid,
        model="m",
        state=state,
        job_id=str(job_id),
        created_s=fake.now_s,
        state_since_s=fake.now_s,
        end_time_s=end_s,
        batch=batch,
    )


@dataclass
class Row:
    name: str
    states: tuple[InstanceState, ...] = ()
    queue_depth: int = 0
    inflight: dict[str, int] = field(default_factory=dict)
    idle_for_s: float | None = None
    """Since the last request (None: never had one)."""
    policy: dict[str, object] = field(default_factory=dict)
    stats: dict[str, str] = field(default_factory=dict)
    runs_for_min: int | None = None
    successor: bool = False
    desired: int = 0
    submissions: tuple[str | None, ...] = ()
    """Each submission's instance to renew (None: more capacity)."""
    drains: tuple[tuple[str, bool], ...] = ()
    """(instance id, cancelled at once)."""
    batch: tuple[bool, ...] = ()
    """Which of `states` are batch instances (default none)."""
    batch_lines: int = 0
    """Lines pending in the model's running batches."""
    settings: dict[str, object] = field(default_factory=dict)
    batch_submissions: int = 0
    """How many of `submissions` are batch jobs (the last ones)."""


ROWS = [
    Row("cold and unused: nothing", desired=0),
    Row("cold with a waiting request: one submission", queue_depth=1, idle_for_s=0.0, desired=1, submissions=(None,)),
    Row(
        "min_replicas 2 with one ready: one more",
        states=(S.READY,),
        policy={"min_replicas": 2},
        desired=2,
        submissions=(None,),
    ),
    Row("busy ready instance: held", states=(S.READY,), inflight={"i0": 2}, idle_for_s=1.0, desired=1),
    Row(
        "idle past the keep-alive: both drained once idle",
        states=(S.READY, S.READY),
        idle_for_s=5000.0,
        policy=SHORT_KEEPALIVE,
        desired=0,
        drains=(("i0", False), ("i1", False)),
    ),
    Row(
        "one of two busy: the idle one drains",
        states=(S.READY, S.READY),
        inflight={"i0": 1},
        idle_for_s=5000.0,
        policy=SHORT_KEEPALIVE,
        desired=1,
        drains=(("i1", False),),
    ),
    Row(
        "demand vanished before anything was ready: the coming one is cancelled",
        states=(S.PENDING,),
        idle_for_s=60.0,
        desired=0,
        drains=(("i0", True),),
    ),
    Row(
        "broken model: no submission", queue_depth=1, idle_for_s=0.0, stats={"broken_reason": "invalid job"}, desired=1
    ),
    Row("backing off: no submission", queue_depth=1, idle_for_s=0.0, stats={"retry_at_s": str(T0 + 30)}, desired=1),
    Row(
        "walltime ends within the renewal lead: a successor",
        states=(S.READY,),
        policy={"min_replicas": 1},
        runs_for_min=5,
        desired=1,
        submissions=("i0",),
    ),
    Row("a backlog with batch jobs off: nothing (warm instances only)", batch_lines=5000, desired=0),
    Row(
        "a backlog scales batch jobs by lines per instance-hour",
        batch_lines=2500,
        settings=BATCH_JOBS,
        desired=3,
        submissions=(None, None, None),
        batch_submissions=3,
    ),
    Row(
        "a backlog beyond batch_max_instances: capped",
        batch_lines=50_000,
        settings={**BATCH_JOBS, "batch_max_instances": 2},
        desired=2,
        submissions=(None, None),
        batch_submissions=2,
    ),
    Row(
        "a backlog within the GPU budget: one busy interactive instance, one batch job",
        states=(S.READY,),
        inflight={"i0": 2},
        idle_for_s=1.0,
        batch_lines=5000,
        settings={**BATCH_JOBS, "gpu_budget": 2},
        desired=2,
        submissions=(None,),
        batch_submissions=1,
    ),
    Row(
        "a backlog on a warm instance: one more batch job beside it",
        states=(S.READY,),
        idle_for_s=1.0,
        batch_lines=1500,
        settings=BATCH_JOBS,
        desired=2,
        submissions=(None,),
        batch_submissions=1,
    ),
    Row(
        "a batch instance near its walltime: not renewed (it ends, its lines are retried)",
        states=(S.READY,),
        batch=(True,),
        runs_for_min=2,
        batch_lines=500,
        settings=BATCH_JOBS,
        desired=1,
    ),
    Row(
        "an idle instance while lines are pending: busy, not drained",
        states=(S.READY,),
        idle_for_s=5000.0,
        policy=SHORT_KEEPALIVE,
        batch_lines=10,
        settings=BATCH_JOBS,
        desired=1,
    ),
    Row(
        "lines pending: ready instances stay, a batch job not needed any more is cancelled",
        states=(S.READY, S.READY, S.PENDING),
        batch=(True, False, True),
        idle_for_s=5000.0,
        policy=SHORT_KEEPALIVE,
        batch_lines=10,
        settings=BATCH_JOBS,
        desired=1,
        drains=(("i2", True),),
    ),
    Row(
        "backlog done: batch instances drain once idle like any",
        states=(S.READY,),
        batch=(True,),
        idle_for_s=5000.0,
        policy=SHORT_KEEPALIVE,
        settings=BATCH_JOBS,
        desired=0,
        drains=(("i0", False),),
    ),
    Row(
        "a batch job waiting for a gap does not hold an interactive request up",
        states=(S.PENDING,),
        batch=(True,),
        queue_depth=1,
        idle_for_s=0.0,
        batch_lines=100,
        settings=BATCH_JOBS,
        desired=1,
        submissions=(None,),
    ),
    Row(
        "successor already coming: no second one",
        states=(S.READY, S.PENDING),
        policy={"min_replicas": 1},
        runs_for_min=5,
        successor=True,
        desired=1,
    ),
]


def run_row(row: Row) -> tuple[int, tuple[Submission, ...], tuple[DrainOrder, ...]]:
    settings = SETTINGS.model_copy(update=row.settings)
    fake = FakeSlurm(now_s=T0)
    batch = row.batch or (False,) * len(row.states)
    records = [
        instance(fake, f"i{n}", state, runs_for_min=row.runs_for_min, batch=b)
        for n, (state, b) in enumerate(zip(row.states, batch, strict=True))
    ]
    if row.successor:
        records[0].successor, records[1].successor_of = records[1].id, records[0].id
    now_s = fake.now_s
    stats = dict(row.stats)
    if row.idle_for_s is not None:
        stats["last_request_s"] = str(now_s - row.idle_for_s)
    snap = ModelSnapshot(
        stats=stats,
        inflight={r.id: row.inflight.get(r.id, 0) for r in records if r.state is S.READY},
        queue_depth=row.queue_depth,
        oldest_created_s=now_s if row.queue_depth else None,
    )
    model = spec(policy=row.policy)
    inputs = ModelInputs(model, snap, ModelHistory.from_fields(stats), None, (), None)
    [plan] = Planner(settings).plan([inputs], live_by_model(records), now_s)
    fitted = fit_to_budget([plan.ask], settings.gpu_budget)
    needs = batch_needs([plan], fitted, {"m": row.batch_lines} if row.batch_lines else {}, settings)
    actions = model_actions(plan, fitted["m"], now_s, settings, *[needs[m] for m in needs])
    return actions.decision.replicas, actions.submissions, actions.drains


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_plan(row: Row) -> None:
    desired, submissions, drains = run_row(row)
    assert desired == row.desired
    assert [s.successor_of for s in submissions] == list(row.submissions)
    assert [s.batch for s in submissions] == [False] * (len(submissions) - row.batch_submissions) + [
        True
    ] * row.batch_submissions
    for sub in submissions:
        if sub.batch:
            assert sub.why == f"batch backlog: {row.batch_lines} lines pending"
            continue
        assert sub.why.startswith(f"renewal of {sub.successor_of}" if sub.successor_of else f"desired={desired}:")
    assert [(d.record.id, d.cancel) for d in drains] == list(row.drains)


def test_quiet_models_keep_their_plan_while_inputs_are_the_same_objects() -> None:
    planner = Planner(SETTINGS)
    inputs = ModelInputs(spec(), ModelSnapshot(), ModelHistory.from_fields({}), None, (), None)
    [first] = planner.plan([inputs], {}, T0)
    [again] = planner.plan([inputs], {}, T0 + 1)
    [changed] = planner.plan([ModelInputs(spec(), ModelSnapshot(), inputs.hist, None, (), None)], {}, T0 + 2)
    assert again is first
    assert changed is not first


def test_the_budget_cut_model_gets_no_submission() -> None:
    settings = SETTINGS.model_copy(update={"gpu_budget": 1})
    stats = {"last_request_s": str(T0)}
    asks = [
        ModelInputs(
            spec(name),
            ModelSnapshot(stats=stats, queue_depth=q, oldest_created_s=T0),
            ModelHistory.from_fields(stats),
            None,
            (),
            None,
        )
        for name, q in (("a", 1), ("b", 5))
    ]
    plans = Planner(settings).plan(asks, {}, T0)
    fitted = fit_to_budget([p.ask for p in plans], settings.gpu_budget)
    assert sorted(d.replicas for d in fitted.values()) == [0, 1]
    for plan in plans:
        decision = fitted[plan.spec.name]
        submissions = model_actions(plan, decision, T0, settings).submissions
        assert len(submissions) == decision.replicas
        assert (decision.replicas == 0) == any(r.policy == "budget" for r in decision.reasons)


def test_a_plan_with_instances_is_reused_only_while_they_and_its_inputs_stand_still() -> None:
    fake = FakeSlurm(now_s=T0)
    stats = {"last_request_s": str(T0)}
    records = [instance(fake, "i0", S.READY)]
    inputs = ModelInputs(
        spec(), ModelSnapshot(stats=stats, inflight={"i0": 1}), ModelHistory.from_fields(stats), None, (), None
    )
    planner = Planner(SETTINGS)
    [first] = planner.plan([inputs], live_by_model(records), T0)
    fresh_copy = records[0].model_copy()
    [again] = planner.plan([inputs], {"m": [fresh_copy]}, T0 + 1)
    assert planner.reused == 1 and again.ask is first.ask
    assert again.active == [fresh_copy] and again.active[0] is fresh_copy  # acting on it changes this tick's record
    draining = fresh_copy.model_copy(update={"state": S.DRAINING})
    [changed] = planner.plan([inputs], {"m": [draining]}, T0 + 2)
    assert planner.reused == 1 and changed.active == []
    queued = inputs._replace(snap=ModelSnapshot(stats=stats, inflight={"i0": 1}, queue_depth=3, oldest_created_s=T0))
    planner.plan([queued], live_by_model(records), T0 + 3)
    planner.plan([queued], live_by_model(records), T0 + 60)
    assert planner.reused == 1  # a queue behind a ready instance ages by itself: decided afresh
