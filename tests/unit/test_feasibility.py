"""Can the cluster ever run a model? Its resources against `sinfo`'s nodes, then `sbatch --test-only`,
as a table over `FakeSlurm`."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from launcher.feasibility import check_feasible, unfit_reason
from slurm.errors import NotSupported, SlurmError, SlurmTimeout, SlurmUnavailable
from slurm.fake import FakeSlurm
from slurm.types import NodeInfo, StartEstimate
from warmpool.specs import ModelSpec, Resources


def node(
    name: str, *, partitions: tuple[str, ...] = ("gpu",), cpus: int = 8, mem_mb: int = 8000, gpus: int = 1
) -> NodeInfo:
    return NodeInfo(
        name=name, state=("idle",), partitions=partitions, cpus_total=cpus, mem_total_mb=mem_mb, gpus_total=gpus
    )


@dataclass
class Row:
    name: str
    resources: dict[str, object]
    nodes: list[NodeInfo]
    unfit: str | None = None
    """A part of the refusal, or None when the nodes can hold it."""
    extra: list[str] = field(default_factory=list)


DEV = [node("localhost", partitions=("debug",), cpus=4, mem_mb=8000, gpus=1)]
ROWS = [
    Row("the default estimate on the dev node: memory", {}, DEV, "16000 MB memory asked", ["largest: 8000 MB"]),
    Row("fits the dev node", {"cpus": 2, "mem_mb": 4000}, DEV),
    Row("too many GPUs", {"gpus": 2, "mem_mb": 1000}, DEV, "2 GPUs asked", ["largest: 1"]),
    Row("too many CPUs", {"cpus": 8, "mem_mb": 1000}, DEV, "8 CPUs asked"),
    Row(
        "memory only in a partition it may not use",
        {"mem_mb": 64_000, "partitions": ["gpu"]},
        [node("small", mem_mb=8000), node("big", partitions=("bigmem",), mem_mb=512_000)],
        "no node in partition(s) gpu has that much",
    ),
    Row("a partition with no nodes", {"mem_mb": 1000, "partitions": ["nope"]}, DEV, "no node is in partition(s) nope"),
    Row(
        "two nodes asked, one is big enough",
        {"nodes": 2, "mem_mb": 32_000},
        [node("a", mem_mb=64_000), node("b", mem_mb=8000)],
        "2 nodes with 32000 MB memory per node",
    ),
    Row(
        "each dimension on some node, but not together",
        {"gpus": 4, "mem_mb": 64_000},
        [node("gpus", gpus=4, mem_mb=8000), node("mem", gpus=1, mem_mb=128_000)],
        "64000 MB memory asked",
    ),
    Row("a backend that does not report memory is not held against", {"mem_mb": 64_000}, [node("x", mem_mb=0)]),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_resources_against_the_nodes(row: Row) -> None:
    why = unfit_reason(Resources.model_validate(row.resources), row.nodes)
    if row.unfit is None:
        assert why is None
    else:
        assert why is not None and row.unfit in why, why
        assert all(e in why for e in row.extra), why


def spec(**resources: object) -> ModelSpec:
    return ModelSpec(name="m", source="org/m", resources=Resources.model_validate(resources))


def render(partition: str | None, qos: str | None) -> str:
    return "#!/bin/bash\n#SBATCH --job-name=slurmless-m\n"


async def test_runnable_after_one_sinfo_and_one_test_only() -> None:
    fake = FakeSlurm(cpus_per_node=8, mem_per_node_mb=16_000)
    verdict = await check_feasible(fake, spec(mem_mb=8000, cpus=4), render)
    assert verdict.runnable is True
    assert fake.calls["nodes"] == 1 and fake.calls["estimate_start"] == 1 and fake.calls["submit"] == 0


async def test_too_big_for_every_node_is_refused_without_asking_sbatch() -> None:
    fake = FakeSlurm(cpus_per_node=8, mem_per_node_mb=8000)
    verdict = await check_feasible(fake, spec(mem_mb=16_000, cpus=4), render)
    assert verdict.runnable is False and "16000 MB memory" in verdict.reason
    assert fake.calls["estimate_start"] == 0


async def test_sbatch_test_only_refusing_every_placement_refuses() -> None:
    fake = FakeSlurm(partition="gpu")
    refusal = "sbatch: error: Batch job submission failed: Invalid qos specification"
    fake.estimate_refusals[("gpu", "high")] = refusal
    fake.estimate_refusals[("gpu", "low")] = refusal
    verdict = await check_feasible(fake, spec(mem_mb=1000, partitions=["gpu"], qos=["high", "low"]), render)
    assert verdict.runnable is False
    assert "gpu/high: " + refusal in verdict.reason and "gpu/low" in verdict.reason


async def test_one_placement_slurm_accepts_is_enough() -> None:
    fake = FakeSlurm(partition="gpu")
    fake.estimate_refusals[("gpu", "high")] = "sbatch: error: Invalid qos specification"
    verdict = await check_feasible(fake, spec(mem_mb=1000, partitions=["gpu"], qos=["high", "low"]), render)
    assert verdict.runnable is True


@pytest.mark.parametrize(
    "error",
    [SlurmUnavailable("sinfo", "Unable to contact slurm controller"), SlurmTimeout("sinfo", 20.0)],
    ids=["unreachable", "timed out"],
)
async def test_a_slurm_that_does_not_answer_leaves_it_unchecked(error: SlurmError) -> None:
    fake = FakeSlurm()
    fake.unavailable = error
    verdict = await check_feasible(fake, spec(mem_mb=1000), render)
    assert verdict.runnable is None and verdict.reason.startswith("Slurm unavailable: ")


async def test_a_backend_without_test_only_relies_on_the_nodes() -> None:
    """slurmrestd and pyslurm have no `sbatch --test-only`: a spec the nodes can hold is runnable there."""

    class NoTestOnly(FakeSlurm):
        async def estimate_start(
            self, script: str, *, partition: str | None = None, qos: str | None = None
        ) -> StartEstimate:
            raise NotSupported("slurmrestd", 0, "no start estimates over REST")

    verdict = await check_feasible(NoTestOnly(), spec(mem_mb=1000), render)
    assert verdict.runnable is True
    refused = await check_feasible(NoTestOnly(mem_per_node_mb=8000), spec(mem_mb=16_000), render)
    assert refused.runnable is False
