"""`python -m queue_gateway [--host H] [--port P]`: run one gateway process under uvicorn.

Settings come from slurmless's config (`SLURMLESS_*` environment, `slurmless.toml`). The socket is
bound and listening before the app starts and its address printed
(`queue_gateway listening on http://H:P`), so `--port 0` works for tests and a client that connects
at once waits in the backlog instead of being refused.
"""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Sequence
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from queue_gateway.app import build_app
from queue_gateway.batch_api import UPLOAD_FORM_OVERHEAD, UPLOAD_PATHS
from queue_gateway.http_limits import RequestLimits, limited_protocol
from queue_gateway.request_body import MAX_MULTIPART_BYTES
from slurmless.settings import GatewaySettings, Settings, SettingsError, load_settings
from warmpool.keys import Keys

LISTEN_BACKLOG = 4096


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


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve the gateway until SIGINT/SIGTERM (a clean stop hands back this process's tickets and slots)."""
    gw = settings.gateway
    host = host if host is not None else gw.host
    port = port if port is not None else gw.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listen now: connections made while the app starts wait in the backlog, not refused.
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    app = build_app(
        gw,
        settings.redis.url,
        keys=Keys(settings.redis.key_prefix),
        root_settings=settings,
        redis_socket_timeout_s=settings.redis.socket_timeout_s,
    )
    server = uvicorn.Server(server_config(app, gw, loop="uvloop"))
    print(f"queue_gateway listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m queue_gateway", description="Run one slurmless gateway.")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(f"queue_gateway: {exc}") from None
    serve(settings, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
