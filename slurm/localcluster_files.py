"""The directory of a local Slurm cluster: checked, emptied and filled with its config, keys and devices.

Every file of a cluster lives in its one directory (see `slurm.localcluster`); a marker file says the
directory is a cluster's, so a later start or stop never empties a directory that is not.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from slurm.localcluster_conf import LocalClusterSpec, render_cgroup_conf, render_gres_conf, render_slurm_conf
from slurm.localdaemons import LocalClusterError

__all__ = [
    "MARKER_FILE",
    "STATE_FILE",
    "free_port",
    "is_ours",
    "new_tempdir",
    "port_open",
    "prepare_dir",
    "write_files",
    "write_secret",
]

STATE_FILE = "localcluster.json"
MARKER_FILE = ".slurmless-localcluster"
# Linux limit for a unix socket path (sun_path), including the terminating NUL.
_MAX_SOCKET_PATH = 107


def new_tempdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="slurmless-cluster-")).resolve()


def is_ours(d: Path) -> bool:
    """`d` is a local cluster's directory (or empty)."""
    return (d / MARKER_FILE).exists() or (d / STATE_FILE).exists() or not any(d.iterdir())


def prepare_dir(d: Path, node_name: str, stop_previous: Callable[[Path], None]) -> None:
    """Make `d` an empty cluster directory; a previous cluster's processes there are stopped first."""
    longest = d / "spool" / f"{node_name}_4294967295.4294967295"
    if len(str(longest)) > _MAX_SOCKET_PATH:
        raise LocalClusterError(f"{d} is too long for unix socket paths; use a shorter base_dir")
    # munged refuses a socket whose ancestors not everyone may traverse (pytest's tmp_path, for one).
    closed = [p for p in d.parents if p.exists() and not p.stat().st_mode & stat.S_IXOTH]
    if closed:
        raise LocalClusterError(
            f"{closed[0]} is not world-traversable (o+x), which munged requires; use another base_dir"
        )
    if d.exists():
        if (d / STATE_FILE).exists():
            stop_previous(d)
        if not is_ours(d):
            raise LocalClusterError(f"{d} exists and is not a local cluster directory; refusing to use it")
        for child in d.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    d.mkdir(parents=True, exist_ok=True)
    (d / MARKER_FILE).write_text("slurmless local Slurm cluster; removed by LocalCluster.stop()\n")
    # munged insists that everyone may traverse its socket's directory and nobody else may write it.
    d.chmod(0o755)


def write_files(spec: LocalClusterSpec) -> None:
    """The cluster's subdirectories, munge key, JWT key, fake GPU devices and Slurm config files."""
    for sub in (spec.log_dir, spec.state_save_dir, spec.spool_dir, spec.gpu_dev_dir, spec.munge_socket.parent):
        sub.mkdir(mode=0o755, exist_ok=True)
    if spec.jwt_key is not None:
        spec.jwt_key.parent.mkdir(mode=0o700)
        write_secret(spec.jwt_key, secrets.token_bytes(32))
    write_secret(spec.munge_socket.parent / "munge.key", os.urandom(1024))
    for i in range(spec.gpus):
        _make_fake_device(spec.gpu_device(i))
    spec.conf_path.write_text(render_slurm_conf(spec))
    (spec.base_dir / "gres.conf").write_text(render_gres_conf(spec))
    (spec.base_dir / "cgroup.conf").write_text(render_cgroup_conf(spec))


def write_secret(path: Path, data: bytes, mode: int = 0o400) -> None:
    """Create `path` (it must not exist) readable by its owner only, holding `data`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _make_fake_device(path: Path) -> None:
    """A character device with /dev/null's numbers: slurmd wants a real device file for a gres `File=`."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        # Without CAP_MKNOD a plain file still works; slurmd logs an error and drops the device binding.
        path.touch()
