"""The submitting host's checks: private job directories, model paths that still resolve under the roots,
and the registration callback's host check (with an in-memory Slurm)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.jobhost import HostCheck
from slurm.confine import check_job_paths, ensure_private_dir, outside_roots
from slurm.errors import ScriptValidationError, SlurmUnavailable
from slurm.jobscript import JobSpec
from slurm.types import JobState, SlurmJob


def _one_line(exc: pytest.ExceptionInfo[Exception]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, message
    return message


def test_private_dir_is_created_0700(tmp_path: Path) -> None:
    path = ensure_private_dir(tmp_path / "a" / "jobs")
    assert (path.stat().st_mode & 0o777) == 0o700
    assert ensure_private_dir(path) == path  # idempotent


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o750, 0o702])
def test_dirs_open_to_others_are_refused_and_left_alone(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "jobs"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(ScriptValidationError) as exc:
        ensure_private_dir(path)
    assert "open to other users" in _one_line(exc)
    assert (path.stat().st_mode & 0o7777) == mode


def test_foreign_and_symlinked_dirs_are_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
        with pytest.raises(ScriptValidationError) as exc:
            ensure_private_dir(theirs)
        assert "belongs to uid 65534" in _one_line(exc)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(ScriptValidationError, match="symlink"):
        ensure_private_dir(link)
    with pytest.raises(ScriptValidationError, match="absolute"):
        ensure_private_dir(Path("relative/jobs"))


def test_paths_are_checked_resolved(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    (root / "out").symlink_to("/etc")
    assert outside_roots(str(root / "m"), [root]) is None
    assert "outside the model roots" in str(outside_roots("/etc/passwd", [root]))
    assert "resolves to /etc" in str(outside_roots(str(root / "out"), [root]))
    assert "no model roots" in str(outside_roots(str(root / "m"), []))

    def spec(source: str, **args: object) -> JobSpec:
        return JobSpec.parse(
            {
                "instance_id": "i1",
                "model_name": "m",
                "model_source": source,
                "time_limit_min": 60,
                "callback_url": "http://10.0.0.1:1/cb",
                "callback_token": "t" * 20,
                "engine_api_key": "k" * 20,
                "output_dir": str(tmp_path),
                "engine_args": args,
                "model_roots": (str(root),),
            }
        )

    check_job_paths(spec(str(root / "m")), [root])
    check_job_paths(spec("org/hub-model"), [])  # hub ids open no local file
    with pytest.raises(ScriptValidationError) as exc:
        check_job_paths(spec(str(root / "out")), [root])
    assert "model path refused" in _one_line(exc)
    with pytest.raises(ScriptValidationError, match="resolves to /etc"):
        check_job_paths(spec(str(root / "m"), **{"--chat-template": str(root / "out" / "passwd")}), [root])
    # Paths outside the roots cannot even be rendered into a job.
    with pytest.raises(ScriptValidationError, match="outside the model roots"):
        spec("/etc")


# --- the callback's host check -----------------------------------------------------------------------------


class MemorySlurm:
    """Just enough of `SlurmBackend` for `HostCheck`: one job on one node."""

    job_name_prefix = "slurmless-"

    def __init__(self, batch_host: str, addresses: tuple[str, ...]) -> None:
        self.batch_host = batch_host
        self.addresses = addresses
        self.sinfo_calls = 0
        self.down = False

    async def job(self, job_id: int) -> SlurmJob | None:
        if self.down:
            raise SlurmUnavailable("squeue", "controller down")
        if job_id != 42:
            return None
        return SlurmJob(job_id=42, name="slurmless-m-i1", state=JobState.RUNNING, batch_host=self.batch_host)

    async def node_addresses(self, node: str) -> tuple[str, ...]:
        self.sinfo_calls += 1
        return self.addresses


async def _names(name: str) -> frozenset[str]:
    return {
        "gpu01": frozenset({"10.0.0.11"}),
        "gpu01.cluster": frozenset({"10.0.0.11"}),
        "gpu02": frozenset({"10.0.0.12"}),
        "localhost": frozenset({"127.0.0.1"}),
    }.get(name, frozenset())


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("10.0.0.11", True),  # NodeAddr
        ("gpu01", True),  # the node name
        ("gpu01.cluster", True),  # resolves to the node's address
        ("10.0.0.12", False),  # another node
        ("gpu02", False),
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
        ("169.254.169.254", False),  # the cloud metadata service
        ("fe80::1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::ffff:127.0.0.1", False),
        ("no-such-host", False),
    ],
)
async def test_the_registered_host_must_be_the_jobs_batch_host(host: str, ok: bool) -> None:
    slurm = MemorySlurm("gpu01", ("gpu01", "10.0.0.11", "gpu01"))
    check = HostCheck(slurm, resolver=_names)  # type: ignore[arg-type]
    problem = await check.problem(42, host)
    assert (problem is None) is ok, problem


async def test_unknown_jobs_slurm_outages_and_the_dev_cluster() -> None:
    slurm = MemorySlurm("node0", ("node0", "127.0.0.1", "vm"))
    strict = HostCheck(slurm, resolver=_names)  # type: ignore[arg-type]
    assert "loopback" in str(await strict.problem(42, "127.0.0.1"))
    dev = HostCheck(slurm, allow_loopback=True, resolver=_names)  # type: ignore[arg-type]
    assert await dev.problem(42, "127.0.0.1") is None
    assert await dev.problem(42, "127.0.0.1") is None
    assert slurm.sinfo_calls == 1  # node addresses are cached
    assert "no running job 7" in str(await dev.problem(7, "127.0.0.1"))
    slurm.down = True
    assert "could not ask Slurm" in str(await dev.problem(42, "127.0.0.1"))
