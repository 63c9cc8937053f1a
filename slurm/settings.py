"""How slurmless reaches Slurm, and the throwaway local cluster (`slurm`, `dev_cluster` in
`slurmless.settings.Settings`, `SLURMLESS_SLURM__*`, `SLURMLESS_DEV_CLUSTER__*`), beside the code
that uses them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel


class SlurmSettings(BaseModel):
    """How to reach Slurm."""

    backend: str = "cli"
    """How Slurm is reached: "cli" runs sbatch, squeue, scancel and sinfo."""
    bin_dir: Path | None = None
    """Directory of the Slurm commands; None finds them on PATH."""
    conf: Path | None = None
    """SLURM_CONF for the command-line tools; None uses the system's."""
    command_timeout_s: float = 30.0
    """Timeout of one Slurm command; the command is killed when it expires."""
    default_partition: str | None = None
    """Partition used for models that name none; None leaves it to the cluster's default."""
    local_cluster: bool = True
    """`slurmless up` starts a throwaway single-node cluster when true."""


class DevClusterSettings(BaseModel):
    """The throwaway local cluster used by `slurmless up` and the tests."""

    base_dir: Path = Path("/tmp/slurmless-dev-cluster")
    """Directory holding the local cluster's configuration, state and logs."""
    gpus: int = 4
    """Fake GPUs the local node declares."""


__all__ = ["DevClusterSettings", "SlurmSettings"]
