"""`python -m queue_gateway.batch_worker`: batch lines run by a process of their own, at a lower CPU priority.

A gateway runs batch lines itself by default (`gateway.batch.runner`). On a busy machine the CPU a
batch takes in the gateway's event loop delays interactive requests (bench/batch_gaps.py measures
it); a worker process instead gives itself `worker_nice` and leaves the gateways alone (turn
`gateway.batch.runner` off on them). It is built from the gateway's own parts (same dispatcher,
slots and engine connections code) and holds a lease like a gateway, so if it dies its slots are
reaped and its lines run again by another runner once their leases lapse. Several may run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis
import uvloop
from redis.exceptions import RedisError

from queue_gateway.app import _stop, _wire
from queue_gateway.metrics import GatewayMetrics
from queue_gateway.settings import GatewayConfig
from warmpool.keys import Keys
from warmpool.settings import load_config

log = logging.getLogger(__name__)


async def run_worker(settings: GatewayConfig, *, stop: asyncio.Event, worker_id: str | None = None) -> None:
    """Run batch lines until `stop` is set; lines in flight are handed back on the way out."""
    worker_id = worker_id or f"bw-{uuid.uuid4().hex[:12]}"
    loop = asyncio.get_running_loop()
    timeout_s = settings.redis.socket_timeout_s
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
    )
    gw = _wire(
        settings.gateway, client, Keys(settings.redis.key_prefix), worker_id, time.time, GatewayMetrics(), timeout_s
    )
    try:
        await gw.lease.tick()
        for job in (gw.lease.loop(), gw.batch_runner.loop(), gw.batch_runner.renew_loop()):
            gw.tasks.append(loop.create_task(job))
        print(f"batch worker {worker_id} running", flush=True)
        await stop.wait()
    finally:
        await _stop(gw.tasks)
        with contextlib.suppress(RedisError, OSError):
            await gw.batch_runner.shutdown()
        with contextlib.suppress(RedisError, OSError):
            await gw.routing.leave(worker_id, now_s=time.time())
        await gw.upstreams.aclose()
        if gw.pipe is not None:
            gw.pipe.close()
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m queue_gateway.batch_worker", description=__doc__.splitlines()[0])
    parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_config(GatewayConfig)
    niceness = settings.gateway.batch.worker_nice
    if niceness:
        os.nice(niceness)
    uvloop.run(_until_signalled(settings))


async def _until_signalled(settings: GatewayConfig) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await run_worker(settings, stop=stop)


if __name__ == "__main__":
    main()
