"""Serve the gateway: one process under uvicorn, or several workers on one socket (`queue_gateway.workers`).

The socket is bound and listening before any app starts and its address printed
(`queue_gateway listening on http://H:P`), so `--port 0` works for tests and a client that connects
at once waits in the backlog instead of being refused.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from queue_gateway.app import build_app
from queue_gateway.batch_api import UPLOAD_FORM_OVERHEAD, UPLOAD_PATHS
from queue_gateway.http_limits import RequestLimits, limited_protocol
from queue_gateway.request_body import MAX_MULTIPART_BYTES
from queue_gateway.settings import GatewayConfig, GatewaySettings
from queue_gateway.workers import WORKER_INDEX_ENV, supervise
from warmpool.keys import Keys

LISTEN_BACKLOG = 4096
STARTUP_FAILED_EXIT = 3
"""uvicorn's own exit code when the app's startup failed."""


def request_limits(gw: GatewaySettings) -> RequestLimits:
    return RequestLimits(
        max_body_bytes=gw.max_body_bytes,
        upload_paths=frozenset(p.encode() for p in UPLOAD_PATHS),
        max_upload_bytes=max(gw.max_body_bytes, gw.batch.file_max_bytes + UPLOAD_FORM_OVERHEAD, MAX_MULTIPART_BYTES),
        max_header_bytes=gw.max_header_bytes,
        header_timeout_s=gw.header_timeout_s,
        body_timeout_s=gw.body_timeout_s,
        max_connections=gw.max_connections,
    )


def server_config(app: ASGIApp, gw: GatewaySettings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's config for a gateway: httptools with the request limits of `gw` (`queue_gateway.http_limits`)."""
    options: dict[str, Any] = {
        "http": limited_protocol(request_limits(gw)),
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        "backlog": LISTEN_BACKLOG,
        "limit_concurrency": None,
        "timeout_graceful_shutdown": 10,
        "timeout_keep_alive": 75,
    }
    return uvicorn.Config(app, **(options | overrides))


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port and listening (inheritable, for workers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listen now: connections made while the app starts wait in the backlog, not refused.
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run_one(settings: GatewayConfig, sock: socket.socket) -> None:
    """One gateway process serving on `sock` until SIGINT/SIGTERM (a clean stop hands back its tickets and slots)."""
    app = build_app(
        settings.gateway,
        settings.redis.url,
        keys=Keys(settings.redis.key_prefix),
        root_settings=settings,
        redis_socket_timeout_s=settings.redis.socket_timeout_s,
    )
    server = uvicorn.Server(server_config(app, settings.gateway, loop="uvloop"))
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILED_EXIT)


def _worker(settings: GatewayConfig, sock: socket.socket) -> None:
    index = os.environ.get(WORKER_INDEX_ENV, "?")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{index} %(name)s %(levelname)s %(message)s")
    run_one(settings, sock)


def serve(
    settings: GatewayConfig, *, host: str | None = None, port: int | None = None, workers: int | None = None
) -> int:
    """Serve the gateway until SIGINT/SIGTERM with `workers` processes (default `gateway.workers`); the exit code."""
    gw = settings.gateway
    host = host if host is not None else gw.host
    port = port if port is not None else gw.port
    workers = workers if workers is not None else gw.workers
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    sock = listen(host, port)
    print(f"queue_gateway listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    try:
        if workers == 1:
            run_one(settings, sock)
            return 0
        return supervise(_worker, (settings,), sock, workers)
    finally:
        sock.close()


__all__ = ["LISTEN_BACKLOG", "listen", "request_limits", "run_one", "serve", "server_config"]
