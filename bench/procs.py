"""Child processes for benchmarks: start pinned to cores, wait until ready, stop exactly them."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmless.ports import free_port

__all__ = ["Child", "cpu_seconds", "free_port", "pin_threads", "start", "wait_http", "wait_line"]

REPO = Path(__file__).resolve().parent.parent
VENVS = REPO / "bench" / ".venvs"


@dataclass
class Child:
    """A process this benchmark started (in its own session, so its children stop with it)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    cores: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
    capture_stdout: bool = False,
    cwd: Path | None = None,
    unset_prefixes: Sequence[str] = (),
    stdin_pipe: bool = False,
) -> Child:
    """Start `argv` (pinned to `cores` with taskset when given) with stderr, and stdout unless captured, to a log."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    prefix: list[str] = []
    if cores is not None and shutil.which("taskset"):
        prefix = ["taskset", "-c", ",".join(str(c) for c in cores)]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(tuple(unset_prefixes))}
    full_env = {**inherited, **(env or {})}
    proc = subprocess.Popen(
        [*prefix, *argv],
        stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture_stdout else log,
        stderr=log,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    log.close()
    return Child(name, proc, log_path)


def wait_line(child: Child, prefix: str, timeout_s: float) -> str:
    """Read the child's stdout until a line starts with `prefix`; return the rest of that line."""
    assert child.proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = child.proc.stdout.readline().decode(errors="replace")
        if not line:
            break
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    child.stop()
    raise RuntimeError(f"{child.name} did not print {prefix!r} within {timeout_s}s:\n{child.log_tail()}")


def wait_http(child: Child, url: str, timeout_s: float, headers: Mapping[str, str] | None = None) -> None:
    """Poll `url` until it answers 200 (or the child dies, or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
        req = urllib.request.Request(url, headers=dict(headers or {}))
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(req, timeout=2.0) as resp:
            if resp.status == 200:
                return
        time.sleep(0.2)
    child.stop()
    raise RuntimeError(f"{child.name} not ready at {url} within {timeout_s}s:\n{child.log_tail()}")


def pin_threads(pid: int, cores: Sequence[int]) -> None:
    """Pin every thread of a running process (for servers started by library code, like LocalRedis)."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), set(cores))


def python() -> str:
    return sys.executable


def cpu_seconds(session_ids: Sequence[int], extra_pids: Sequence[int] = ()) -> float:
    """User+system CPU seconds used so far by every process in the given sessions, plus `extra_pids`."""
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    sessions = set(session_ids)
    extras = set(extra_pids)
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp session ... utime(14) stime(15).
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[3]) in sessions or int(entry) in extras:
            total += (int(fields[11]) + int(fields[12])) * tick_s
    return total
