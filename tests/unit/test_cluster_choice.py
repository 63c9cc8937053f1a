"""Which cluster submits a model's next instance (`launcher.clusters.choose_cluster`), as a table, and the
same decision taken by each cluster over estimates that two `FakeSlurm` clusters gave.

The decision is pure: statuses and estimates as the clusters' launchers published them, the time, the
deciding launcher's name. Every launcher must reach the same answer from the same facts, so exactly one
of them submits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError
from typer.main import get_command
from typer.testing import CliRunner

from launcher.__main__ import with_cluster
from launcher.clusters import TIE_S, Verdict, choose_cluster, rivals
from launcher.settings import LauncherSettings
from launcher.submission import place
from slurm.errors import SlurmUnavailable
from slurm.fake import FakeSlurm
from slurm.types import StartEstimate
from slurmless.cli import app
from slurmless.cli_spec import SPEC_OPTIONS
from slurmless.settings import Settings, SettingsError
from warmpool.clusters import ClusterEstimate, ClusterStatus
from warmpool.errors import RegistryError
from warmpool.instances import InstanceRecord
from warmpool.keys import Keys
from warmpool.registry import check_resources
from warmpool.settings import RegistrySettings
from warmpool.specs import ModelSpec, Resources

T0 = 1_800_000_000.0
ALIVE_S, FRESH_S, WAIT_S = 15.0, 10.0, 2.0


def up(cluster: str, seen_s: float = T0, ok: bool = True) -> ClusterStatus:
    return ClusterStatus(cluster=cluster, launcher=f"{cluster}-1", seen_s=seen_s, slurm_ok=ok)


def est(cluster: str, start_in_s: float | None, at_s: float = T0) -> ClusterEstimate:
    return ClusterEstimate(cluster=cluster, est_start_s=None if start_in_s is None else at_s + start_in_s, at_s=at_s)


@dataclass(frozen=True)
class Case:
    name: str
    statuses: list[ClusterStatus]
    estimates: list[ClusterEstimate]
    expect: dict[str, tuple[Verdict, str | None]]
    """Each deciding cluster's verdict and chosen cluster."""
    allowed: list[str] = field(default_factory=list)
    now_s: float = T0


CASES = [
    Case(
        "the earlier start wins, whoever decides",
        [up("a"), up("b")],
        [est("a", 3600), est("b", 30)],
        {"a": (Verdict.ELSEWHERE, "b"), "b": (Verdict.SUBMIT, "b")},
    ),
    Case(
        "starts within the tie go to the first name",
        [up("a"), up("b")],
        [est("a", TIE_S - 1), est("b", 0)],
        {"a": (Verdict.SUBMIT, "a"), "b": (Verdict.ELSEWHERE, "a")},
    ),
    Case(
        "past estimates count as now",
        [up("a"), up("b")],
        [est("a", -100), est("b", 0)],
        {"a": (Verdict.SUBMIT, "a"), "b": (Verdict.ELSEWHERE, "a")},
    ),
    Case(
        "a live cluster that has not estimated yet is waited for",
        [up("a"), up("b")],
        [est("a", 0)],
        {"a": (Verdict.WAIT, None)},
        now_s=T0 + WAIT_S - 0.5,
    ),
    Case(
        "but not longer than the wait",
        [up("a"), up("b")],
        [est("a", 600)],
        {"a": (Verdict.SUBMIT, "a")},
        now_s=T0 + WAIT_S,
    ),
    Case(
        "a cluster whose Slurm is down is neither waited for nor chosen",
        [up("a"), up("b", ok=False)],
        [est("a", 600), est("b", 0)],
        {"a": (Verdict.SUBMIT, "a")},
    ),
    Case(
        "a cluster whose launcher stopped reporting is left out",
        [up("a"), up("b", seen_s=T0 - ALIVE_S - 1)],
        [est("a", 600)],
        {"a": (Verdict.SUBMIT, "a")},
    ),
    Case(
        "a cluster Slurm refused the job on is not chosen",
        [up("a"), up("b")],
        [est("a", 7200), est("b", None)],
        {"a": (Verdict.SUBMIT, "a"), "b": (Verdict.ELSEWHERE, "a")},
    ),
    Case(
        "stale estimates are not compared",
        [up("a"), up("b")],
        [est("a", 600, at_s=T0 + FRESH_S + 1), est("b", 0)],
        {"a": (Verdict.SUBMIT, "a")},
        now_s=T0 + FRESH_S + 1 + WAIT_S,
    ),
    Case(
        "nowhere when no cluster can start it",
        [up("a"), up("b")],
        [est("a", None), est("b", None)],
        {"a": (Verdict.NOWHERE, None), "b": (Verdict.NOWHERE, None)},
    ),
    Case(
        "a model allowed only on b",
        [up("a"), up("b")],
        [est("a", 0), est("b", 3600)],
        {"a": (Verdict.ELSEWHERE, None), "b": (Verdict.SUBMIT, "b")},
        allowed=["b"],
    ),
    Case(
        "a cluster the model may not use is not waited for",
        [up("a"), up("b"), up("c")],
        [est("a", 60)],
        {"a": (Verdict.SUBMIT, "a")},
        allowed=["a", "b"],
        now_s=T0 + WAIT_S,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_choose_cluster(case: Case) -> None:
    statuses = {s.cluster: s for s in case.statuses}
    estimates = {e.cluster: e for e in case.estimates}
    for me, (verdict, chosen) in case.expect.items():
        choice = choose_cluster(
            me, case.allowed, statuses, estimates, case.now_s, alive_s=ALIVE_S, fresh_s=FRESH_S, wait_s=WAIT_S
        )
        assert (choice.verdict, choice.cluster) == (verdict, chosen), (me, choice.reason)


def test_a_single_live_cluster_has_no_rivals() -> None:
    statuses = {"a": up("a"), "b": up("b", ok=False), "c": up("c", seen_s=T0 - 60)}
    assert rivals("a", [], statuses, T0, ALIVE_S) == []
    assert rivals("a", [], {**statuses, "d": up("d")}, T0, ALIVE_S) == ["d"]
    assert rivals("a", ["a"], {**statuses, "d": up("d")}, T0, ALIVE_S) == []


# --- two FakeSlurm clusters: estimate with `place`, then each decides ------------------------------


class DownSlurm(FakeSlurm):
    """A cluster whose controller does not answer."""

    async def estimate_start(
        self, script: str, *, partition: str | None = None, qos: str | None = None
    ) -> StartEstimate:
        self.calls["estimate_start"] += 1
        raise SlurmUnavailable("sbatch", "Unable to contact slurm controller (connect failure)")


def render(partition: str | None, qos: str | None) -> str:
    return "#SBATCH --job-name=slurmless-m-i1\n#SBATCH --comment=slurmless:i1\n"


async def estimate_on(name: str, slurm: FakeSlurm, spec: ModelSpec) -> ClusterEstimate:
    (partition, qos), est_s = await place(slurm, spec, render, LauncherSettings(), always_estimate=True)
    return ClusterEstimate(cluster=name, est_start_s=est_s, at_s=T0, partition=partition, qos=qos)


@pytest.mark.parametrize(
    ("busy_s", "down", "expect"),
    [
        ({"a": 3600.0}, set(), "b"),  # a blocker holds a's GPUs for an hour
        ({"b": 3600.0}, set(), "a"),
        ({}, set(), "a"),  # both free: the tie goes to the first name
        ({"b": 3600.0}, {"a"}, "b"),  # a's controller is down: b, even if later
    ],
)
def test_two_fake_clusters_agree_on_one_submitter(busy_s: dict[str, float], down: set[str], expect: str) -> None:
    spec = ModelSpec(name="m", source="/models/m", resources=Resources(gpus=1, time_limit_min=60))
    clusters: dict[str, FakeSlurm] = {}
    for name in ("a", "b"):
        fake = DownSlurm(now_s=T0) if name in down else FakeSlurm(now_s=T0)
        fake.estimates[(None, None)] = T0 + busy_s.get(name, 0.0)
        clusters[name] = fake

    async def run() -> dict[str, ClusterEstimate]:
        return {name: await estimate_on(name, fake, spec) for name, fake in clusters.items()}

    estimates = asyncio.run(run())
    statuses = {name: up(name) for name in clusters}
    choices = {
        me: choose_cluster(me, [], statuses, estimates, T0, alive_s=ALIVE_S, fresh_s=FRESH_S, wait_s=WAIT_S)
        for me in clusters
    }
    submitters = [me for me, c in choices.items() if c.verdict is Verdict.SUBMIT]
    assert submitters == [expect], {me: c.reason for me, c in choices.items()}
    assert {c.cluster for c in choices.values()} == {expect}
    assert all(f.calls["estimate_start"] == 1 and f.calls["submit"] == 0 for f in clusters.values())


# --- names, keys and settings ----------------------------------------------------------------------


def test_the_default_cluster_keeps_the_single_cluster_lease_key() -> None:
    keys = Keys("sl:")
    assert keys.cluster_leader("default") == keys.leader == "sl:launcher:leader"
    assert keys.cluster_leader("west") == "sl:launcher:leader:west"


def test_records_written_before_clusters_belong_to_the_default_cluster() -> None:
    raw = InstanceRecord(id="i1", model="m").to_redis()
    del raw["cluster"]
    assert InstanceRecord.from_redis(raw).cluster == "default"


@pytest.mark.parametrize("bad", ["", "West", "a b", "a:b", "-a", "x" * 41, "a/b"])
def test_bad_cluster_names_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        LauncherSettings(cluster=bad)
    with pytest.raises(ValidationError):
        Resources(clusters=[bad])
    with pytest.raises(ValidationError):
        RegistrySettings(clusters=[bad])
    with pytest.raises(SettingsError, match="--cluster"):
        with_cluster(Settings(), bad)


def test_the_cluster_option_overrides_the_setting() -> None:
    assert with_cluster(Settings(), "west").launcher.cluster == "west"
    assert with_cluster(Settings(), None).launcher.cluster == "default"


def test_registration_refuses_a_cluster_the_site_does_not_have() -> None:
    site = RegistrySettings(clusters=["north", "south"])
    check_resources(Resources(clusters=["south"]), site)
    with pytest.raises(RegistryError, match="unknown cluster 'west'"):
        check_resources(Resources(clusters=["west"]), site)
    check_resources(Resources(clusters=["west"]), RegistrySettings())  # no list: any name


def test_the_cli_names_the_cluster_of_a_launcher_and_of_a_model() -> None:
    group = get_command(app)
    launcher = group.commands["launcher"]  # type: ignore[attr-defined]
    assert any("--cluster" in p.opts for p in launcher.params)
    [option] = [o for o in SPEC_OPTIONS if o.flag == "--cluster"]
    assert option.path == ("resources", "clusters")
    result = CliRunner().invoke(app, ["launcher", "--cluster", "Bad Name"])
    assert result.exit_code != 0 and "--cluster 'Bad Name'" in str(result.exception or result.output)
