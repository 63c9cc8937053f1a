"""Build the Slurm backend `slurm.backend` names ("cli", "rest" or "pyslurm"), and check it at start.

A backend that is not installed or not reachable is one line (`BackendUnavailable`) before
anything runs, never a launcher that starts and then sees no jobs.
"""

from __future__ import annotations

import importlib.util
import shutil

from slurm.backend import SlurmBackend
from slurm.cli_backend import CommandHook, SlurmCLI
from slurm.errors import SlurmError
from slurm.rest_backend import SlurmRest
from slurm.settings import SlurmSettings

__all__ = ["BackendUnavailable", "check_backend", "make_backend"]


class BackendUnavailable(SlurmError):
    """The configured backend cannot be used here; the message is one line naming what is missing."""


def make_backend(slurm: SlurmSettings, *, job_name_prefix: str, on_command: CommandHook | None = None) -> SlurmBackend:
    """The backend `slurm.backend` selects; `BackendUnavailable` when it is not installed or configured."""
    env = {"SLURM_CONF": str(slurm.conf)} if slurm.conf else {}
    if slurm.backend == "cli":
        if not slurm.command_prefix:
            sbatch = str(slurm.bin_dir / "sbatch") if slurm.bin_dir else shutil.which("sbatch")
            if sbatch is None or shutil.which(sbatch) is None:
                raise BackendUnavailable("slurm.backend = 'cli' but sbatch is not installed (or not on PATH)")
        return SlurmCLI(
            env=env,
            bin_dir=slurm.bin_dir,
            command_timeout_s=slurm.command_timeout_s,
            job_name_prefix=job_name_prefix,
            on_command=on_command,
            command_prefix=slurm.command_prefix,
        )
    if slurm.backend == "rest":
        rest = slurm.rest
        if rest.token is None and rest.token_file is None:
            raise BackendUnavailable("slurm.backend = 'rest' needs slurm.rest.token or slurm.rest.token_file")
        return SlurmRest(
            rest.url,
            user_name=rest.user_name,
            token=rest.token.get_secret_value() if rest.token else None,
            token_file=rest.token_file,
            api_version=rest.api_version,
            timeout_s=rest.timeout_s,
            job_name_prefix=job_name_prefix,
            on_command=on_command,
        )
    if importlib.util.find_spec("pyslurm") is None:
        raise BackendUnavailable(
            "slurm.backend = 'pyslurm' but pyslurm is not installed (pip install 'slurmless[pyslurm]'; "
            "it must match the cluster's Slurm release)"
        )
    from slurm.pyslurm_backend import SlurmPyslurm

    return SlurmPyslurm(
        env=env, call_timeout_s=slurm.command_timeout_s, job_name_prefix=job_name_prefix, on_command=on_command
    )


async def check_backend(backend: SlurmBackend) -> None:
    """One cheap call that must succeed before the launcher starts; `BackendUnavailable` (one line) if not."""
    try:
        await backend.partitions()
    except SlurmError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailable(f"Slurm backend {type(backend).__name__} unusable: {first}"[:300]) from exc
