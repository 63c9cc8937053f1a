"""Hardened jobs on the real local cluster: what a job sees, where it runs, which paths it opens, who may register it.

Rendered scripts are submitted with `SlurmCLI` and call back to a `CallbackReceiver`; the launcher's
checks run against real Redis and the same cluster.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.jobs import sha256_hex
from slurm.cli_backend import SlurmCLI
from slurm.jobscript import JobSpec, render_job_script
from slurm.localcluster import LocalCluster
from slurm.types import JobState, SlurmJob
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import cancel_all, local_settings, slurm_for
from tests.fixtures.callback_receiver import Callback, CallbackReceiver
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.redisio import awaited, text
from warmpool.specs import ModelSpec, Resources

pytestmark = pytest.mark.slurm

TOKEN = "cb-" + secrets.token_urlsafe(24)
API_KEY = "key-" + secrets.token_urlsafe(24)
WAIT_S = 90.0
REDIS_SECRET = "hunter2-" + secrets.token_hex(8)

# The "engine": records its argv, environment and where `json` came from, then exits.
RECORDER = textwrap.dedent(
    """
    import json, os, sys
    with open(os.environ["RECORD_TO"], "w") as f:
        json.dump({"argv": sys.argv[1:], "env": dict(os.environ), "json": json.__file__}, f)
    """
)
# Planted in the job directory: runs if anything in the job puts the working directory on sys.path.
PLANTED = "open({marker!r}, 'w').write('ran')\n"


@pytest.fixture
def cli(slurm_cluster: LocalCluster) -> SlurmCLI:
    return SlurmCLI(env=slurm_cluster.env, command_timeout_s=30.0, retry_attempts=2, retry_wait_s=0.2)


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver(TOKEN) as r:
        yield r


@pytest.fixture
async def cleanup(cli: SlurmCLI) -> AsyncIterator[list[int]]:
    ids: list[int] = []
    yield ids
    for job_id in ids:
        await cli.cancel(job_id)


def _spec(job_dir: Path, receiver: CallbackReceiver, probe_dir: Path, **overrides: object) -> JobSpec:
    values: dict[str, object] = {
        "instance_id": secrets.token_hex(4),
        "model_name": "hardened",
        "model_source": "org/sim-model",
        "gpus_per_node": 1,
        "cpus_per_task": 1,
        "mem_mb": 400,
        "time_limit_min": 10,
        "signal_lead_s": 60,
        "settle_s": 1,
        "kill_grace_s": 5,
        "callback_url": receiver.url,
        "callback_token": TOKEN,
        "callback_attempts": 2,
        "engine_api_key": API_KEY,
        "output_dir": str(job_dir),
        # `-m`: python would put the working directory first on sys.path, were it not for PYTHONSAFEPATH.
        "engine_command": [sys.executable, "-m", "slurmless_probe"],
        "engine_env": {"PYTHONPATH": str(probe_dir), "RECORD_TO": str(probe_dir / "record.json")},
        "helper_python": sys.executable,
    }
    values.update(overrides)
    return JobSpec.parse(values)


def _probe(tmp_path: Path) -> Path:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    (probe_dir / "slurmless_probe.py").write_text(RECORDER)
    return probe_dir


def _plant(job_dir: Path, markers: Path) -> None:
    """Modules another user could drop into a shared job directory."""
    for module in ("json", "socket", "slurmless_probe"):
        (job_dir / f"{module}.py").write_text(PLANTED.format(marker=str(markers / f"planted-{module}")))


async def _calls(receiver: CallbackReceiver, predicate: Callable[[list[Callback]], bool]) -> list[Callback]:
    calls = await asyncio.to_thread(receiver.wait_for, predicate, WAIT_S)
    assert predicate(calls), f"callbacks so far: {calls}"
    return calls


async def _finished(cli: SlurmCLI, job_id: int) -> SlurmJob:
    for _ in range(int(WAIT_S * 2)):
        job = await cli.job(job_id)
        if job is not None and job.state.is_finished:
            return job
        await asyncio.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def _log(job_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in job_dir.glob("*.out"))


async def _run_recorded(
    cli: SlurmCLI, tmp_path: Path, receiver: CallbackReceiver, cleanup: list[int]
) -> tuple[list[Callback], dict[str, Any], Path, int]:
    """Run one job whose engine records what it saw; (callbacks, record, job dir, job id)."""
    job_dir = tmp_path / "jobs"
    job_dir.mkdir(mode=0o700, exist_ok=True)
    probe_dir = _probe(tmp_path)
    job_id = await cli.submit(render_job_script(_spec(job_dir, receiver, probe_dir)))
    cleanup.append(job_id)
    calls = await _calls(receiver, lambda c: any(x.action == "deregister" for x in c))
    done = await _finished(cli, job_id)
    assert done.state is JobState.COMPLETED, _log(job_dir)
    record: dict[str, Any] = json.loads((probe_dir / "record.json").read_text())
    return calls, record, job_dir, job_id


async def test_job_gets_none_of_the_launchers_environment(
    cli: SlurmCLI,
    tmp_path: Path,
    receiver: CallbackReceiver,
    cleanup: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a launcher's environment may hold: sbatch runs with it.
    monkeypatch.setenv("SLURMLESS_REDIS__URL", f"redis://:{REDIS_SECRET}@10.0.0.1:6379/0")
    monkeypatch.setenv("SLURMLESS_ADMIN_TOKEN", REDIS_SECRET)
    monkeypatch.setenv("LAUNCHER_ONLY_SETTING", REDIS_SECRET)
    _, record, _, _ = await _run_recorded(cli, tmp_path, receiver, cleanup)
    env = record["env"]
    assert "SLURMLESS_REDIS__URL" not in env and "SLURMLESS_ADMIN_TOKEN" not in env
    assert "LAUNCHER_ONLY_SETTING" not in env
    assert not any(REDIS_SECRET in value for value in env.values())
    assert env["PYTHONSAFEPATH"] == "1"


async def test_the_engine_binds_the_nodes_own_address(
    cli: SlurmCLI, tmp_path: Path, receiver: CallbackReceiver, cleanup: list[int]
) -> None:
    calls, record, _, job_id = await _run_recorded(cli, tmp_path, receiver, cleanup)
    # The engine listens on the address it registered: the node's own (the local node's NodeAddr), not 0.0.0.0.
    register = next(c for c in calls if c.action == "register")
    assert register.body["job_id"] == str(job_id)
    assert register.body["host"] == "127.0.0.1"
    assert record["argv"][-4:-2] == ["--host", "127.0.0.1"]


async def test_modules_planted_in_the_job_directory_never_run(
    cli: SlurmCLI, tmp_path: Path, receiver: CallbackReceiver, cleanup: list[int]
) -> None:
    job_dir = tmp_path / "jobs"
    job_dir.mkdir(mode=0o700)
    markers = tmp_path / "markers"
    markers.mkdir()
    _plant(job_dir, markers)
    _, record, _, _ = await _run_recorded(cli, tmp_path, receiver, cleanup)
    assert list(markers.iterdir()) == [], "a module planted in the job directory ran"
    assert not record["json"].startswith(str(job_dir))


async def test_job_refuses_a_directory_others_can_write(
    cli: SlurmCLI, tmp_path: Path, receiver: CallbackReceiver, cleanup: list[int]
) -> None:
    job_dir = tmp_path / "open"
    job_dir.mkdir()
    job_dir.chmod(0o777)
    probe_dir = _probe(tmp_path)
    job_id = await cli.submit(render_job_script(_spec(job_dir, receiver, probe_dir)))
    cleanup.append(job_id)

    calls = await _calls(receiver, lambda c: any(x.action == "deregister" for x in c))
    done = await _finished(cli, job_id)
    assert [c.action for c in calls] == ["deregister"]
    assert calls[0].body["reason"] == "refused:job-directory-not-private"
    assert done.exit_code == 78
    assert not (probe_dir / "record.json").exists(), "the engine started"
    assert "must belong to uid" in _log(job_dir)


async def test_job_refuses_a_model_directory_swapped_for_a_symlink(
    cli: SlurmCLI, tmp_path: Path, receiver: CallbackReceiver, cleanup: list[int]
) -> None:
    roots = tmp_path / "models"
    (roots / "mine").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    job_dir = tmp_path / "jobs"
    job_dir.mkdir(mode=0o700)
    probe_dir = _probe(tmp_path)
    script = render_job_script(
        _spec(job_dir, receiver, probe_dir, model_source=str(roots / "mine"), model_roots=(str(roots),))
    )
    # Between submission and start, the directory becomes a link out of the roots.
    (roots / "mine").rmdir()
    (roots / "mine").symlink_to(outside)
    job_id = await cli.submit(script)
    cleanup.append(job_id)

    calls = await _calls(receiver, lambda c: any(x.action == "deregister" for x in c))
    done = await _finished(cli, job_id)
    assert [c.action for c in calls] == ["deregister"]
    assert calls[0].body["reason"] == "refused:path-outside-model-roots"
    assert done.exit_code == 78
    assert not (probe_dir / "record.json").exists(), "the engine started"
    assert f"resolves to {outside}" in _log(job_dir)


# --- the launcher's side: re-check before sbatch, and the registration callback -------------------------


@pytest.fixture
async def client(redis_server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


def _settings(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, job_dir: Path, *, allow_loopback_engines: bool = True
) -> Settings:
    return local_settings(
        redis_url=redis_server.url,
        slurm_conf=slurm_cluster.conf_path,
        output_dir=job_dir,
        allow_loopback_engines=allow_loopback_engines,
    )


async def test_launcher_refuses_a_model_path_swapped_after_registration(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    roots = tmp_path / "models"
    (roots / "mine").mkdir(parents=True)
    settings = _settings(slurm_cluster, redis_server, tmp_path / "jobs")
    keys = Keys(settings.redis.key_prefix)
    spec = ModelSpec(name="swapped", source=str(roots / "mine"), resources=Resources(gpus=1, cpus=1, mem_mb=256))
    await ModelStore(client, keys).put(spec)  # registered while it was a plain directory under the root
    (roots / "mine").rmdir()
    (roots / "mine").symlink_to("/etc")
    launcher = Launcher(
        client,
        slurm_for(settings),
        settings.launcher,
        callback_url="http://127.0.0.1:9",
        keys=keys,
        model_roots=[roots],
    )
    try:
        assert await launcher.on_demand("swapped", now_s=1000.0) is None
        broken = text(await awaited(client.hget(keys.model_stats("swapped"), "broken_reason")))
        assert "resolves to /etc, outside the model roots" in broken, broken
        assert "\n" not in broken
        assert await slurm_for(settings).jobs() == [], "a job was submitted"
        assert await InstanceStore(client, keys).all() == []
    finally:
        await launcher.aclose()
        await cancel_all(settings)


async def test_launcher_refuses_a_job_directory_others_can_write(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    job_dir = tmp_path / "shared-jobs"
    job_dir.mkdir()
    job_dir.chmod(0o1777)  # like /tmp
    settings = _settings(slurm_cluster, redis_server, job_dir)
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(ModelSpec(name="m", source="org/sim", resources=Resources(gpus=1, cpus=1)))
    launcher = Launcher(client, slurm_for(settings), settings.launcher, callback_url="http://127.0.0.1:9", keys=keys)
    try:
        assert await launcher.on_demand("m", now_s=1000.0) is None
        broken = text(await awaited(client.hget(keys.model_stats("m"), "broken_reason")))
        assert "has mode 1777, open to other users" in broken, broken
        assert await slurm_for(settings).jobs() == []
    finally:
        await launcher.aclose()
        await cancel_all(settings)


async def test_registration_needs_the_job_id_and_the_jobs_own_batch_host(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = _settings(slurm_cluster, redis_server, tmp_path / "jobs", allow_loopback_engines=False)
    keys = Keys(settings.redis.key_prefix)
    slurm = slurm_for(settings)
    token = secrets.token_urlsafe(32)
    instances = InstanceStore(client, keys)
    held: list[int] = []

    async def fresh(iid: str) -> int:
        """A real running job of ours (a sleeper) and an instance record owning it, with a token we know."""
        job_id = await slurm.submit(
            "#!/bin/bash\n"
            f"#SBATCH --job-name={settings.launcher.job_name_prefix}holder\n#SBATCH --time=5\n#SBATCH --mem=100M\n"
            f"#SBATCH --output={tmp_path}/holder-%j.out\nsleep 300\n"
        )
        held.append(job_id)
        for _ in range(120):
            job = await slurm.job(job_id)
            if job is not None and job.state is JobState.RUNNING:
                break
            await asyncio.sleep(0.5)
        await instances.put(
            InstanceRecord(
                id=iid,
                model="m",
                state=InstanceState.PENDING,
                api_key="k" * 20,
                token_sha256=sha256_hex(token),
                created_s=1000.0,
                state_since_s=1000.0,
                job_id=str(job_id),
            )
        )
        return job_id

    await ModelStore(client, keys).put(ModelSpec(name="m", source="org/sim", resources=Resources(gpus=1, cpus=1)))
    launcher = Launcher(client, slurm, settings.launcher, callback_url="http://127.0.0.1:9", keys=keys)
    dev = _settings(slurm_cluster, redis_server, tmp_path / "jobs", allow_loopback_engines=True)
    launcher_dev = Launcher(client, slurm, dev.launcher, callback_url="http://127.0.0.1:9", keys=keys)
    try:

        async def register(iid: str, jid: int | None, host: str, tok: str = token) -> int:
            refusal = await launcher.on_register(iid, job_id=jid, host=host, port=8000, token=tok, now_s=1001.0)
            return 200 if refusal is None else refusal.status

        job_id = await fresh("i1")
        assert await register("i1", job_id, "127.0.0.1", tok="wrong-" + token) == 401
        assert await register("i1", None, "127.0.0.1") == 400
        assert await register("i1", job_id + 1000, "127.0.0.1") == 403
        assert (await instances.get("i1")).state is InstanceState.PENDING  # type: ignore[union-attr]
        # Loopback and link-local are refused by default, and fail the instance with the reason.
        assert await register("i1", job_id, "127.0.0.1") == 403
        failed = await instances.get("i1")
        assert failed is not None and failed.state is InstanceState.FAILED
        assert "loopback or link-local" in (failed.reason or "")
        assert await register("i2", await fresh("i2"), "169.254.1.1") == 403
        # A routable address that is not the job's batch host (its NodeAddr is 127.0.0.1 here).
        assert await register("i3", await fresh("i3"), "10.11.12.13") == 403
        third = await instances.get("i3")
        assert third is not None and "is not job" in (third.reason or "") and "batch host" in (third.reason or "")
        # With the dev-cluster setting on, the job's own node address is accepted.
        job_id = await fresh("i4")
        refusal = await launcher_dev.on_register("i4", job_id=job_id, host="127.0.0.1", port=8000, token=token, now_s=1)
        assert refusal is None
        accepted = await instances.get("i4")
        assert accepted is not None and accepted.state is InstanceState.LOADING and accepted.host == "127.0.0.1"
    finally:
        await launcher.aclose()
        await launcher_dev.aclose()
        for held_id in held:
            await slurm.cancel(held_id)
