"""The Slurm boundary's exceptions, mapped once from subprocess outcomes.

SlurmError
├── SlurmUnavailable        transient: controller unreachable, socket timed out (retried)
├── SlurmTimeout            a command exceeded its own timeout (retried like SlurmUnavailable)
├── SlurmCommandError       a command failed for a reason retrying will not fix
│   ├── JobNotFound         the job id is unknown to the controller
│   └── NotSupported        this backend cannot do it at all (no `--test-only` over REST or pyslurm)
├── SlurmParseError         a command's output did not have the shape we expect
└── ScriptValidationError   a job-script value failed validation; nothing was submitted
"""

from __future__ import annotations

__all__ = [
    "JobNotFound",
    "NotSupported",
    "ScriptValidationError",
    "SlurmCommandError",
    "SlurmError",
    "SlurmParseError",
    "SlurmTimeout",
    "SlurmUnavailable",
]


class SlurmError(Exception):
    """Base of every error raised by the Slurm boundary."""


class SlurmCommandError(SlurmError):
    """A Slurm command exited non-zero for a reason a retry will not fix."""

    def __init__(self, command: str, returncode: int, stderr: str) -> None:
        self.command = command
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{command} exited {returncode}: {stderr.strip()[:500]}")


class SlurmUnavailable(SlurmError):
    """The controller could not be reached; the command may succeed if retried."""

    def __init__(self, command: str, detail: str) -> None:
        self.command = command
        self.detail = detail
        super().__init__(f"{command}: Slurm unavailable: {detail.strip()[:500]}")


class SlurmTimeout(SlurmError):
    """A Slurm command did not finish within its timeout and was killed."""

    def __init__(self, command: str, timeout_s: float) -> None:
        self.command = command
        self.timeout_s = timeout_s
        super().__init__(f"{command} did not finish within {timeout_s:.1f} s")


class JobNotFound(SlurmCommandError):
    """The job id is not (or no longer) known to the controller."""


class NotSupported(SlurmCommandError):
    """The backend has no way to do this (slurmrestd and pyslurm have no `sbatch --test-only`)."""


class SlurmParseError(SlurmError):
    """A command's output did not match any of the shapes we know."""


class ScriptValidationError(SlurmError, ValueError):
    """A value destined for a job script was rejected; nothing was rendered or submitted."""
