"""Parsing recorded squeue/sinfo/sbatch output from Slurm 22.05 (recorded) and 23.11/24.11 (schema)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from slurm.errors import SlurmParseError, SlurmUnavailable
from slurm.parse import (
    SQUEUE_FIELDS,
    SQUEUE_SEP,
    count_gpus,
    duration_min,
    normalise_job_state,
    parse_sinfo,
    parse_squeue,
    parse_squeue_lines,
    parse_test_only,
    partitions_from_nodes,
)
from slurm.types import JobState, SlurmJob

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"


def _read(name: str) -> str:
    return (DATA / name).read_text()


def _by_id(jobs: list[SlurmJob]) -> dict[int, SlurmJob]:
    return {j.job_id: j for j in jobs}


def test_squeue_2205_running_and_pending() -> None:
    jobs = _by_id(parse_squeue(_read("squeue_22.05_running_pending.json")))
    assert set(jobs) == {1, 2, 3}
    running = jobs[1]
    assert running.state is JobState.RUNNING
    assert running.name == "slurmless-llama-abc123"
    assert running.comment == "slurmless:abc123"
    assert running.instance_id == "abc123"
    assert running.node_list == "sl-node0"
    assert running.reason is None
    # Submitted with --time=30 --time-min=10: backfill gave the job only its minimum.
    assert running.time_limit_min == 10
    assert running.time_min_min == 10
    assert running.start_time is not None and running.end_time is not None
    assert running.end_time - running.start_time == timedelta(minutes=10)

    pending = jobs[2]
    assert pending.state is JobState.PENDING
    assert pending.reason == "Resources"
    assert pending.node_list == ""
    assert pending.time_min_min is None
    # The backfill estimate: when job 1 ends.
    assert pending.start_time == running.end_time

    assert jobs[3].instance_id is None


def test_squeue_2205_finished_states_and_exit_codes() -> None:
    jobs = _by_id(parse_squeue(_read("squeue_22.05_finished.json")))
    assert jobs[3].state is JobState.CANCELLED
    assert jobs[7].state is JobState.FAILED
    assert jobs[7].reason == "NonZeroExitCode"
    assert jobs[7].exit_code == 3  # the raw wait status was 768
    assert jobs[7].exit_signal is None
    assert all(j.state.is_finished for j in (jobs[3], jobs[7]))
    assert jobs[1].state.is_active


def test_squeue_2311_shapes() -> None:
    jobs = _by_id(parse_squeue(_read("squeue_23.11.json")))
    running = jobs[812001]
    assert running.state is JobState.RUNNING
    assert running.time_limit_min == 45
    assert running.time_min_min == 30
    assert running.start_time == datetime.fromtimestamp(1732000060, tz=UTC)
    assert running.end_time == running.start_time + timedelta(minutes=45)
    assert running.instance_id == "a1b2c3"
    assert running.qos == "normal"
    assert running.account == "llm-serving"
    assert running.node_count == 1

    pending = jobs[812002]
    assert pending.state is JobState.PENDING
    assert pending.reason == "Resources"
    assert pending.start_time == datetime.fromtimestamp(1732003600, tz=UTC)

    requeued = jobs[812003]
    assert requeued.state is JobState.PENDING
    assert requeued.state_flags == ("REQUEUED",)
    assert requeued.start_time is None  # number 0: no estimate yet

    assert jobs[812004].state is JobState.COMPLETING
    assert jobs[812005].state is JobState.FAILED
    assert jobs[812005].exit_code == 3
    assert jobs[812006].state is JobState.CANCELLED
    assert jobs[812006].exit_signal == 15
    assert jobs[812007].time_limit_min is None  # infinite
    assert jobs[812008].node_list == "gpu[020-021]"
    assert jobs[812008].node_count == 2


@pytest.mark.parametrize(
    ("raw", "state", "flags"),
    [
        ("RUNNING", JobState.RUNNING, ()),
        (["RUNNING"], JobState.RUNNING, ()),
        ("COMPLETING", JobState.COMPLETING, ("COMPLETING",)),
        (["RUNNING", "COMPLETING"], JobState.COMPLETING, ("COMPLETING",)),
        (["RUNNING", "CONFIGURING"], JobState.CONFIGURING, ("CONFIGURING",)),
        ("CONFIGURING", JobState.CONFIGURING, ("CONFIGURING",)),
        (["PENDING", "REQUEUED"], JobState.PENDING, ("REQUEUED",)),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY, ()),
        (["PREEMPTED"], JobState.PREEMPTED, ()),
        ("TIMEOUT", JobState.TIMEOUT, ()),
        ("NODE_FAIL", JobState.NODE_FAIL, ()),
        (["WEIRD"], JobState.UNKNOWN, ("WEIRD",)),
        (None, JobState.UNKNOWN, ()),
    ],
)
def test_normalise_job_state(raw: object, state: JobState, flags: tuple[str, ...]) -> None:
    assert normalise_job_state(raw) == (state, flags)


def test_sinfo_2205_nodes_and_partitions() -> None:
    nodes = parse_sinfo(_read("sinfo_22.05.json"))
    assert [n.name for n in nodes] == ["sl-node0"]
    node = nodes[0]
    assert node.gpus_total == 4
    assert node.gpus_used == 2
    assert node.gpus_free == 2
    assert node.partitions == ("gpu", "preempt")
    parts = {p.name: p for p in partitions_from_nodes(nodes)}
    assert parts["gpu"].gpus_total == 4
    assert parts["gpu"].gpus_free == 2
    assert parts["preempt"].cpus_idle == 6


def test_sinfo_2411_entries_merge_per_node() -> None:
    nodes = {n.name: n for n in parse_sinfo(_read("sinfo_24.11.json"))}
    assert nodes["gpu017"].partitions == ("gpu", "gpu-preempt")
    assert nodes["gpu019"].state == ("idle", "drain")
    assert nodes["gpu019"].gpus_free == 0  # drained nodes offer nothing
    assert nodes["gpu021"].gpus_used == 2  # "IDX:0,2" must not split the item
    assert nodes["cn001"].gpus_total == 0
    parts = {p.name: p for p in partitions_from_nodes(nodes.values())}
    assert (parts["gpu"].gpus_total, parts["gpu"].gpus_free) == (20, 9)
    assert (parts["gpu-preempt"].gpus_total, parts["gpu-preempt"].gpus_free) == (8, 7)
    assert parts["cpu"].gpus_total == 0


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("gpu:4", 4),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:l40s:1(IDX:0),tmpsize:10737418240", 1),
        ("gpu:a100:2(IDX:0,2),gpu:v100:1(IDX:3)", 3),
        ("tmpsize:7T", 0),
        ("(null)", 0),
        ("", 0),
        (None, 0),
        ("gpu:a100:0(IDX:N/A)", 0),
    ],
)
def test_count_gpus(gres: str | None, gpus: int) -> None:
    assert count_gpus(gres) == gpus


def test_test_only_estimate() -> None:
    est = parse_test_only(_read("sbatch_test_only_22.05.txt"), tz=UTC)
    assert est.start_time == datetime(2026, 11, 23, 12, 21, 54, tzinfo=UTC)
    assert est.partition == "gpu"
    assert est.node_list == "sl-node0"
    assert est.processors == 1
    cet = parse_test_only(_read("sbatch_test_only_22.05.txt"), tz=timezone(timedelta(hours=1)))
    assert cet.start_time == datetime(2026, 11, 23, 11, 21, 54, tzinfo=UTC)


def test_test_only_rejection_is_a_parse_error() -> None:
    with pytest.raises(SlurmParseError):
        parse_test_only(_read("sbatch_test_only_22.05_rejected.txt"))


@pytest.mark.parametrize("text", ["not json", "[]", '{"meta": {}}'])
def test_bad_squeue_output_raises(text: str) -> None:
    with pytest.raises(SlurmParseError):
        parse_squeue(text)


def test_sinfo_without_nodes_raises() -> None:
    with pytest.raises(SlurmParseError):
        parse_sinfo(orjson.dumps({"meta": {}}))


@pytest.mark.parametrize(
    ("name", "parse"),
    [("squeue_22.05_controller_down.json", parse_squeue), ("sinfo_22.05_controller_down.json", parse_sinfo)],
)
def test_reported_errors_mean_unavailable_not_empty(name: str, parse: Callable[[str], object]) -> None:
    # Recorded with the controller unreachable: exit status 0, an empty list and an error entry.
    with pytest.raises(SlurmUnavailable):
        parse(_read(name))


def _line(**fields: str) -> str:
    """One `squeue --Format=SQUEUE_FORMAT` line, every field ending with the separator."""
    return "".join(fields.get(name, "") + SQUEUE_SEP for name in SQUEUE_FIELDS)


def test_squeue_lines_as_22_05_prints_them() -> None:
    # Recorded from 22.05.8 on the local cluster (SLURM_TIME_FORMAT=%s), separator swapped in.
    running = _line(
        JobID="1", State="RUNNING", Reason="None", Partition="gpu", QOS="(null)", Account="(null)", UserName="root",
        NodeList="sl-node0", NumNodes="1", BatchHost="sl-node0", TimeLimit="30:00", SubmitTime="1795443823",
        StartTime="1795443824", EndTime="1795445624", exit_code="0", Comment="slurmless:inst-0123",
        Name="slurmless-a-very-long-job-name-that-exceeds-twenty-chars",
    )  # fmt: skip
    failed = _line(
        JobID="2", State="FAILED", Reason="NonZeroExitCode", Partition="gpu", NodeList="sl-node0", NumNodes="1",
        BatchHost="sl-node0", TimeLimit="1:00:00", SubmitTime="1795443823", StartTime="1795443824",
        EndTime="1795443824", exit_code="768", Comment="(null)", Name="slurmless-fail",
    )  # fmt: skip
    pending = _line(
        JobID="3", State="PENDING", Reason="Resources", NumNodes="1", BatchHost="n/a", TimeLimit="UNLIMITED",
        SubmitTime="1795443823", StartTime="N/A", EndTime="N/A", exit_code="0", Name="slurmless-pend",
    )  # fmt: skip
    jobs = _by_id(parse_squeue_lines("\n".join([running, failed, pending]) + "\n"))
    assert jobs[1].state is JobState.RUNNING and jobs[1].reason is None
    assert jobs[1].instance_id == "inst-0123"
    assert jobs[1].name == "slurmless-a-very-long-job-name-that-exceeds-twenty-chars"
    assert (jobs[1].qos, jobs[1].account, jobs[1].batch_host, jobs[1].node_count) == ("", "", "sl-node0", 1)
    assert jobs[1].time_limit_min == 30
    assert jobs[1].start_time == datetime.fromtimestamp(1795443824, tz=UTC)
    assert jobs[1].end_time is not None and jobs[1].end_time - jobs[1].start_time == timedelta(minutes=30)
    assert (jobs[2].state, jobs[2].reason, jobs[2].exit_code, jobs[2].exit_signal) == (
        JobState.FAILED, "NonZeroExitCode", 3, None,
    )  # fmt: skip
    assert jobs[2].comment == "" and jobs[2].instance_id is None
    assert (jobs[3].state, jobs[3].reason, jobs[3].batch_host) == (JobState.PENDING, "Resources", "")
    assert (jobs[3].time_limit_min, jobs[3].start_time, jobs[3].end_time) == (None, None, None)


def test_squeue_lines_skip_what_does_not_parse_as_a_job() -> None:
    ok = _line(JobID="7", State="COMPLETING", Name="slurmless-x")
    extra = _line(JobID="8", State="RUNNING", Name="someone" + SQUEUE_SEP + "else")
    short = "9" + SQUEUE_SEP + "RUNNING" + SQUEUE_SEP
    jobs = parse_squeue_lines("\n".join([ok, extra, short, ""]))
    assert [(j.job_id, j.state) for j in jobs] == [(7, JobState.COMPLETING)]
    with pytest.raises(SlurmParseError):
        parse_squeue_lines(_line(JobID="x", State="RUNNING"))


def test_squeue_lines_signal_exit_and_iso_times() -> None:
    line = _line(
        JobID="4", State="CANCELLED", exit_code="0:15", StartTime="2026-11-23T10:00:00+00:00", EndTime="0",
        Name="slurmless-sig",
    )  # fmt: skip
    (job,) = parse_squeue_lines(line)
    assert (job.exit_code, job.exit_signal) == (0, 15)
    assert job.start_time == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert job.end_time is None


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("2-04:00:00", 2 * 1440 + 240),
        ("1:00:00", 60),
        ("30:00", 30),
        ("45", 45),
        ("0:30", 0),
        ("UNLIMITED", None),
        ("INVALID", None),
        ("N/A", None),
        ("", None),
        ("x-1:00:00", None),
        ("1:2:3:4", None),
    ],
)
def test_duration_min(text: str, minutes: int | None) -> None:
    assert duration_min(text) == minutes
