"""How slurmless reaches Slurm, and the throwaway local cluster (`slurm`, `dev_cluster` in
`slurmless.settings.Settings`, `SLURMLESS_SLURM__*`, `SLURMLESS_DEV_CLUSTER__*`), beside the code
that uses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class SlurmRestSettings(BaseModel):
    """How the `rest` backend reaches slurmrestd."""

    url: str = "http://127.0.0.1:6820"
    """slurmrestd's base URL."""
    user_name: str = "root"
    """Sent as X-SLURM-USER-NAME; the JWT must be issued for this user."""
    token: SecretStr | None = None
    """A JWT (`scontrol token`); or `token_file`, re-read when slurmrestd answers 401."""
    token_file: Path | None = None
    """File holding the JWT (`SLURM_JWT=...` or the bare token), kept fresh by the site."""
    api_version: str | None = None
    """OpenAPI version ("v0.0.38", "v0.0.41"...); None: the newest one both sides know."""
    timeout_s: float = 30.0
    """Timeout of one request to slurmrestd."""


class SlurmSettings(BaseModel):
    """How to reach Slurm."""

    backend: Literal["cli", "rest", "pyslurm"] = "cli"
    """`cli`: sbatch/squeue/scancel/sinfo; `rest`: slurmrestd over HTTP; `pyslurm`: the pyslurm library."""
    command_prefix: list[str] = Field(default_factory=list)
    """argv put before every Slurm command of the `cli` backend (a chroot, an ssh to a login node)."""
    rest: SlurmRestSettings = Field(default_factory=SlurmRestSettings)
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
    slurm_version: str = "22.05"
    """Slurm release of the local cluster: 22.05 (the host's), 24.11 or 26.05 (scripts/slurm-rootfs.sh)."""


__all__ = ["DevClusterSettings", "SlurmRestSettings", "SlurmSettings"]
