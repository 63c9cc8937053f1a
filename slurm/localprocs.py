"""Processes of the local cluster, seen through Linux's /proc: identity across pid reuse, trees, signals."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Proc", "all_pids", "has_fd_under", "is_job_process", "read_stat", "signal_all", "start_ticks", "wait_dead"]


@dataclass(frozen=True)
class Proc:
    """A process we started, identified by pid and kernel start time (guards against pid reuse)."""

    pid: int
    start_ticks: int

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.start_ticks


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def read_stat(pid: int) -> tuple[str, str, int, int] | None:
    """(comm, state, ppid, start_ticks) from /proc/<pid>/stat, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: it runs to the last ')'.
    lpar, rpar = raw.index("("), raw.rindex(")")
    comm = raw[lpar + 1 : rpar]
    rest = raw[rpar + 2 :].split()
    return comm, rest[0], int(rest[1]), int(rest[19])


def start_ticks(pid: int) -> int | None:
    """Kernel start time of a live (non-zombie) process, or None."""
    info = read_stat(pid)
    if info is None or info[1] in ("Z", "X"):
        return None
    return info[3]


def has_fd_under(pid: int, prefix: str) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{fd}").startswith(prefix):
                return True
    return False


def is_job_process(pid: int, conf_marker: bytes) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return conf_marker in env and any(v.startswith(b"SLURM_JOB_ID=") for v in env)


def signal_all(procs: Iterable[Proc], sig: signal.Signals) -> None:
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, sig)


def wait_dead(procs: Sequence[Proc], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(p.alive() for p in procs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
