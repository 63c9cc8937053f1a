"""`python -m launcher`: run one launcher process (leader or standby) with its arq worker."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TypeVar

from arq import Worker
from pydantic import ValidationError

from launcher.settings import LauncherConfig, LauncherSettings
from launcher.worker import worker_settings
from slurm.backends import BackendUnavailable, check_backend, make_backend
from warmpool.settings import SettingsError, load_config

Config = TypeVar("Config", bound=LauncherConfig)


async def main(cluster: str | None = None) -> None:
    """Run until SIGINT/SIGTERM; a clean stop gives the lease up at once. `cluster` overrides `launcher.cluster`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = with_cluster(load_config(LauncherConfig), cluster)
    except SettingsError as exc:
        raise SystemExit(f"launcher: {exc}") from None
    try:
        await check_backend(make_backend(settings.slurm, job_name_prefix=settings.launcher.job_name_prefix))
    except BackendUnavailable as exc:
        raise SystemExit(f"launcher: {exc}") from None
    worker = Worker(**worker_settings(settings), handle_signals=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    run = asyncio.create_task(worker.main())
    await stop.wait()
    await worker.close()
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)


def with_cluster(settings: Config, cluster: str | None) -> Config:
    """`settings` for the launcher of `cluster` (checked like the setting); unchanged when None."""
    if cluster is None:
        return settings
    try:
        launcher = LauncherSettings.model_validate({**settings.launcher.model_dump(), "cluster": cluster})
    except ValidationError:
        raise SettingsError(f"--cluster {cluster!r}: a cluster name is [a-z0-9][a-z0-9_-]{{0,39}}") from None
    return settings.model_copy(update={"launcher": launcher})


if __name__ == "__main__":
    asyncio.run(main())
