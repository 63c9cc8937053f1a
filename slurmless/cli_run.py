"""`slurmless gateway` and `slurmless launcher`: run one long-lived process in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer


def gateway_command(
    host: Annotated[str | None, typer.Option(help="Listen address (default: gateway.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port; 0 picks a free one (default: gateway.port).")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Processes sharing the port, a core each (default: gateway.workers).")
    ] = None,
) -> None:
    """Run the OpenAI-compatible gateway (several, on as many machines, may share one Redis)."""
    from queue_gateway.serve import serve
    from slurmless.settings import load_settings

    code = serve(load_settings(), host=host, port=port, workers=workers)
    if code:
        raise typer.Exit(code)


def launcher_command(
    cluster: Annotated[
        str | None,
        typer.Option(help="The Slurm cluster this launcher submits to (default: launcher.cluster, 'default')."),
    ] = None,
) -> None:
    """Run one launcher process: the leader, or a standby that takes over when the leader dies."""
    import asyncio

    from launcher.__main__ import main

    asyncio.run(main(cluster=cluster))
