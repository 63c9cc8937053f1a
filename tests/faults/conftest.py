"""One whole stack for the fault suite, shared by its tests (each test uses fresh models).

Starting Redis, Slurm, the launcher and the gateway takes ~10 s on a small machine, so the stack
is package-scoped; a test that hurts a process leaves a working replacement behind, and each test
registers models of its own so no state leaks from one fault into the next.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.results import ROWS, markdown
from tests.faults.stack import FaultStack

CLIENT_LIMITS = httpx.Limits(max_connections=1200, max_keepalive_connections=100)


@pytest.fixture(scope="package")
def fault_stack() -> Iterator[FaultStack]:
    base = Path(tempfile.mkdtemp(prefix="sl-faults-", dir="/tmp"))
    base.chmod(0o755)  # munged wants world-traversable parents of its socket
    stack = FaultStack.start(base)
    try:
        yield stack
    finally:
        stack.stop()
        if os.environ.get("SLURMLESS_FAULTS_KEEP"):
            print(f"\nfault suite logs kept in {base / 'state'}")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client for held and streamed requests: explicit timeouts, enough connections for the storm."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(150.0, connect=10.0), limits=CLIENT_LIMITS) as client:
        yield client


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.write_sep("=", "fault injection results")
        terminalreporter.write_line(markdown(ROWS))
