"""`python -m launcher`: run one launcher process (leader or standby) with its arq worker."""

from __future__ import annotations

import asyncio
import logging
import signal

from arq import Worker

from launcher.settings import LauncherConfig
from launcher.worker import worker_settings
from slurm.backends import BackendUnavailable, check_backend, make_backend
from warmpool.settings import SettingsError, load_config


async def main() -> None:
    """Run until SIGINT/SIGTERM; a clean stop gives the lease up at once."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load_config(LauncherConfig)
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


if __name__ == "__main__":
    asyncio.run(main())
