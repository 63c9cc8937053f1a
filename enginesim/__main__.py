"""``python -m enginesim``: serve the simulator with vLLM's command line.

The listening socket is bound before the app starts, and its address is printed as
``enginesim listening on http://HOST:PORT``, so ``--port 0`` works for tests.
"""

from __future__ import annotations

import math
import socket
import sys
from collections.abc import Sequence

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


def serve(config: SimConfig) -> None:
    """Run the simulator until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    sock = bind_socket(config.host, config.port)
    bound_port = sock.getsockname()[1]
    if config.ignored_args:
        print(f"enginesim: ignoring arguments {' '.join(config.ignored_args)}", file=sys.stderr, flush=True)
    app = build_app(config)
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
