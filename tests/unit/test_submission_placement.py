"""Where a new job goes: the placement whose `sbatch --test-only` estimate starts soonest, on `FakeSlurm`."""

from __future__ import annotations

import asyncio

import pytest

from launcher.submission import place
from slurm.backend import SlurmBackend
from slurm.errors import SlurmCommandError
from slurm.fake import FakeSlurm
from slurm.types import StartEstimate
from slurmless.settings import LauncherSettings
from warmpool.specs import ModelSpec, Resources

T0 = 1_800_000_000.0


def spec(partitions: list[str], qos: list[str] | None = None) -> ModelSpec:
    return ModelSpec(
        name="m",
        source="/models/m",
        resources=Resources(gpus=1, time_limit_min=60, partitions=partitions, qos=qos or []),
    )


def render(partition: str | None, qos: str | None) -> str:
    return "#SBATCH --job-name=slurmless-m-i1\n#SBATCH --comment=slurmless:i1\n"


@pytest.mark.parametrize(
    ("estimates", "preemptible", "expect"),
    [
        ({("a", None): T0 + 3600, ("b", None): T0 + 60}, [], (("b", None), T0 + 60)),
        ({("a", None): T0 + 30, ("b", None): T0 + 60}, ["b"], (("b", None), T0 + 60)),  # tie: preemptible first
        ({("a", None): T0 + 30, ("b", None): T0 + 900}, ["b"], (("a", None), T0 + 30)),
    ],
)
def test_soonest_estimate_wins(
    estimates: dict[tuple[str | None, str | None], float], preemptible: list[str], expect: object
) -> None:
    fake = FakeSlurm(now_s=T0)
    fake.estimates.update(estimates)
    settings = LauncherSettings(preemptible_partitions=preemptible)
    assert asyncio.run(place(fake, spec(["a", "b"]), render, settings)) == expect
    assert fake.calls["estimate_start"] == 2 and fake.calls["submit"] == 0


def test_one_allowed_placement_asks_slurm_nothing() -> None:
    fake = FakeSlurm(now_s=T0)
    assert asyncio.run(place(fake, spec(["a"]), render, LauncherSettings())) == (("a", None), None)
    assert sum(fake.calls.values()) == 0


def test_placements_slurm_refuses_to_estimate_are_skipped() -> None:
    class Refusing(FakeSlurm):
        async def estimate_start(
            self, script: str, *, partition: str | None = None, qos: str | None = None
        ) -> StartEstimate:
            if partition == "a":
                raise SlurmCommandError("sbatch", 1, "invalid partition")
            return await super().estimate_start(script, partition=partition, qos=qos)

    fake = Refusing(now_s=T0)
    fake.estimates[("b", None)] = T0 + 5
    assert asyncio.run(place(fake, spec(["a", "b"]), render, LauncherSettings())) == (("b", None), T0 + 5)


def test_fake_slurm_is_a_slurm_backend() -> None:
    backend: SlurmBackend = FakeSlurm()
    assert isinstance(backend, SlurmBackend)
