"""Several gateway processes on one listening socket (`gateway.workers`, `--workers N`).

The supervisor (the process that was started) binds and listens once, then starts N workers with
multiprocessing's spawn: each is a fresh interpreter with its own event loop, Redis connections,
lease and engine pool, and all of them accept on the inherited socket, so the kernel hands a new
connection to whichever worker accepts first (a busy one is slower to, so the idle one takes more).
The supervisor keeps the socket open and accepts nothing: connections made while workers start wait
in the backlog.

SIGTERM and SIGINT are passed on to every worker, which drains its connections and hands back its
tickets and slots exactly as a single gateway does. A worker that ends by itself stops the others
(the service manager restarts the gateway as a whole); the supervisor then exits non-zero.

Metrics: the supervisor points `PROMETHEUS_MULTIPROC_DIR` at a private directory before the workers
start, so their counters are summed and the held/in-flight gauges added over live workers when any
of them answers `/metrics` (`queue_gateway.metrics`); the directory is removed at exit.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from types import FrameType
from typing import Any

from prometheus_client import multiprocess

from queue_gateway.metrics import MULTIPROC_DIR_ENV

WORKER_INDEX_ENV = "SLURMLESS_GATEWAY_WORKER"
"""Set in each worker to its index (0..N-1), for its log lines."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def supervise(target: Callable[..., None], args: tuple[Any, ...], sock: socket.socket, workers: int) -> int:
    """Run `target(*args, sock)` in `workers` spawned processes until they end; the exit code for the supervisor."""
    metrics_dir = tempfile.mkdtemp(prefix="slurmless-gateway-metrics-")
    os.environ[MULTIPROC_DIR_ENV] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    stopping = False

    def stop_all(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop_all) for s in STOP_SIGNALS}
    code = 0
    try:
        for index in range(workers):
            os.environ[WORKER_INDEX_ENV] = str(index)
            started = ctx.Process(target=target, args=(*args, sock), name=f"gateway-worker-{index}")
            started.start()
            procs.append(started)
            if stopping:  # a stop signal came while workers were starting
                stop_all(signal.SIGTERM, None)
        live = list(procs)
        while live:
            multiprocessing.connection.wait([p.sentinel for p in live])
            for ended in [p for p in live if not p.is_alive()]:
                ended.join()
                live.remove(ended)
                if ended.pid is not None:
                    multiprocess.mark_process_dead(ended.pid, metrics_dir)  # type: ignore[no-untyped-call]
                if not stopping:
                    code = ended.exitcode or 1
                    stop_all(signal.SIGTERM, None)
                elif ended.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT) and code == 0:
                    code = 1
        return code
    finally:
        stop_all(signal.SIGTERM, None)
        for proc in procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.environ.pop(MULTIPROC_DIR_ENV, None)
        os.environ.pop(WORKER_INDEX_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


__all__ = ["MULTIPROC_DIR_ENV", "WORKER_INDEX_ENV", "supervise"]
