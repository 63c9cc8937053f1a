"""The SSE comment lines sent to held streaming clients (ignored by OpenAI clients).

Example: `: slurmless queue position=3 phase=pending reason=Resources eta_s=74`; a start that has
outlasted what was learnt says `eta=unknown`; a model whose last instance was preempted says
`ended_by=preempted` until one is ready again. A wait for an accounting limit adds a second comment
line in words: `: slurmless waiting: QOS limit QOSMaxJobsPerUserLimit (qos small, account team-a)`.
"""

from __future__ import annotations

import math
import re

from warmpool.phase import ModelPhase, Phase

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/+-]")
_PRINTABLE = re.compile(r"[^ -~]")
_COMING = frozenset({Phase.PENDING, Phase.STARTING, Phase.LOADING})


def _token(value: str) -> str:
    # Reasons come from Slurm; keep one comment on one line and free of separators.
    return _UNSAFE.sub("_", value)[:64]


def queue_comment(position: int | None, phase: ModelPhase, *, now_s: float) -> bytes:
    """One progress comment: queue position (0 = next), phase, Slurm reason and seconds to ETA."""
    parts = [": slurmless queue"]
    if position is not None:
        parts.append(f"position={position}")
    parts.append(f"phase={phase.phase.value}")
    if phase.slurm_reason:
        parts.append(f"reason={_token(phase.slurm_reason)}")
    if phase.ended_by:
        parts.append(f"ended_by={_token(phase.ended_by)}")
    if phase.est_start_s is not None:
        parts.append(f"start_in_s={max(0, math.ceil(phase.est_start_s - now_s))}")
    if phase.eta_s is not None and phase.eta_s > now_s:
        parts.append(f"eta_s={math.ceil(phase.eta_s - now_s)}")
    elif phase.phase in _COMING:
        # Never "eta_s=0" for a start that is late: the launcher's next estimate may grow or stay unknown.
        parts.append("eta=unknown")
    lines = [" ".join(parts)]
    if phase.phase is Phase.PENDING and phase.detail:
        # Why it waits in words (an accounting limit: "waiting: QOS limit ... (qos q, account a)").
        lines.append(": slurmless " + _PRINTABLE.sub(" ", phase.detail)[:200])
    return ("\n".join(lines) + "\n\n").encode()


def granted_comment(*, cold_start: bool, queue_wait_ms: int) -> bytes:
    """Sent once before the model's stream when headers went out before the grant."""
    return f": slurmless granted cold_start={str(cold_start).lower()} queue_wait_ms={queue_wait_ms}\n\n".encode()


def failed_comment(message: str) -> bytes:
    """The last comment of a held stream whose model cannot start: why, on one line (the error event follows)."""
    return f": slurmless failed {' '.join(message.split())[:500]}\n\n".encode()
