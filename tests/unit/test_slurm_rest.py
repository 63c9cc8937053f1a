"""The rest backend's pure parts: #SBATCH options as job properties per OpenAPI version, and how
slurmrestd's answers map to the error tree (401, 5xx, garbage, unknown job), with an in-memory
httpx transport standing in for slurmrestd. The real slurmrestd runs in
tests/integration/test_slurm_rest.py and tests/matrix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from slurm.errors import JobNotFound, ScriptValidationError, SlurmCommandError, SlurmUnavailable
from slurm.rest_backend import SlurmRest
from slurm.rest_job import job_description, sbatch_options

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"

SCRIPT = "\n".join(
    [
        "#!/bin/bash",
        "#SBATCH --job-name=slurmless-m-i1",
        "#SBATCH --comment=slurmless:i1",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16G",
        "#SBATCH --time=60",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --output=/tmp/out/slurmless-m-i1-%j.out",
        "#SBATCH --chdir=/tmp/out",
        "#SBATCH --export=NONE",
        "#SBATCH --no-requeue",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --time-min=10",
        "#SBATCH --partition=gpu",
        "set -u",
        "#SBATCH --qos=ignored-after-the-first-command",
        "echo hi",
    ]
)


def test_options_stop_at_the_first_command() -> None:
    options = sbatch_options(SCRIPT)
    assert options["job-name"] == "slurmless-m-i1" and options["no-requeue"] is None
    assert "qos" not in options


def test_v0_0_41_description() -> None:
    job = job_description(SCRIPT, "v0.0.41")
    assert job["name"] == "slurmless-m-i1" and job["comment"] == "slurmless:i1"
    assert job["nodes"] == "1" and job["tasks_per_node"] == 1 and job["cpus_per_task"] == 4
    assert job["memory_per_node"] == {"set": True, "infinite": False, "number": 16384}
    assert job["time_limit"]["number"] == 60 and job["time_minimum"]["number"] == 10
    assert job["kill_warning_signal"] == "USR1" and job["kill_warning_delay"]["number"] == 120
    assert job["kill_warning_flags"] == ["BATCH_JOB"]
    assert job["tres_per_node"] == "gres/gpu:2" and job["requeue"] is False
    assert job["current_working_directory"] == "/tmp/out" and job["partition"] == "gpu"
    assert job["script"] == SCRIPT and any(e.startswith("PATH=") for e in job["environment"])


def test_v0_0_38_description() -> None:
    job = job_description(SCRIPT, "v0.0.38", {"LANG": "C.UTF-8"})
    assert job["nodes"] == [1, 1] and job["memory_per_node"] == 16384 and job["time_limit"] == 60
    # 22.05's parser refuses "B:": the signal travels as a number.
    assert job["signal"] == "10@120" and job["gres"] == "gpu:2"
    assert job["environment"]["LANG"] == "C.UTF-8" and "script" not in job


@pytest.mark.parametrize(
    "line",
    ["#SBATCH --exclusive", "#SBATCH --gres=shard:2", "#SBATCH --mem=lots", "#SBATCH -p gpu", "#SBATCH --export=ALL"],
)
def test_options_without_an_equivalent_are_refused(line: str) -> None:
    with pytest.raises(ScriptValidationError):
        job_description(f"#!/bin/bash\n{line}\necho\n", "v0.0.41")


def _backend(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> SlurmRest:
    return SlurmRest(
        "http://slurmrestd.invalid",
        token="t",
        api_version="v0.0.41",
        retry_attempts=2,
        retry_wait_s=0.01,
        transport=httpx.MockTransport(handler),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_jobs_from_a_recorded_answer_keep_only_ours() -> None:
    body = (DATA / "24.11" / "rest_v0.0.41_jobs.json").read_bytes()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    backend = _backend(handler, job_name_prefix="slurmless-running")
    jobs = await backend.jobs()
    assert [j.name for j in jobs] == ["slurmless-running-r1"]
    assert seen[0].url.path == "/slurm/v0.0.41/jobs/"
    assert seen[0].headers["X-SLURM-USER-TOKEN"] == "t" and seen[0].headers["X-SLURM-USER-NAME"] == "root"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, b'{"errors": [{"error": "Authentication failure"}]}'),
        (500, b"<html>Internal Server Error</html>"),
        (502, b""),
        (200, b"not json at all"),
        (200, b'{"jobs": "not a list"}'),
        (200, b'{"jobs": [], "errors": [{"error": "Unable to contact slurm controller (connect failure)"}]}'),
    ],
)
async def test_unusable_answers_are_slurm_unavailable_and_retried(status: int, body: bytes) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status, content=body)

    backend = _backend(handler)
    with pytest.raises(SlurmUnavailable, match="Slurm unavailable"):
        await backend.jobs()
    assert calls == 2  # retried once (retry_attempts=2), never an empty list


async def test_unknown_job_and_refused_job_are_told_apart() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(500, json={"errors": [{"error": "Invalid job id specified"}]})
        return httpx.Response(
            500, json={"errors": [{"error": "Requested node configuration is not available", "error_number": 2014}]}
        )

    backend = _backend(handler)
    await backend.cancel(7)  # already gone: not an error
    with pytest.raises(JobNotFound):
        await backend.signal(7, "USR1")
    with pytest.raises(SlurmCommandError, match="node configuration") as info:
        await backend.submit(SCRIPT)
    assert not isinstance(info.value, SlurmUnavailable)


async def test_a_submission_is_retried_only_when_never_sent() -> None:
    calls = 0

    def refused(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(SlurmUnavailable):
        await _backend(refused).submit(SCRIPT)
    assert calls == 2
    calls = 0

    def lost(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadTimeout("no answer", request=request)

    with pytest.raises(SlurmUnavailable):
        await _backend(lost).submit(SCRIPT)
    assert calls == 1


async def test_token_file_is_read_again_after_a_401(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("SLURM_JWT=old\n")
    tokens: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tokens.append(request.headers["X-SLURM-USER-TOKEN"])
        if request.headers["X-SLURM-USER-TOKEN"] == "old":
            token.write_text("SLURM_JWT=new\n")  # renewed meanwhile, as a cron job would
            return httpx.Response(401, content=b"Authentication failure")
        return httpx.Response(200, json={"jobs": []})

    backend = SlurmRest(
        "http://x.invalid",
        token_file=token,
        api_version="v0.0.41",
        retry_wait_s=0.01,
        transport=httpx.MockTransport(handler),
    )
    assert await backend.jobs() == []
    assert tokens == ["old", "new"]
