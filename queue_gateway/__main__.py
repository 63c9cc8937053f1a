"""`python -m queue_gateway [--host H] [--port P] [--workers N]`: run the gateway (`queue_gateway.serve`).

Settings come from slurmless's config (`SLURMLESS_*` environment, `slurmless.toml`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from queue_gateway.serve import request_limits, serve, server_config
from queue_gateway.settings import GatewayConfig
from warmpool.settings import SettingsError, load_config


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m queue_gateway", description="Run one slurmless gateway.")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="processes sharing the port (gateway.workers)")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load_config(GatewayConfig)
    except SettingsError as exc:
        raise SystemExit(f"queue_gateway: {exc}") from None
    raise SystemExit(serve(settings, host=args.host, port=args.port, workers=args.workers))


__all__ = ["main", "request_limits", "server_config"]

if __name__ == "__main__":
    main()
