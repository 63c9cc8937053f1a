"""SlurmCLI against a real single-node Slurm cluster, with rendered job scripts running the simulator."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from slurm.backend import SlurmBackend
from slurm.cli_backend import SlurmCLI
from slurm.errors import JobNotFound, SlurmCommandError, SlurmTimeout, SlurmUnavailable
from slurm.jobscript import JobSpec, render_job_script
from slurm.localcluster import LocalCluster
from slurm.parse import parse_squeue
from slurm.types import JobState, SlurmJob
from tests.fixtures.callback_receiver import Callback, CallbackReceiver

pytestmark = pytest.mark.slurm

TOKEN = "cb-" + secrets.token_urlsafe(24)
API_KEY = "key-" + secrets.token_urlsafe(24)
WAIT_S = 90.0


@pytest.fixture
def cli(slurm_cluster: LocalCluster) -> SlurmCLI:
    return SlurmCLI(env=slurm_cluster.env, command_timeout_s=30.0, retry_attempts=2, retry_wait_s=0.2)


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver(TOKEN) as r:
        yield r


@pytest.fixture
async def cleanup(cli: SlurmCLI) -> AsyncIterator[list[int]]:
    """Job ids to cancel after the test, whatever happened."""
    ids: list[int] = []
    yield ids
    for job_id in ids:
        await cli.cancel(job_id)


def _spec(tmp_path: Path, receiver: CallbackReceiver, **overrides: object) -> JobSpec:
    values: dict[str, object] = {
        "instance_id": secrets.token_hex(4),
        "model_name": "sim-model",
        "model_source": "org/sim-model",
        "gpus_per_node": 1,
        "cpus_per_task": 1,
        "mem_mb": 400,
        "partition": "gpu",
        "time_limit_min": 10,
        "time_min_min": 5,
        "signal_lead_s": 60,
        "settle_s": 1,
        "kill_grace_s": 5,
        "callback_url": receiver.url,
        "callback_token": TOKEN,
        "callback_attempts": 3,
        "engine_api_key": API_KEY,
        "output_dir": str(tmp_path),
        "engine_command": [sys.executable, "-m", "enginesim", "--sim-load-time-s", "0.2"],
        "helper_python": sys.executable,
    }
    values.update(overrides)
    return JobSpec.parse(values)


async def _wait_for_calls(receiver: CallbackReceiver, predicate: Callable[[list[Callback]], bool]) -> list[Callback]:
    calls = await asyncio.to_thread(receiver.wait_for, predicate, WAIT_S)
    assert predicate(calls), f"callbacks so far: {calls}"
    return calls


async def _wait_for_job(cli: SlurmCLI, job_id: int, predicate: Callable[[SlurmJob], bool]) -> SlurmJob:
    deadline = time.monotonic() + WAIT_S
    job: SlurmJob | None = None
    while time.monotonic() < deadline:
        job = await cli.job(job_id)
        if job is not None and predicate(job):
            return job
        await asyncio.sleep(0.5)
    raise AssertionError(f"job {job_id} never matched; last seen {job}")


async def _healthy(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/health")).status_code == 200
    except httpx.TransportError:
        return False


def _log(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("*.out"))


async def test_partitions_list_gpus(cli: SlurmCLI) -> None:
    parts = {p.name: p for p in await cli.partitions()}
    assert parts["gpu"].gpus_total == 4
    assert 0 <= parts["gpu"].gpus_free <= 4
    nodes = await cli.nodes()
    assert nodes and nodes[0].gpus_total == 4
    assert cli.calls["sinfo"] == 2


async def test_estimate_start(cli: SlurmCLI, tmp_path: Path, receiver: CallbackReceiver) -> None:
    script = render_job_script(_spec(tmp_path, receiver))
    before = datetime.now(UTC) - timedelta(minutes=1)
    estimate = await cli.estimate_start(script, partition="preempt")
    assert estimate.partition == "preempt"
    assert estimate.start_time >= before
    assert estimate.node_list


async def test_estimate_start_rejects_impossible_placement(
    cli: SlurmCLI, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    script = render_job_script(_spec(tmp_path, receiver, gpus_per_node=16))
    with pytest.raises(SlurmCommandError):
        await cli.estimate_start(script)


async def test_job_registers_runs_and_drains_on_usr1(
    cli: SlurmCLI, tmp_path: Path, receiver: CallbackReceiver, cleanup: list[int]
) -> None:
    spec = _spec(tmp_path, receiver)
    job_id = await cli.submit(render_job_script(spec))
    cleanup.append(job_id)

    calls = await _wait_for_calls(receiver, lambda c: any(x.action == "register" for x in c))
    register = next(c for c in calls if c.action == "register")
    assert register.body["instance_id"] == spec.instance_id
    assert register.body["job_id"] == str(job_id)
    assert register.authorization == f"Bearer {TOKEN}"

    job = await _wait_for_job(cli, job_id, lambda j: j.state is JobState.RUNNING)
    assert job.name == f"slurmless-sim-model-{spec.instance_id}"
    assert job.comment == f"slurmless:{spec.instance_id}"
    assert job.instance_id == spec.instance_id
    assert job.time_limit_min is not None and 5 <= job.time_limit_min <= 10
    assert job.start_time is not None and job.end_time is not None
    assert job.node_list

    # The engine answers on the registered host:port, and only with the per-instance key.
    base = f"http://{register.body['host']}:{register.body['port']}"
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(5.0)) as http:
        # Registration comes right after the engine starts, before it listens: probe until ready.
        deadline = time.monotonic() + WAIT_S
        while not await _healthy(http):
            assert time.monotonic() < deadline, _log(tmp_path)
            await asyncio.sleep(0.2)
        assert (await http.get("/v1/models")).status_code == 401
        models = await http.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert models.status_code == 200

    await cli.signal(job_id, "USR1")
    calls = await _wait_for_calls(receiver, lambda c: any(x.action == "deregister" for x in c))
    deregister = next(c for c in calls if c.action == "deregister")
    assert deregister.body == {"instance_id": spec.instance_id, "job_id": str(job_id), "reason": "walltime-warning"}
    done = await _wait_for_job(cli, job_id, lambda j: j.state.is_finished)
    assert done.state is JobState.COMPLETED, _log(tmp_path)
    assert done.exit_code == 0


async def test_cancel_deregisters(
    cli: SlurmCLI, tmp_path: Path, receiver: CallbackReceiver, cleanup: list[int]
) -> None:
    spec = _spec(tmp_path, receiver, term_drain_s=0, settle_s=0, kill_grace_s=1)
    job_id = await cli.submit(render_job_script(spec))
    cleanup.append(job_id)
    await _wait_for_calls(receiver, lambda c: any(x.action == "register" for x in c))
    await cli.cancel(job_id)
    calls = await _wait_for_calls(receiver, lambda c: any(x.action == "deregister" for x in c))
    assert next(c for c in calls if c.action == "deregister").body["reason"] == "terminated"
    done = await _wait_for_job(cli, job_id, lambda j: j.state.is_finished)
    assert done.state is JobState.CANCELLED
    await cli.cancel(job_id)  # cancelling an ended job is not an error


async def test_pending_job_is_listed_with_reason(
    cli: SlurmCLI, tmp_path: Path, receiver: CallbackReceiver, cleanup: list[int]
) -> None:
    # The blocker holds all 4 GPUs, so the second job waits; it is cancelled unstarted.
    spec = _spec(tmp_path, receiver, gpus_per_node=4)
    blocker = _spec(tmp_path, receiver, gpus_per_node=4)
    first = await cli.submit(render_job_script(blocker))
    cleanup.append(first)
    second = await cli.submit(render_job_script(spec))
    cleanup.append(second)
    job = await _wait_for_job(cli, second, lambda j: j.state is JobState.PENDING and j.reason is not None)
    assert job.instance_id == spec.instance_id
    assert job.node_list == ""
    mine = {j.job_id for j in await cli.jobs()}
    assert {first, second} <= mine
    await cli.cancel(second)
    await cli.cancel(first)
    await _wait_for_job(cli, second, lambda j: j.state is JobState.CANCELLED)


async def test_jobs_is_one_squeue_and_filters_on_prefix(cli: SlurmCLI, slurm_cluster: LocalCluster) -> None:
    seen: list[tuple[str, float, bool]] = []
    other = SlurmCLI(
        env=slurm_cluster.env,
        command_timeout_s=30.0,
        job_name_prefix="someone-else-",
        on_command=lambda cmd, seconds, ok: seen.append((cmd, seconds, ok)),
    )
    assert await other.jobs() == []
    assert other.calls == {"squeue": 1}
    assert [(c, ok) for c, _, ok in seen] == [("squeue", True)]


async def test_signal_unknown_job(cli: SlurmCLI) -> None:
    with pytest.raises(JobNotFound):
        await cli.signal(999_999, "USR1")
    with pytest.raises(ValueError):
        await cli.signal(1, "USR1; rm -rf /")


async def test_unreachable_controller_is_unavailable_and_retried(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    conf = slurm_cluster.conf_path.read_text().splitlines()
    conf = [f"SlurmctldPort={dead_port}" if line.startswith("SlurmctldPort=") else line for line in conf]
    conf = [line for line in conf if not line.startswith(("MessageTimeout=",))] + ["MessageTimeout=2"]
    (tmp_path / "slurm.conf").write_text("\n".join(conf) + "\n")
    failures: list[bool] = []
    dead = SlurmCLI(
        env={"SLURM_CONF": str(tmp_path / "slurm.conf")},
        command_timeout_s=60.0,
        retry_attempts=2,
        retry_wait_s=0.1,
        on_command=lambda cmd, seconds, ok: failures.append(ok),
    )
    with pytest.raises(SlurmUnavailable):
        await dead.jobs()
    assert dead.calls["squeue"] == 2
    assert dead.failures["squeue"] == 2
    assert failures == [False, False]


async def test_command_timeout(slurm_cluster: LocalCluster) -> None:
    slow = SlurmCLI(env=slurm_cluster.env, command_timeout_s=0.001, retry_attempts=2, retry_wait_s=0.01)
    with pytest.raises(SlurmTimeout):
        await slow.partitions()
    assert slow.calls["sinfo"] == 2


def test_cli_implements_the_backend_protocol() -> None:
    backend: SlurmBackend = SlurmCLI(job_name_prefix="slurmless-")  # checked by mypy too
    assert isinstance(backend, SlurmBackend)


async def test_jobs_agree_with_squeue_json(
    cli: SlurmCLI, slurm_cluster: LocalCluster, tmp_path: Path, cleanup: list[int]
) -> None:
    """The delimited `squeue` that `jobs()` reads says what `squeue --json` says, field by field."""

    def script(name: str, body: str, *extra: str) -> str:
        lines = [f"--job-name=slurmless-{name}", f"--output={tmp_path}/%j.out", "--mem=64", *extra]
        return "#!/bin/bash\n" + "".join(f"#SBATCH {line}\n" for line in lines) + body + "\n"

    running = await cli.submit(
        script("agree-run", "sleep 300", "--time=90", "--time-min=30", "--comment=slurmless:i-1")
    )
    failed = await cli.submit(script("agree-fail", "exit 3"))
    pending = await cli.submit(script("agree-pend", "sleep 1", "--cpus-per-task=64"))
    cleanup.extend([running, failed, pending])
    await _wait_for_job(cli, running, lambda j: j.state is JobState.RUNNING)
    await _wait_for_job(cli, failed, lambda j: j.state is JobState.FAILED)
    await _wait_for_job(cli, pending, lambda j: j.state is JobState.PENDING and j.reason is not None)

    proc = await asyncio.create_subprocess_exec(
        "squeue",
        "--json",
        "--states=all",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **slurm_cluster.env},
    )
    out, _ = await proc.communicate()
    ids = {running, failed, pending}
    from_json = {j.job_id: j for j in parse_squeue(out) if j.job_id in ids}
    from_lines = {j.job_id: j for j in await cli.jobs() if j.job_id in ids}
    assert set(from_json) == set(from_lines) == ids
    fields = [
        "name",
        "state",
        "reason",
        "comment",
        "partition",
        "qos",
        "account",
        "user_name",
        "node_list",
        "node_count",
        "batch_host",
        "time_limit_min",
        "submit_time",
        "start_time",
        "end_time",
        "exit_code",
        "exit_signal",
    ]
    for job_id in ids:
        mine, theirs = from_lines[job_id], from_json[job_id]
        assert {f: getattr(mine, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    assert from_lines[running].instance_id == "i-1"
    # 90, or 30 when backfill started it with its --time-min: either way what the JSON says (above).
    assert from_lines[running].time_limit_min in (30, 90)
    assert (from_lines[failed].exit_code, from_lines[failed].exit_signal) == (3, None)
