"""``python -m enginesim``: serve the simulator with vLLM's command line.

The listening socket is bound before the app starts, and its address is printed as
``enginesim listening on http://HOST:PORT``, so ``--port 0`` works for tests.

The load time counts from the process's start, as a real engine's does: the simulator's own
imports are part of it, not added to it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from enginesim.app import build_app
from enginesim.config import SimConfig, parse_args

LISTEN_BACKLOG = 4096


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listen now: connections made before uvicorn starts wait in the backlog, not refused.
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc); 0.0 where that is unknown."""
    try:
        # Field 22 of /proc/self/stat is the start time in clock ticks since boot; fields after the
        # command name (which may hold spaces) are split after its closing parenthesis.
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def serve(config: SimConfig) -> None:
    """Run the simulator until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    sock = bind_socket(config.host, config.port)
    bound_port = sock.getsockname()[1]
    if config.ignored_args:
        print(f"enginesim: ignoring arguments {' '.join(config.ignored_args)}", file=sys.stderr, flush=True)
    app = build_app(dataclasses.replace(config, load_time_s=max(0.0, config.load_time_s - process_age_s())))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=math.ceil(config.graceful_shutdown_s),
            backlog=LISTEN_BACKLOG,
        )
    )
    print(f"enginesim listening on http://{config.host}:{bound_port}", flush=True)
    server.run(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> None:
    """Parse a vLLM api_server command line and serve."""
    serve(parse_args(argv))


if __name__ == "__main__":
    main()
