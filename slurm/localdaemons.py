"""The daemons of a local Slurm cluster: started, watched and stopped as plain processes (no systemd).

`Daemons` holds the processes one cluster started (or loaded from its state file), each identified by
pid and kernel start time so a reused pid is never signalled. `stop_all` stops them in the order the
daemons need (the node daemon before the controller, the job steps swept in between, the accounting
database and munged last, since the others talk to them while they shut down). `find_job_processes`
finds a cluster's job steps and job processes through /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from slurm.localprocs import Proc, all_pids, has_fd_under, is_job_process, read_stat, signal_all, start_ticks, wait_dead

__all__ = ["Daemons", "LocalClusterError", "find_job_processes"]

# Stopped first, in this order, before the job steps are swept: slurmd first so it starts no new steps.
_FIRST = ("slurmrestd", "slurmd", "slurmctld")
# Stopped last, one after the other: slurmctld and slurmdbd need the database and munged while they stop.
_LAST = ("slurmdbd", "mariadb", "munged")
_STOP_WAIT_S = 5.0


class LocalClusterError(RuntimeError):
    """The local cluster could not be started, queried or stopped; the message carries the log tails."""


class Daemons:
    """The processes of one local cluster, by daemon name.

    Args:
        log_tails: returns the cluster's log tails, appended to every error about a dead daemon.
    """

    def __init__(self, log_tails: Callable[[], str]) -> None:
        self.procs: dict[str, Proc] = {}
        self._popens: dict[str, subprocess.Popen[bytes]] = {}
        self._log_tails = log_tails

    def spawn(self, name: str, argv: list[str], *, cwd: Path, log_path: Path, env: dict[str, str]) -> None:
        """Start `argv` as daemon `name` in a new session, its output appended to `log_path`."""
        out = open(log_path, "ab")  # noqa: SIM115 -- handed to the child, closed below
        try:
            # A new session: the daemons survive the caller (persistent mode) and its terminal's signals.
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                env=env,
            )
        finally:
            out.close()
        ticks = start_ticks(popen.pid)
        if ticks is None:
            popen.wait(timeout=_STOP_WAIT_S)
            raise LocalClusterError(f"{name} exited at once\n" + self._log_tails())
        self._popens[name] = popen
        self.procs[name] = Proc(pid=popen.pid, start_ticks=ticks)

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].alive()

    def check_alive(self) -> None:
        """Raise LocalClusterError (with the log tails) if any daemon has died."""
        for name, proc in self.procs.items():
            if not proc.alive():
                raise LocalClusterError(f"{name} (pid {proc.pid}) died\n" + self._log_tails())

    def wait_for(self, ready: Callable[[], bool], deadline: float, what: str, interval_s: float = 0.05) -> None:
        """Poll `ready` until it holds; raise if a daemon dies or `deadline` (monotonic) passes first."""
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise LocalClusterError(f"{what} in time\n" + self._log_tails())
            time.sleep(interval_s)

    def kill(self, name: str) -> None:
        """SIGKILL one daemon, like a crash, and forget it."""
        proc = self.procs.pop(name, None)
        if proc is not None and proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            wait_dead([proc], timeout_s=_STOP_WAIT_S)
        popen = self._popens.pop(name, None)
        if popen is not None:
            popen.wait(timeout=_STOP_WAIT_S)

    def stop_all(self, job_processes: Callable[[], list[Proc]]) -> None:
        """Stop the daemons and sweep the job processes between them; reap the children we own."""
        daemons = [self.procs[n] for n in _FIRST if n in self.procs]
        _stop(daemons)
        killed: list[Proc] = [*self.procs.values()]
        for _ in range(5):
            victims = job_processes()
            if not victims:
                break
            # Freeze first so nothing forks between listing the tree and killing it.
            signal_all(victims, signal.SIGSTOP)
            victims = job_processes()
            signal_all(victims, signal.SIGKILL)
            wait_dead(victims, timeout_s=_STOP_WAIT_S)
            killed.extend(victims)
        for name in _LAST:
            if name in self.procs:
                _stop([self.procs[name]])
        wait_dead(list(self.procs.values()), timeout_s=_STOP_WAIT_S)
        for popen in self._popens.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=_STOP_WAIT_S)
        # Reap by pid whatever of this is our child (daemons loaded from a state file may be).
        # Never waitpid(-1): that would steal other children's exit statuses.
        for proc in killed:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(proc.pid, os.WNOHANG)
        self.procs.clear()
        self._popens.clear()


def _stop(procs: Sequence[Proc]) -> None:
    signal_all(procs, signal.SIGTERM)
    wait_dead(procs, timeout_s=_STOP_WAIT_S)
    signal_all(procs, signal.SIGKILL)


def find_job_processes(base_dir: Path, conf_path: Path, rootfs: Path | None) -> list[Proc]:
    """A cluster's slurmstepd processes and job processes, with all their descendants."""
    base = str(base_dir) + os.sep
    # A chrooted slurmstepd's files show through the root they were opened in.
    bases = [base] + ([str(rootfs) + base] if rootfs else [])
    conf_marker = f"SLURM_CONF={conf_path}".encode()
    me = os.getpid()
    children: dict[int, list[int]] = {}
    roots: set[int] = set()
    for pid in all_pids():
        if pid == me:
            continue
        info = read_stat(pid)
        if info is None:
            continue
        comm, state, ppid, _ = info
        if state == "Z":
            continue
        children.setdefault(ppid, []).append(pid)
        if (comm == "slurmstepd" and any(has_fd_under(pid, b) for b in bases)) or is_job_process(pid, conf_marker):
            roots.add(pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in found or pid == me:
            continue
        found.add(pid)
        stack.extend(children.get(pid, []))
    procs = []
    for pid in found:
        ticks = start_ticks(pid)
        if ticks is not None:
            procs.append(Proc(pid, ticks))
    return procs
