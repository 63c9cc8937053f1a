"""The one retry policy of every Slurm backend: exponential back-off, a bounded number of attempts, and only
for the errors a backend names as worth another try (an unreachable or slow controller, never a refusal)."""

from __future__ import annotations

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential


def slurm_retrying(attempts: int, wait_s: float, retry_on: tuple[type[Exception], ...]) -> AsyncRetrying:
    """`async for attempt in slurm_retrying(...)`: at least one attempt; waits double up to 8 x `wait_s`."""
    return AsyncRetrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=wait_s, max=wait_s * 8),
        retry=retry_if_exception_type(retry_on),
        reraise=True,
    )
