"""Checks on the submitting host, right before `sbatch`: the job directory is private, model paths stay in the roots.

Both are repeated by the job script on the compute node (`slurmless_preflight`), because a path can
change between submission and start; each failure is one line (a `ScriptValidationError`), and
nothing is submitted.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from slurm.errors import ScriptValidationError
from slurm.jobscript import JobSpec, confined_paths

__all__ = ["check_job_paths", "ensure_private_dir", "outside_roots"]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def outside_roots(path: str, roots: Sequence[str | Path]) -> str | None:
    """Why `path` is not under one of `roots`, lexically and with every symlink resolved; None when it is."""
    if not roots:
        return f"{path} cannot be used: no model roots are configured"
    lexical = os.path.normpath(path)
    if not any(_under(lexical, os.path.normpath(r)) for r in roots):
        return f"{path} is outside the model roots ({', '.join(str(r) for r in roots)})"
    resolved = os.path.realpath(path)
    if not any(_under(resolved, os.path.realpath(r)) for r in roots):
        return f"{path} resolves to {resolved}, outside the model roots (a symlink leads out)"
    return None


def check_job_paths(spec: JobSpec, roots: Sequence[str | Path]) -> None:
    """Every path the job's engine will open still lies under `roots` (resolved here, now)."""
    for path in confined_paths(spec):
        why = outside_roots(path, roots)
        if why is not None:
            raise ScriptValidationError(f"model path refused: {why}")


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) if missing; refuse one that is a symlink, not ours, or open to others.

    Jobs run in this directory (`--chdir`) and write their logs there: a directory another user can
    write to could hold files the job's tools pick up, so it is refused rather than repaired. A
    leading `~` is the home directory of the user running this; the expanded path is returned.
    """
    path = path.expanduser()
    if not path.is_absolute():
        raise ScriptValidationError(f"job directory {path} must be an absolute path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ScriptValidationError(f"job directory {path} cannot be created: {exc.strerror}") from None
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ScriptValidationError(f"job directory {path} is a symlink or not a directory: refusing to use it")
    if st.st_uid != os.geteuid():
        raise ScriptValidationError(
            f"job directory {path} belongs to uid {st.st_uid}, not {os.geteuid()}: refusing to use it"
        )
    if mode & 0o077:
        raise ScriptValidationError(
            f"job directory {path} has mode {mode:o}, open to other users: use a private one (chmod 700 {path})"
        )
    return path
