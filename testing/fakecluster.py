"""Slurm and engines on a fake clock, for launcher tests whose time real Slurm cannot follow.

`FakeCluster` pairs an in-memory `FakeSlurm` with engines answered by an `httpx.MockTransport`: the
test starts a job (`start`), which registers with the launcher as the job script would, and its engine
answers ready from the instant the test says. Redis stays real.
"""

from __future__ import annotations

import math
import re

import httpx

from launcher.controller import Launcher
from launcher.health import Prober
from slurm.fake import FakeSlurm
from slurm.types import JobState

HOST = "10.0.0.7"
"""The node's address engines register with (`FakeSlurm` lists it among the node's names)."""


def callback_token(script: str) -> str:
    """The callback token a rendered job script carries."""
    found = re.search(r"SLURMLESS_CALLBACK_TOKEN=(\S+)", script)
    assert found is not None, "no callback token in the job script"
    return found.group(1).strip("'\"")


class FakeCluster:
    """A `FakeSlurm` whose clock the test moves, and the engines of its jobs."""

    def __init__(self, *, now_s: float, job_name_prefix: str, served_name: str | None = None) -> None:
        self.slurm = FakeSlurm(now_s=now_s, job_name_prefix=job_name_prefix)
        self.slurm.addresses[self.slurm.node_names[0]] = (HOST,)
        self.served_name = served_name
        self.ports: dict[str, int] = {}
        self.ready_at: dict[int, float] = {}
        self.served: dict[int, str] = {}

    def clock(self, at_s: float) -> None:
        """Move the clock to `at_s` (jobs past their walltime end)."""
        self.slurm.advance(at_s - self.slurm.now_s)

    def prober(self) -> Prober:
        """A prober that reaches this cluster's engines."""
        return Prober(timeout_s=2.0, transport=httpx.MockTransport(self._engine))

    def _engine(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port or 0
        if request.url.path == "/metrics":
            return httpx.Response(200, text="")
        if self.slurm.now_s < self.ready_at.get(port, math.inf):
            return httpx.Response(503)
        if request.url.path == "/health":
            return httpx.Response(200)
        return httpx.Response(200, json={"data": [{"id": self.served[port]}]})

    async def start(self, launcher: Launcher, iid: str, job_id: int, served_name: str, *, ready_at_s: float) -> None:
        """Job `job_id` of instance `iid` runs from now (unless it already does) and registers; its engine
        serves from `ready_at_s`."""
        if self.slurm.peek(job_id).state is not JobState.RUNNING:
            self.slurm.start(job_id)
        port = self.ports.setdefault(iid, 10_000 + len(self.ports))
        self.ready_at[port] = ready_at_s
        self.served[port] = served_name
        token = callback_token(self.slurm.scripts[job_id])
        refused = await launcher.on_register(
            iid, job_id=job_id, host=HOST, port=port, token=token, now_s=self.slurm.now_s
        )
        assert refused is None, refused
