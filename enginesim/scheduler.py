"""The running-request cap: at most N requests generate at once, the rest wait in line.

The line is first-come-first-served, or, with vLLM's ``--scheduling-policy priority``, ordered by
each request's ``priority`` (lower first, then arrival), as vLLM's waiting queue is. Like vLLM at
its ``max_num_seqs`` cap, a running request is never preempted for a waiting one: priority decides
who gets the next free slot.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from dataclasses import dataclass, field


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class Scheduler:
    """Admits requests to a fixed number of running slots; extra requests queue in line.

    ``running`` and ``waiting`` are what vLLM reports as ``num_requests_running`` and
    ``num_requests_waiting``. A waiter that is cancelled (its client went away) leaves the
    queue at once, and a slot handed to a waiter that is cancelled before it resumes is
    passed on, so no slot is ever lost. ``by_priority`` off: every request waits as priority 0.
    """

    def __init__(self, max_running: int, by_priority: bool = False) -> None:
        self.max_running = max_running
        self.by_priority = by_priority
        self.running = 0
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiters)

    async def acquire(self, priority: int = 0) -> None:
        """Take a running slot, waiting in line when all are taken."""
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return
        waiter = _Waiter(
            priority if self.by_priority else 0,
            next(self._seq),
            asyncio.get_running_loop().create_future(),
        )
        bisect.insort(self._waiters, waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                # The slot was granted just before the cancellation landed: hand it on.
                self.release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the first live waiter, or to the pool."""
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.future.done():
                # The slot moves to the waiter, so ``running`` stays the same.
                waiter.future.set_result(None)
                return
        self.running -= 1
