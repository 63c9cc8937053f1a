"""Which Slurm a local cluster runs: the host's own, or a newer one in a cached Debian root filesystem.

The host (Debian 12) carries Slurm 22.05. Newer releases come from Debian's own packages in a root
filesystem built once by `scripts/slurm-rootfs.sh` (24.11 from Debian 13 "trixie", 26.05 from
"sid") and cached outside the clone. Their daemons and client commands run chrooted into that root,
each in a private mount namespace (`unshare --mount`) where the host's /dev, /proc, /sys, /tmp,
/etc/hosts and /etc/resolv.conf are bind-mounted in (names resolve as on the host); nothing is
mounted on the host, so nothing is left behind when they exit.
The network and the hostname stay the host's: the chrooted slurmctld listens on a host port, and
every cluster file (config, munge socket, state, logs) lives under /tmp at the same path inside
and out. The host's root is also bind-mounted at `/host`, so a job can run the host's software
(`chroot /host <argv>`; `SlurmRuntime.host_argv`), as a site's jobs run its own software stack.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HOST_VERSION",
    "ROOTFS_VERSIONS",
    "RootfsMissing",
    "SlurmRuntime",
    "default_cache_dir",
]

HOST_VERSION = "22.05"
"""The Slurm of the host (Debian 12's slurm-wlm)."""
ROOTFS_VERSIONS = {"24.11": "trixie", "26.05": "sid"}
"""Slurm versions served from a root filesystem, with the Debian suite carrying each."""
STAMP_FILE = ".slurmless-rootfs"
HOST_MOUNT = "/host"

# Runs as `sh -ec ENTER slurmless-rootfs <root> <argv...>` inside a fresh mount namespace.
_ENTER = """r=$1; shift
PATH="$PATH:/usr/sbin:/sbin:/usr/bin:/bin"  # mount and chroot, whatever PATH the caller had
mkdir -p "$r/host"
mount --rbind / "$r/host"
mount --rbind /dev "$r/dev"
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /tmp "$r/tmp"
for f in hosts resolv.conf; do
  if [ -f "/etc/$f" ] && [ -f "$r/etc/$f" ]; then mount --bind "/etc/$f" "$r/etc/$f"; fi
done
exec chroot "$r" "$@"
"""


class RootfsMissing(RuntimeError):
    """The root filesystem of the requested Slurm version has not been built (or is incomplete)."""


def default_cache_dir() -> Path:
    """Where built root filesystems are cached (`SLURMLESS_ROOTFS_CACHE`, as in the build script)."""
    return Path(os.environ.get("SLURMLESS_ROOTFS_CACHE", "/var/cache/slurmless/rootfs"))


@dataclass(frozen=True, slots=True)
class SlurmRuntime:
    """The Slurm a local cluster runs; `rootfs` is None for the host's own."""

    version: str = HOST_VERSION
    rootfs: Path | None = None

    @classmethod
    def for_version(cls, version: str | None, cache_dir: Path | None = None) -> SlurmRuntime:
        """The runtime for `version` ("22.05", "24.11", "26.05"; None: the host's).

        Raises ValueError for a version we have no recipe for and `RootfsMissing` when its root has
        not been built yet (the message names the command that builds it).
        """
        if version in (None, "", HOST_VERSION, "host"):
            return cls()
        if version not in ROOTFS_VERSIONS:
            known = ", ".join([HOST_VERSION, *ROOTFS_VERSIONS])
            raise ValueError(f"no local cluster for Slurm {version!r} (known: {known})")
        root = (cache_dir or default_cache_dir()) / version
        if not (root / STAMP_FILE).is_file():
            raise RootfsMissing(
                f"Slurm {version} root filesystem not built in {root}: run scripts/slurm-rootfs.sh {version}"
            )
        return cls(version=version, rootfs=root)

    @property
    def chrooted(self) -> bool:
        return self.rootfs is not None

    @property
    def command_prefix(self) -> list[str]:
        """argv to put before a Slurm command so that it runs in this runtime (empty for the host)."""
        if self.rootfs is None:
            return []
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        return [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-ec",
            _ENTER,
            "slurmless-rootfs",
            str(self.rootfs),
        ]

    def argv(self, args: Sequence[str]) -> list[str]:
        """`args` wrapped to run in this runtime."""
        return [*self.command_prefix, *args]

    def host_argv(self, args: Sequence[str]) -> list[str]:
        """argv that runs the host's `args` from inside a job of this runtime (unchanged on the host)."""
        if self.rootfs is None:
            return list(args)
        return ["chroot", HOST_MOUNT, *args]

    def describe(self) -> str:
        return f"Slurm {self.version}" + (f" (root {self.rootfs})" if self.rootfs else " (host)")
