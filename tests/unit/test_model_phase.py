"""What waiting clients are told about a model, from its instance records and history (`model_phase`)."""

from __future__ import annotations

from launcher.history import ModelHistory
from launcher.publish import model_phase
from launcher.settings import LauncherSettings
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.phase import Phase

S = InstanceState
NOW = 1_800_000_000.0
SETTINGS = LauncherSettings()


def rec(iid: str, state: InstanceState, since_s: float, reason: str | None = None) -> InstanceRecord:
    return InstanceRecord(id=iid, model="m", state=state, created_s=NOW - 600, state_since_s=since_s, reason=reason)


def test_a_preempted_instance_is_named_while_its_replacement_comes() -> None:
    records = [
        rec("old", S.GONE, NOW - 500, "walltime reached"),
        rec("hit", S.DRAINING, NOW - 5, "preempted (Slurm's warning came 3000 s before the walltime)"),
        rec("new", S.PENDING, NOW - 4),
    ]
    phase = model_phase(records, ModelHistory.from_fields({}), NOW, SETTINGS)
    assert (phase.phase, phase.ended_by) == (Phase.PENDING, "preempted")


def test_cold_after_preemption_says_so_and_ready_forgets_it() -> None:
    gone = [rec("hit", S.GONE, NOW - 5, "preempted")]
    assert model_phase(gone, ModelHistory.from_fields({}), NOW, SETTINGS).ended_by == "preempted"
    back = [*gone, rec("new", S.READY, NOW - 1)]
    assert model_phase(back, ModelHistory.from_fields({}), NOW, SETTINGS).ended_by is None


def test_an_ordinary_end_is_not_news() -> None:
    records = [rec("hit", S.GONE, NOW - 50, "preempted"), rec("later", S.GONE, NOW - 5, "idle: scaling down")]
    assert model_phase(records, ModelHistory.from_fields({}), NOW, SETTINGS).ended_by is None


def test_a_refused_job_fails_waiting_clients_until_one_is_accepted() -> None:
    refused = ModelHistory.from_fields({"refused_reason": "submission failed: Memory specification"})
    phase = model_phase([], refused, NOW, SETTINGS)
    assert (phase.phase, phase.detail) == (Phase.FAILED, "submission failed: Memory specification")
    coming = model_phase([rec("retry", S.PENDING, NOW)], refused, NOW, SETTINGS)
    assert coming.phase is Phase.PENDING
