"""Validators for every value a job script carries.

Each returns the value unchanged or raises `ScriptValidationError`. They are deliberately strict
(allow-lists of characters, not deny-lists): values that reach `#SBATCH` lines cannot be quoted
(sbatch reads those lines itself), so they must be plain words; values in the script body are
also shell-quoted with `shlex.quote` after passing these checks (defence in depth).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from slurm.errors import ScriptValidationError

__all__ = [
    "check_absolute_path",
    "check_admin_line",
    "check_argv",
    "check_callback_url",
    "check_constraint",
    "check_instance_id",
    "check_job_name_prefix",
    "check_model_name",
    "check_model_source",
    "check_output_dir",
    "check_served_model_name",
    "check_slurm_word",
    "check_token",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INSTANCE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_MODEL_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9._+@=,~-]+$")
_HUB_PART = re.compile(r"^[A-Za-z0-9._-]+$")
_SERVED_NAME = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.&|,*:!\[\]-]{1,256}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^\[[0-9A-Fa-f:.]+\]$")
_URL_PATH = re.compile(r"^[A-Za-z0-9._~/-]*$")


def _fail(what: str, value: object, why: str) -> ScriptValidationError:
    return ScriptValidationError(f"invalid {what} {value!r}: {why}")


def check_instance_id(value: str) -> str:
    """Lower-case letters, digits and dashes; we generate these."""
    if not _INSTANCE_ID.fullmatch(value):
        raise _fail("instance id", value, "expected [a-z0-9-], at most 63 characters")
    return value


def check_job_name_prefix(value: str) -> str:
    """A job-name prefix such as "slurmless-"."""
    if not _PREFIX.fullmatch(value):
        raise _fail("job name prefix", value, "expected [a-z][a-z0-9-], at most 32 characters")
    return value


def check_model_name(value: str) -> str:
    """A DNS-label-like model name (dots allowed): it ends up in job names and log file names."""
    if not _MODEL_NAME.fullmatch(value) or ".." in value:
        raise _fail("model name", value, "expected a DNS-label-like name ([a-z0-9._-], at most 63)")
    return value


def check_absolute_path(value: str, what: str = "path") -> str:
    """An absolute POSIX path of plain components; no `..`, `.`, empty components or odd characters."""
    if _CONTROL.search(value):
        raise _fail(what, value, "control characters")
    if not value.startswith("/") or len(value) > 4096:
        raise _fail(what, value, "must be an absolute path")
    parts = value.split("/")[1:]
    if value != "/" and value.endswith("/"):
        parts = parts[:-1]
    for part in parts:
        if part in ("", ".", ".."):
            raise _fail(what, value, "empty, '.' or '..' component")
        if not _PATH_PART.fullmatch(part):
            raise _fail(what, value, "characters outside [A-Za-z0-9._+@=,~-]")
    return value


def check_model_source(value: str) -> str:
    """An absolute path to weights, or a hub id "org/name"."""
    if value.startswith("/"):
        return check_absolute_path(value, "model source")
    parts = value.split("/")
    if len(parts) != 2 or any(p in ("", ".", "..") or not _HUB_PART.fullmatch(p) for p in parts):
        raise _fail("model source", value, "expected an absolute path or a hub id 'org/name'")
    if any(p.startswith(("-", ".")) for p in parts):
        raise _fail("model source", value, "hub id parts may not start with '-' or '.'")
    return value


def check_served_model_name(value: str) -> str:
    """The name clients use for the model, e.g. "meta-llama/Llama-3.1-8B-Instruct"."""
    if not _SERVED_NAME.fullmatch(value) or value.startswith("-"):
        raise _fail("served model name", value, "expected [A-Za-z0-9._:/-], at most 128")
    if any(p in ("", ".", "..") for p in value.split("/")):
        raise _fail("served model name", value, "empty, '.' or '..' component")
    return value


def check_slurm_word(value: str, what: str) -> str:
    """A partition, QOS or account name."""
    if not _SLURM_WORD.fullmatch(value) or value.startswith("-"):
        raise _fail(what, value, "expected [A-Za-z0-9_.-], at most 64")
    return value


def check_constraint(value: str) -> str:
    """A Slurm feature constraint expression ("a100&ib", "[a100|h100]")."""
    if not _CONSTRAINT.fullmatch(value) or value.startswith("-"):
        raise _fail("constraint", value, "expected a feature expression of [A-Za-z0-9_.&|,*:![]-]")
    return value


def check_token(value: str, what: str) -> str:
    """A secret token: URL-safe base64 or hex, 16 to 256 characters."""
    if not _TOKEN.fullmatch(value):
        raise ScriptValidationError(f"invalid {what}: expected 16-256 characters of [A-Za-z0-9_-]")
    return value


def check_callback_url(value: str) -> str:
    """An http(s) URL with a host, optional port and plain path; no credentials, query or fragment."""
    if _CONTROL.search(value) or " " in value:
        raise _fail("callback url", value, "control characters or spaces")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise _fail("callback url", value, "scheme must be http or https")
    if parts.username or parts.password or parts.query or parts.fragment or "@" in parts.netloc:
        raise _fail("callback url", value, "no credentials, query or fragment allowed")
    host = parts.hostname or ""
    if not host or not _HOST.fullmatch(host if ":" not in host else f"[{host}]"):
        raise _fail("callback url", value, "bad host")
    try:
        _ = parts.port
    except ValueError as exc:
        raise _fail("callback url", value, "bad port") from exc
    if not _URL_PATH.fullmatch(parts.path) or ".." in parts.path.split("/"):
        raise _fail("callback url", value, "bad path")
    return value


def check_admin_line(value: str) -> str:
    """An admin-provided set-up line (module load, apptainer wrapper): trusted, but one line.

    Admin lines are configuration, not user input, so they are not quoted; they still may not
    contain NUL or line breaks (which would smuggle extra lines) nor look like `#SBATCH` directives.
    """
    if any(c in value for c in "\x00\n\r"):
        raise _fail("set-up line", value, "NUL or line break")
    if value.lstrip().upper().startswith("#SBATCH"):
        raise _fail("set-up line", value, "#SBATCH directives belong to the header")
    return value


def check_argv(argv: list[str], what: str) -> list[str]:
    """A command as an argv list (quoted word by word when rendered)."""
    if not argv:
        raise ScriptValidationError(f"invalid {what}: empty command")
    for word in argv:
        if not word or any(c in word for c in "\x00\n\r"):
            raise _fail(what, word, "empty word, NUL or line break")
    return argv


def check_output_dir(value: str) -> str:
    """The directory for job logs: an absolute path without Slurm's `%` filename patterns."""
    return str(PurePosixPath(check_absolute_path(value, "output dir")))
