"""The launcher counts idle GPU-seconds as the simulator does, whenever between two ticks a job started or ended."""

from __future__ import annotations

import pytest

from launcher.idle_budgets import idle_gpu_s
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.specs import ModelSpec, Resources

S = InstanceState
SPECS = {"m": ModelSpec(name="m", source="/models/m", resources=Resources(gpus=2))}


def record(iid: str, state: InstanceState, **ts: float) -> InstanceRecord:
    return InstanceRecord(id=iid, model="m", state=state, timestamps=dict(ts))


@pytest.mark.parametrize(
    ("rec", "inflight", "held_s"),
    [
        (record("a", S.READY, starting=0.0, ready=5.0), 0, 60.0),  # held all along
        (record("b", S.LOADING, starting=130.0), 0, 30.0),  # its job started between the ticks
        (record("c", S.DRAINING, starting=0.0, ready=5.0, draining=150.0), 0, 50.0),  # drained between them
        (record("d", S.GONE, starting=0.0, gone=90.0), 0, 0.0),  # ended before the step
        (record("e", S.PENDING), 0, 0.0),  # no GPU held yet
        (record("f", S.READY, starting=120.0, ready=140.0), 1, 20.0),  # loading idle, then serving
        (record("g", S.READY, starting=0.0, ready=5.0), 2, 0.0),  # serving over the whole step
    ],
)
def test_idle_is_the_held_time_not_serving(rec: InstanceRecord, inflight: int, held_s: float) -> None:
    got = idle_gpu_s([rec], SPECS, {"m": {rec.id: inflight}}, 100.0, 160.0)
    assert got.get("m", 0.0) == pytest.approx(2 * held_s)  # two GPUs a replica
