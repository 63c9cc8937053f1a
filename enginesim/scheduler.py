"""The running-request cap: at most N requests generate at once, the rest wait in FIFO order."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Scheduler:
    """Admits requests to a fixed number of running slots; extra requests queue FIFO.

    ``running`` and ``waiting`` are what vLLM reports as ``num_requests_running`` and
    ``num_requests_waiting``. A waiter that is cancelled (its client went away) leaves the
    queue at once, and a slot handed to a waiter that is cancelled before it resumes is
    passed on, so no slot is ever lost.
    """

    def __init__(self, max_running: int) -> None:
        self.max_running = max_running
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a running slot, waiting in line when all are taken."""
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was granted just before the cancellation landed: hand it on.
                self.release()
            else:
                self._discard(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the first live waiter, or to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                # The slot moves to the waiter, so ``running`` stays the same.
                waiter.set_result(None)
                return
        self.running -= 1

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
