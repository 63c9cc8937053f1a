"""The (Slurm version, backend) matrix: the same launcher scenarios on every pair that exists.

Pairs: cli and rest on 22.05 (the host's Slurm), 24.11 and 26.05 (debootstrapped roots,
scripts/slurm-rootfs.sh), and pyslurm on 24.11 (pyslurm 24.11.0, built in that root). By default
(`make test`) one pair per backend runs; `SLURMLESS_MATRIX=full` runs every pair
(`make matrix`, which builds the roots first). A pair whose root or library is missing is skipped
with the command that provides it. The session ends with a table of what passed where.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
import redis.asyncio as aioredis

from slurm.localcluster import LocalCluster
from slurm.rootfs import HOST_MOUNT, RootfsMissing, SlurmRuntime
from slurm.settings import SlurmRestSettings
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import RunningLauncher, cancel_all, environ_with, local_settings
from tests.fixtures.slurm_cluster import require_slurm_binaries

VERSIONS = ("22.05", "24.11", "26.05")
BACKENDS = ("cli", "rest", "pyslurm")
PAIRS = (*((v, b) for v in VERSIONS for b in ("cli", "rest")), ("24.11", "pyslurm"))
REPO = Path(__file__).resolve().parents[2]
ROOTFS_PYTHON = "/opt/slurmless-venv/bin/python"
"""The root's Python with slurmless's dependencies and pyslurm (scripts/pyslurm-build.sh)."""
QUICK_PAIRS = frozenset({("22.05", "cli"), ("22.05", "rest"), ("24.11", "pyslurm")})
"""What `make test` runs: one pair per backend."""


def full_matrix() -> bool:
    return os.environ.get("SLURMLESS_MATRIX", "") == "full"


def pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}-{pair[1]}"


class Launcher(Protocol):
    async def close(self) -> None: ...


@dataclass
class MatrixEnv:
    """One test's settings on one pair, with a Redis client and the cluster it runs on.

    `settings` name the pair's backend; for pyslurm (which only the root's Python can import) the
    test itself observes through the CLI and only the launcher, run inside the root, uses pyslurm.
    """

    version: str
    backend: str
    cluster: LocalCluster
    settings: Settings
    client: aioredis.Redis

    def launch(self) -> Launcher:
        """Start a launcher with `settings` through the pair's backend."""
        if self.backend != "pyslurm":
            return RunningLauncher(self.settings)
        slurm = self.settings.slurm.model_copy(update={"backend": "pyslurm"})
        return RootfsLauncher(self.settings.model_copy(update={"slurm": slurm}), self.cluster)


class RootfsLauncher:
    """`python -m launcher` inside the cluster's root filesystem (its Python has pyslurm), as a process."""

    def __init__(self, settings: Settings, cluster: LocalCluster) -> None:
        env = environ_with(settings)
        for name in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"):
            env.pop(name, None)
        env["PYTHONPATH"] = f"{HOST_MOUNT}{REPO}"
        # Beside the job directory, not in it: the launcher wants that one private and creates it itself.
        jobs = Path(settings.launcher.job_output_dir)
        jobs.parent.mkdir(parents=True, exist_ok=True)
        self.log = jobs.parent / f"{jobs.name}-launcher.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cluster.runtime.argv([ROOTFS_PYTHON, "-m", "launcher"]),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)


def runtime_or_skip(version: str) -> SlurmRuntime:
    try:
        return SlurmRuntime.for_version(version)
    except RootfsMissing as exc:
        pytest.skip(str(exc))


def start_cluster(version: str, **kwargs: object) -> LocalCluster:
    require_slurm_binaries()
    runtime = runtime_or_skip(version)
    base = Path(f"/tmp/slurmless-matrix-{version}-{os.getpid()}-{len(_started)}")
    cluster = LocalCluster(base, runtime=runtime, rest=True, gpus=4, **kwargs)  # type: ignore[arg-type]
    cluster.start()
    _started.append(cluster)
    return cluster


_started: list[LocalCluster] = []


@pytest.fixture(scope="session")
def matrix_clusters() -> Iterator[dict[str, LocalCluster]]:
    """One cluster per version, started when a test first needs it, stopped at session end."""
    clusters: dict[str, LocalCluster] = {}
    try:
        yield clusters
    finally:
        for cluster in clusters.values():
            cluster.stop()


@pytest.fixture(params=PAIRS, ids=pair_id)
def pair(request: pytest.FixtureRequest) -> tuple[str, str]:
    value: tuple[str, str] = request.param
    if not full_matrix() and value not in QUICK_PAIRS:
        pytest.skip("full matrix only: SLURMLESS_MATRIX=full (make matrix)")
    if not full_matrix() and value == ("22.05", "cli") and request.node.get_closest_marker("long"):
        pytest.skip("full matrix only: tests/integration/test_launcher_*.py run it on 22.05 cli")
    if value[1] == "pyslurm":
        runtime = runtime_or_skip(value[0])
        assert runtime.rootfs is not None
        if not (runtime.rootfs / "opt" / "slurmless-venv" / ".ready").exists():
            pytest.skip(f"pyslurm not built in {runtime.rootfs}: run scripts/pyslurm-build.sh")
    return value


def pair_settings(cluster: LocalCluster, backend: str, redis_url: str, output_dir: Path) -> Settings:
    """Launcher settings for the engine simulator on `cluster` through `backend`."""
    base = local_settings(redis_url=redis_url, slurm_conf=cluster.conf_path, output_dir=output_dir)
    # Jobs of a chrooted Slurm run in its root: the engine simulator is the host's Python.
    engine = cluster.runtime.host_argv(base.launcher.engine_command)
    slurm = base.slurm.model_copy(
        update={
            "backend": backend,
            "command_prefix": cluster.command_prefix,
            "rest": SlurmRestSettings(url=cluster.rest_url, token=cluster.token()),
        }
    )
    return base.model_copy(
        update={"launcher": base.launcher.model_copy(update={"engine_command": engine}), "slurm": slurm}
    )


@pytest.fixture
async def menv(
    pair: tuple[str, str],
    matrix_clusters: dict[str, LocalCluster],
    redis_server: LocalRedis,
    tmp_path: Path,
) -> AsyncIterator[MatrixEnv]:
    version, backend = pair
    if version not in matrix_clusters:
        matrix_clusters[version] = start_cluster(version)
    cluster = matrix_clusters[version]
    # The test observes pyslurm's pair through the CLI (pyslurm imports only in the root).
    settings = pair_settings(cluster, "cli" if backend == "pyslurm" else backend, redis_server.url, tmp_path / "jobs")
    client: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        yield MatrixEnv(version, backend, cluster, settings, client)
    finally:
        await cancel_all(settings)
        await client.aclose()


# --- the table ------------------------------------------------------------------------------------

_results: dict[tuple[str, str, str], str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/matrix/" not in report.nodeid or "[" not in report.nodeid:
        return
    scenario = report.nodeid.split("::")[-1].split("[")[0].removeprefix("test_")
    version, _, backend = report.nodeid.split("[")[-1].rstrip("]").partition("-")
    key = (scenario, version, backend)
    if report.when == "call" or (report.when == "setup" and (report.skipped or report.failed)):
        if hasattr(report, "wasxfail"):
            outcome = "xfail"
        elif report.passed:
            outcome = "pass"
        elif report.skipped:
            outcome = "skip"
        else:
            outcome = "FAIL"
        _results[key] = outcome
    elif report.when == "teardown" and report.failed:
        _results[key] = "FAIL"


def matrix_table() -> str:
    """A Markdown table: one row per scenario, one column per pair."""
    scenarios = list(dict.fromkeys(s for s, _, _ in _results))
    header = "| scenario | " + " | ".join(f"{v} {b}" for v, b in PAIRS) + " |"
    rule = "|---|" + "---|" * len(PAIRS)
    rows = [header, rule]
    for s in scenarios:
        cells = [_results.get((s, v, b), "-") for v, b in PAIRS]
        rows.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _results:
        return
    terminalreporter.write_sep("=", "Slurm version x backend matrix")
    terminalreporter.write_line(matrix_table())
    out = os.environ.get("SLURMLESS_MATRIX_TABLE")
    if out:
        Path(out).write_text(matrix_table() + "\n")
