"""Settings of the Files and Batches API and of the batch runner (combined into `GatewaySettings.batch`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class BatchSettings(BaseModel):
    """Uploaded files, batch limits, and how batch lines share instances with interactive requests."""

    files_dir: Path = Path("/tmp/slurmless-files")
    """Where uploaded files, batch work files and results live; shared storage when several gateways run."""
    file_max_bytes: int = Field(200 * 1024 * 1024, ge=1)
    """Largest upload accepted by `POST /v1/files` (streamed to disk; the upload stops at this size)."""
    file_max_lines: int = Field(50_000, ge=1)
    """Most requests (lines) one batch input file may hold."""
    file_ttl_s: float = Field(30 * 86400.0, gt=0)
    """How long an uploaded or result file is kept."""
    max_active_per_tenant: int = Field(10, ge=1)
    """Batches one tenant may have validating, in progress, finalizing or cancelling at once."""
    completion_windows: dict[str, float] = Field(default_factory=lambda: {"24h": 86400.0})
    """Accepted `completion_window` values and their length in seconds."""
    runner: bool = True
    """Run batch lines in this gateway process (every gateway shares the work through Redis leases). Off when
    `python -m queue_gateway.batch_worker` processes run them instead."""
    worker_nice: int = Field(10, ge=0, le=19)
    """CPU niceness a batch worker process gives itself, so that gateways on the same cores go first."""
    max_in_flight: int = Field(8, ge=1)
    """Batch lines one gateway process runs at once (more is faster but costs interactive TTFT: bench/batch_gaps.py)."""
    headroom_fraction: float = Field(0.5, gt=0, le=1)
    """A batch line takes a slot only while the instance's requests in flight are below this fraction of its cap."""
    beside_interactive: int | None = Field(2, ge=0)
    """Batch lines one instance runs while it also serves interactive requests (an instance without any runs
    up to `headroom_fraction` of its cap); every batch line's tokens add to its neighbours' latency. None:
    no limit but the headroom."""
    line_priority: int = Field(10, ge=0)
    """vLLM request `priority` of every batch line (lower is served first; interactive requests are 0, the
    launcher starts engines with `--scheduling-policy priority`), so that an engine admits a waiting
    interactive request before waiting batch lines. Overrides a line's own value; 0 sends none."""
    line_lease_s: float = Field(30.0, gt=0)
    """A claimed line whose runner has not renewed its lease for this long is run again by another runner."""
    line_attempts: int = Field(3, ge=1)
    """Engine failures (5xx, broken connection) after which a line is reported failed."""
    poll_s: float = Field(0.2, gt=0)
    """How often the runner looks for lines when it found no room."""
