"""A throwaway single-node Slurm cluster for tests and development.

`LocalCluster` runs its own munged, slurmctld and slurmd (no systemd) with every file -- config, munge
key and socket, state, spool, logs, pid files, fake GPU devices -- inside one directory, on free ports,
so several clusters can run side by side on one machine. The node declares `gpus` fake GPUs through
gres (character devices aliasing /dev/null), so jobs get `CUDA_VISIBLE_DEVICES` like on a real GPU node.

The methods are synchronous (every subprocess has a timeout); `astart`/`astop` run them in a thread for
async callers. Typical use::

    with LocalCluster() as cluster:
        subprocess.run(["sbatch", ...], env={**os.environ, **cluster.env}, timeout=30)

Persistent mode (for `slurmless dev-cluster up|down|status`): `LocalCluster(base_dir=d).start()` leaves
the daemons running after the calling process exits and records their pids in `<d>/localcluster.json`;
`LocalCluster.load(d)` reads that file back in another process, and `.stop()` kills exactly those
processes (checked against their recorded start times) and removes `d`.

`stop()` also kills the cluster's job steps: `slurmstepd` processes holding files open in the cluster
directory, every process below them, and any process whose environment names this cluster's
`SLURM_CONF` together with a `SLURM_JOB_ID` (job processes that escaped their step).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from slurm.localcluster_conf import NODE_NAME, PARTITIONS, LocalClusterSpec
from slurm.localcluster_files import (
    STATE_FILE,
    free_port,
    is_ours,
    new_tempdir,
    port_open,
    prepare_dir,
    write_files,
)
from slurm.localdaemons import Daemons, LocalClusterError, find_job_processes
from slurm.localdbd import AccountingSpec, start_accounting
from slurm.localprocs import Proc
from slurm.rootfs import HOST_VERSION, SlurmRuntime

__all__ = ["ClusterStatus", "LocalCluster", "LocalClusterError"]

_STATE_VERSION = 1
_DAEMONS = ("munged", "slurmctld", "slurmd")
_DBD_DAEMONS = ("mariadb", "slurmdbd")
_COMMAND_TIMEOUT_S = 15.0
_POLL_INTERVAL_S = 0.2
_START_ATTEMPTS = 3
_READY_BASE_STATES = frozenset({"IDLE", "MIXED", "ALLOCATED", "COMPLETING"})
_UNREADY_FLAGS = frozenset({"NOT_RESPONDING", "DOWN", "DRAIN", "FAIL", "INVALID_REG", "POWERED_DOWN"})


@dataclass(frozen=True)
class ClusterStatus:
    """What `LocalCluster.status()` saw: which daemons are alive and the node's Slurm state."""

    daemons_alive: dict[str, bool]
    node_state: str | None

    @property
    def running(self) -> bool:
        """All three daemons are alive and the node accepts jobs."""
        return all(self.daemons_alive.values()) and _node_ready(self.node_state)


class LocalCluster:
    """A single-node Slurm cluster (munged + slurmctld + slurmd) living in one directory.

    Args:
        base_dir: directory holding every file of the cluster; a fresh temp dir when None. If it exists
            it must be empty or a previous LocalCluster's directory (whose processes are then stopped).
        gpus: fake GPUs declared as `Gres=gpu:<gpus>`.
        cpus: CPUs declared for the node; default max(8, os.cpu_count()), more than a small machine has,
            so several one-CPU jobs run at once (`SlurmdParameters=config_overrides`).
        memory_mb: memory declared for the node (`RealMemory`), split evenly per CPU as `DefMemPerCPU`.
        backfill_interval_s: `bf_interval` of the backfill scheduler; short so tests see starts quickly.
        cluster_name: Slurm `ClusterName`; a random one by default.
        slurmd_timeout_s: `SlurmdTimeout`, how long a silent slurmd takes to be marked down.
        default_time_min: partitions' `DefaultTime` for jobs that give no `--time`.
        max_time_min: partitions' `MaxTime`.
        start_timeout_s: how long `start()` waits for the node to become idle.
        runtime: which Slurm runs the cluster (`SlurmRuntime.for_version("24.11")`); the host's by default.
        rest: also run slurmrestd (JWT auth, `AuthAltTypes=auth/jwt`) on a free port: `rest_url`, `token()`.
        preempt_grace_s: partition-priority preemption (`gpu` jobs cancel `preempt` jobs after this grace).
        preempt_qos: QOS preemption instead (`PreemptType=preempt/qos`; needs `accounting`): the QOS's
            `Preempt=` and `GraceTime=` (sacctmgr) say which jobs preempt which, and how soon.
        accounting: also run a private MariaDB and slurmdbd (`slurm.localdbd`) and enforce associations,
            QOS and limits; set accounts and QOS up with `sacctmgr()`. The host's Slurm only.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        gpus: int = 4,
        cpus: int | None = None,
        memory_mb: int = 8000,
        backfill_interval_s: int = 1,
        cluster_name: str | None = None,
        slurmd_timeout_s: int = 30,
        default_time_min: int = 60,
        max_time_min: int = 8 * 60,
        start_timeout_s: float = 60.0,
        runtime: SlurmRuntime | None = None,
        rest: bool = False,
        preempt_grace_s: int | None = None,
        preempt_qos: bool = False,
        accounting: bool = False,
    ) -> None:
        if gpus < 0:
            raise ValueError("gpus must be >= 0")
        if preempt_qos and (not accounting or preempt_grace_s is not None):
            raise ValueError("preempt_qos needs accounting=True and excludes preempt_grace_s")
        if accounting and runtime is not None and runtime.chrooted:
            raise ValueError(f"accounting runs with the host's Slurm only, not {runtime.describe()}")
        self._owns_tempdir = base_dir is None
        self.base_dir = Path(base_dir).resolve() if base_dir is not None else new_tempdir()
        self.gpus = gpus
        self.cpus = cpus if cpus is not None else max(8, os.cpu_count() or 1)
        self.memory_mb = memory_mb
        self.backfill_interval_s = backfill_interval_s
        self.cluster_name = cluster_name or f"sl{secrets.token_hex(4)}"
        self.slurmd_timeout_s = slurmd_timeout_s
        self.default_time_min = default_time_min
        self.max_time_min = max_time_min
        self.start_timeout_s = start_timeout_s
        self.runtime = runtime or SlurmRuntime()
        self.rest = rest
        self.preempt_grace_s = preempt_grace_s
        self.preempt_qos = preempt_qos
        self.accounting = accounting
        self.slurmdbd_port: int | None = None
        self.slurmrestd_port: int | None = None
        self.node_name = NODE_NAME
        self.partitions: tuple[str, ...] = PARTITIONS
        self.slurmctld_port: int | None = None
        self.slurmd_port: int | None = None
        self._daemons = Daemons(self.log_tails)

    # -- public surface -------------------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        """Path of this cluster's slurm.conf."""
        return self.base_dir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm client commands: `env={**os.environ, **cluster.env}`."""
        return {"SLURM_CONF": str(self.conf_path)}

    @property
    def slurm_version(self) -> str:
        """The Slurm release the cluster runs ("22.05", "24.11", "26.05")."""
        return self.runtime.version

    @property
    def command_prefix(self) -> list[str]:
        """argv to put before a Slurm client command run from the host (empty for the host's Slurm)."""
        return self.runtime.command_prefix

    @property
    def rest_url(self) -> str:
        """Base URL of the cluster's slurmrestd (`rest=True`)."""
        if not self.rest or self.slurmrestd_port is None:
            raise LocalClusterError("this cluster runs no slurmrestd (LocalCluster(rest=True))")
        return f"http://127.0.0.1:{self.slurmrestd_port}"

    def token(self, lifespan_s: int = 86400, user: str = "root") -> str:
        """A JWT for slurmrestd from `scontrol token` (needs `rest=True`)."""
        out = self.run(["scontrol", "token", f"username={user}", f"lifespan={lifespan_s}"])
        for line in out.splitlines():
            if line.startswith("SLURM_JWT="):
                return line.removeprefix("SLURM_JWT=").strip()
        raise LocalClusterError(f"scontrol token printed no SLURM_JWT: {out.strip()[:200]!r}")

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "log"

    @property
    def pids(self) -> dict[str, int]:
        """Pids of the daemons this object started or loaded."""
        return {name: proc.pid for name, proc in self._daemons.procs.items()}

    def start(self) -> None:
        """Start munged, slurmctld and slurmd and wait until the node is idle.

        Raises LocalClusterError (with log tails) if a daemon dies or the node is not idle within
        `start_timeout_s`; whatever was started is stopped again first.
        """
        if self._daemons.procs:
            raise LocalClusterError(f"cluster in {self.base_dir} already started")
        for attempt in range(_START_ATTEMPTS):
            try:
                self._start_once()
                return
            except BaseException as exc:
                # A temp dir nobody named is removed with the processes; a named one is kept for its logs.
                if self._owns_tempdir:
                    self.stop()
                else:
                    self._kill_everything()
                # The free ports were picked before the daemons bound them; another process may have won.
                port_lost = isinstance(exc, LocalClusterError) and "Address already in use" in str(exc)
                if not port_lost or attempt == _START_ATTEMPTS - 1:
                    raise

    def _start_once(self) -> None:
        prepare_dir(self.base_dir, self.node_name, _stop_previous)
        spec = LocalClusterSpec(
            base_dir=self.base_dir,
            cluster_name=self.cluster_name,
            hostname=socket.gethostname().split(".")[0],
            slurmctld_port=free_port(),
            slurmd_port=free_port(),
            gpus=self.gpus,
            cpus=self.cpus,
            memory_mb=self.memory_mb,
            backfill_interval_s=self.backfill_interval_s,
            slurmd_timeout_s=self.slurmd_timeout_s,
            default_time_min=self.default_time_min,
            max_time_min=self.max_time_min,
            slurm_version=self.runtime.version,
            jwt_key=self.base_dir / "jwt" / "jwt.key" if self.rest else None,
            preempt_grace_s=self.preempt_grace_s,
            preempt_qos=self.preempt_qos,
            slurmdbd_port=free_port() if self.accounting else None,
        )
        self.slurmctld_port, self.slurmd_port = spec.slurmctld_port, spec.slurmd_port
        self.slurmdbd_port = spec.slurmdbd_port
        write_files(spec)
        deadline = time.monotonic() + self.start_timeout_s
        self._start_munged(spec, deadline)
        if spec.slurmdbd_port is not None:
            dbd = AccountingSpec.new(spec.base_dir, spec.hostname, free_port(), spec.slurmdbd_port, spec.munge_socket)
            start_accounting(dbd, self._daemons, self._spawn, deadline)
            # slurmctld registers with slurmdbd under its ClusterName, which must exist by then.
            self.sacctmgr("add", "cluster", self.cluster_name)
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(spec.conf_path)])
        self._spawn("slurmd", self._slurmd_args())
        if self.rest:
            self._start_slurmrestd(deadline)
        self.wait_node_ready(timeout_s=max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Kill every process of the cluster (daemons, job steps, their jobs), then remove its directory."""
        self._kill_everything()
        if self.base_dir.exists() and is_ours(self.base_dir):
            shutil.rmtree(self.base_dir, ignore_errors=True)

    async def astart(self) -> None:
        """`start()` in a worker thread."""
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """`stop()` in a worker thread."""
        await asyncio.to_thread(self.stop)

    def status(self) -> ClusterStatus:
        """Which daemons are alive, and the node's state as Slurm reports it (None if unreachable)."""
        names = (
            *_DAEMONS,
            *(("slurmrestd",) if self.rest else ()),
            *(_DBD_DAEMONS if self.accounting else ()),
        )
        alive = {name: self._daemons.alive(name) for name in names}
        state = self.node_state() if alive["slurmctld"] else None
        return ClusterStatus(daemons_alive=alive, node_state=state)

    def node_state(self) -> str | None:
        """The node's `State=` from `scontrol show node` (e.g. `IDLE`, `MIXED`, `IDLE+NOT_RESPONDING`)."""
        try:
            out = self.run(["scontrol", "-o", "show", "node", self.node_name], timeout_s=5.0)
        except (LocalClusterError, subprocess.TimeoutExpired):
            return None
        for field in out.split():
            if field.startswith("State="):
                return field.removeprefix("State=")
        return None

    def wait_node_ready(self, timeout_s: float = 60.0) -> str:
        """Poll until the node accepts jobs (idle, mixed or allocated; not down/drained); return its state."""
        deadline = time.monotonic() + timeout_s
        state: str | None = None
        while time.monotonic() < deadline:
            self._daemons.check_alive()
            state = self.node_state()
            if _node_ready(state):
                return state or ""
            time.sleep(_POLL_INTERVAL_S)
        raise LocalClusterError(
            f"node {self.node_name} not ready after {timeout_s:.0f}s (last state {state!r})\n" + self.log_tails()
        )

    def wait_node_state(self, states: Iterable[str], timeout_s: float = 60.0) -> str:
        """Poll until the node's state has one of `states` as base or flag (e.g. `NOT_RESPONDING`, `DOWN`)."""
        wanted = set(states)
        deadline = time.monotonic() + timeout_s
        state: str | None = None
        while time.monotonic() < deadline:
            state = self.node_state()
            if state is not None and wanted & set(_state_parts(state)):
                return state
            time.sleep(_POLL_INTERVAL_S)
        raise LocalClusterError(f"node never reached {sorted(wanted)} within {timeout_s:.0f}s (last {state!r})")

    def stop_slurmd(self) -> None:
        """Kill slurmd with SIGKILL, like a crashed node daemon; running job steps are left alone."""
        self._daemons.kill("slurmd")
        self._write_state()

    def start_slurmd(self, *, wait_ready: bool = True, timeout_s: float = 60.0) -> None:
        """Start slurmd again after `stop_slurmd()`; by default wait until the node accepts jobs."""
        if self._daemons.alive("slurmd"):
            raise LocalClusterError("slurmd is already running")
        self._spawn("slurmd", self._slurmd_args())
        if wait_ready:
            self.wait_node_ready(timeout_s=timeout_s)

    def run(self, args: Sequence[str], *, timeout_s: float = _COMMAND_TIMEOUT_S) -> str:
        """Run a Slurm client command against this cluster and return its stdout; raise on failure."""
        proc = subprocess.run(
            self.runtime.argv(args),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            raise LocalClusterError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def sacctmgr(self, *args: str) -> str:
        """Run `sacctmgr --immediate <args>` against the cluster's slurmdbd (`accounting=True`).

        For example `sacctmgr("add", "account", "team-a")`, `sacctmgr("add", "qos", "small",
        "MaxJobsPerUser=1")`, `sacctmgr("add", "user", "root", "account=team-a", "qos=normal,small")`.
        """
        if not self.accounting:
            raise LocalClusterError("this cluster has no accounting (LocalCluster(accounting=True))")
        return self.run(["sacctmgr", "--immediate", *args])

    def log_tails(self, lines: int = 20) -> str:
        """The last `lines` lines of every log in the cluster's log directory, for error messages."""
        parts: list[str] = []
        for path in sorted(self.log_dir.glob("*")) if self.log_dir.is_dir() else []:
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    @classmethod
    def load(cls, base_dir: Path) -> LocalCluster:
        """Rebuild the handle of a cluster started (possibly by another process) in `base_dir`."""
        base_dir = Path(base_dir).resolve()
        try:
            state = json.loads((base_dir / STATE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise LocalClusterError(f"no local cluster state in {base_dir}: {exc}") from exc
        if state.get("version") != _STATE_VERSION:
            raise LocalClusterError(f"unknown local cluster state version in {base_dir}")
        cluster = cls(
            base_dir,
            gpus=int(state["gpus"]),
            cpus=int(state["cpus"]),
            memory_mb=int(state["memory_mb"]),
            cluster_name=str(state["cluster_name"]),
            runtime=SlurmRuntime(
                version=str(state.get("slurm_version", HOST_VERSION)),
                rootfs=Path(state["rootfs"]) if state.get("rootfs") else None,
            ),
        )
        cluster.slurmctld_port = state.get("slurmctld_port")
        cluster.slurmd_port = state.get("slurmd_port")
        cluster.slurmrestd_port = state.get("slurmrestd_port")
        cluster.rest = cluster.slurmrestd_port is not None
        cluster.slurmdbd_port = state.get("slurmdbd_port")
        cluster.accounting = cluster.slurmdbd_port is not None
        cluster._daemons.procs = {
            name: Proc(pid=int(p["pid"]), start_ticks=int(p["start_ticks"])) for name, p in state["processes"].items()
        }
        return cluster

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    # -- internals ------------------------------------------------------------------------------------

    def _slurmd_args(self) -> list[str]:
        return ["slurmd", "-D", "-N", self.node_name, "-f", str(self.conf_path)]

    def _start_munged(self, spec: LocalClusterSpec, deadline: float) -> None:
        mdir = spec.munge_socket.parent
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--socket={spec.munge_socket}",
                f"--key-file={mdir / 'munge.key'}",
                f"--pid-file={mdir / 'munged.pid'}",
                f"--log-file={spec.log_dir / 'munged.log'}",
                f"--seed-file={mdir / 'munged.seed'}",
            ],
        )
        self._daemons.wait_for(spec.munge_socket.exists, deadline, "munged did not create its socket")

    def _start_slurmrestd(self, deadline: float) -> None:
        """slurmrestd on a free port, accepting JWTs; it drops root (it refuses to serve as root)."""
        port = self.slurmrestd_port = free_port()
        # Only the controller's API: the accounting one needs slurmdbd. Numeric ids: 26.05 resolves names oddly.
        plugins = "openapi/v0.0.38" if self.runtime.version == "22.05" else "openapi/slurmctld"
        auth = ["-a", "rest_auth/jwt", "-s", plugins, "-u", "65534", "-g", "65534"]
        args = ["slurmrestd", "-f", str(self.conf_path), *auth]
        self._spawn("slurmrestd", [*args, f"127.0.0.1:{port}"], env={"SLURM_JWT": "daemon"})
        self._daemons.wait_for(lambda: port_open(port), deadline, "slurmrestd did not listen")

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """Start a daemon in this cluster's runtime and record it in the state file at once."""
        self._daemons.spawn(
            name,
            self.runtime.argv(args),
            cwd=self.base_dir,
            log_path=self.log_dir / f"{name}.out",
            env={**os.environ, **self.env, **(env or {})},
        )
        self._write_state()

    def _write_state(self) -> None:
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "cluster_name": self.cluster_name,
            "gpus": self.gpus,
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "slurmctld_port": self.slurmctld_port,
            "slurmd_port": self.slurmd_port,
            "slurmrestd_port": self.slurmrestd_port,
            "slurmdbd_port": self.slurmdbd_port,
            "slurm_version": self.runtime.version,
            "rootfs": str(self.runtime.rootfs) if self.runtime.rootfs else None,
            "processes": {n: {"pid": p.pid, "start_ticks": p.start_ticks} for n, p in self._daemons.procs.items()},
        }
        tmp = self.base_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.base_dir / STATE_FILE)

    def _kill_everything(self) -> None:
        """Kill job steps and their descendants, then the daemons; reap children we own."""
        self._daemons.stop_all(lambda: find_job_processes(self.base_dir, self.conf_path, self.runtime.rootfs))


# -- helpers ---------------------------------------------------------------------------------------------


def _stop_previous(base_dir: Path) -> None:
    """Stop the processes of a cluster that ran earlier in `base_dir` (it may have been another process's)."""
    try:
        previous = LocalCluster.load(base_dir)
    except LocalClusterError:
        return
    previous._kill_everything()


def _state_parts(state: str) -> list[str]:
    return state.rstrip("*~#!%$@^-").split("+")


def _node_ready(state: str | None) -> bool:
    if not state:
        return False
    parts = _state_parts(state)
    return parts[0] in _READY_BASE_STATES and not (_UNREADY_FLAGS & set(parts[1:]))
