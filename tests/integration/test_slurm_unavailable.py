"""A Slurm that does not answer is "Slurm unavailable", never "every job is gone": whatever the backend
(a slurmrestd answering 401, 5xx or garbage; a pyslurm call that raises; a controller that times out),
a launcher tick keeps every instance as it was and says why in the events. And a backend that is not
installed stops `python -m launcher` at start with one line.

The backends run against in-memory stand-ins (httpx's MockTransport, a pyslurm-shaped module,
FakeSlurm) and the launcher against a real Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.settings import LauncherSettings
from slurm.backend import SlurmBackend
from slurm.errors import SlurmTimeout
from slurm.fake import FakeSlurm
from slurm.pyslurm_backend import SlurmPyslurm
from tests.unit.test_slurm_pyslurm import _module, _RPCError
from tests.unit.test_slurm_rest import _backend
from warmpool.events import EventLog
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.routing import Routing
from warmpool.specs import ModelSpec, Policy, Resources

NOW = 1_800_000_000.0


def rest(status: int, body: bytes) -> SlurmBackend:
    return _backend(lambda request: httpx.Response(status, content=body))


def timed_out() -> SlurmBackend:
    fake = FakeSlurm(now_s=NOW)
    fake.unavailable = SlurmTimeout("squeue", 20.0)
    return fake


BACKENDS: dict[str, tuple[Callable[[], SlurmBackend], str]] = {
    "rest 401": (lambda: rest(401, b'{"errors": [{"error": "Authentication failure"}]}'), "Authentication failure"),
    "rest 503": (lambda: rest(503, b"<html>Service Unavailable</html>"), "HTTP 503"),
    "rest garbage": (lambda: rest(200, b"\x00\x01 not json"), "not a JSON object"),
    "pyslurm raises": (
        lambda: SlurmPyslurm(
            module=_module(_RPCError("Unable to contact slurm controller (connect failure)")), retry_wait_s=0.01
        ),
        "Unable to contact slurm controller",
    ),
    "controller times out": (timed_out, "did not finish within 20.0 s"),
}


@pytest.mark.parametrize("name", list(BACKENDS))
async def test_an_unanswering_slurm_loses_no_instance(redis_client: aioredis.Redis, name: str) -> None:
    make, message = BACKENDS[name]
    keys = Keys("unavail:")
    spec = ModelSpec(
        name="m", source="org/m", resources=Resources(gpus=1, cpus=1, mem_mb=256), policy=Policy(min_replicas=1)
    )
    await ModelStore(redis_client, keys).put(spec)
    ready = InstanceRecord(
        id="i1",
        model="m",
        state=InstanceState.READY,
        job_id="27",
        host="127.0.0.1",
        port=9,
        created_s=NOW - 600,
        state_since_s=NOW - 300,
        end_time_s=NOW + 3000,
    )
    await InstanceStore(redis_client, keys).put(ready)
    await Routing(redis_client, keys).activate("m", "i1", cap=8)
    launcher = Launcher(redis_client, make(), LauncherSettings(), callback_url="http://127.0.0.1:9", keys=keys)
    try:
        report = await launcher.tick(now_s=NOW)
    finally:
        await launcher.aclose()
    assert report.slurm_error is not None and message in report.slurm_error, report.slurm_error
    assert "Slurm unavailable" in report.slurm_error or "did not finish" in report.slurm_error
    assert not report.failed and not report.gone and not report.submitted, report
    kept = await InstanceStore(redis_client, keys).get("i1")
    assert kept is not None and kept.state is InstanceState.READY
    assert "i1" in await Routing(redis_client, keys).inflight("m")
    [event] = await EventLog(redis_client, keys).recent(kind="slurm.unavailable")
    assert message in str(event.detail["error"])


def test_a_backend_that_is_not_installed_stops_the_launcher_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURMLESS_")}
    env["SLURMLESS_SLURM"] = '{"backend": "pyslurm"}'
    done = subprocess.run(
        [sys.executable, "-m", "launcher"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("launcher: "), done.stderr
    assert "pyslurm is not installed" in done.stderr
