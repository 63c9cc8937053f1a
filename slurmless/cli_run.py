"""`slurmless gateway` and `slurmless launcher`: run one long-lived process in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer


def gateway_command(
    host: Annotated[str | None, typer.Option(help="Listen address (default: gateway.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port; 0 picks a free one (default: gateway.port).")] = None,
) -> None:
    """Run one OpenAI-compatible gateway process (several may share one Redis)."""
    from queue_gateway.__main__ import serve
    from slurmless.settings import load_settings

    serve(load_settings(), host=host, port=port)


def launcher_command() -> None:
    """Run one launcher process: the leader, or a standby that takes over when the leader dies."""
    import asyncio

    from launcher.__main__ import main

    asyncio.run(main())
