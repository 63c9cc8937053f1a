"""A rendered batch script's `#SBATCH` lines as a slurmrestd job description, per OpenAPI version.

slurmrestd does not read `#SBATCH` lines: every option must travel as a property of the submitted
job. The job scripts slurmless renders use a fixed set of options (`slurm.jobscript`); each maps to
its property here, and any other option is refused (`ScriptValidationError`) rather than dropped.

Two shapes: v0.0.38 (Slurm 22.05) takes bare numbers, `nodes` as [min, max], `gres`, a `signal`
string as sbatch spells it and an `environment` object; v0.0.41 and later (23.11+) take
`{"set", "infinite", "number"}` objects, `tres_per_node` ("gres/gpu:1"), the warning signal split
into `kill_warning_*` and an `environment` list of "K=V".
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from typing import Any

from slurm.errors import ScriptValidationError

__all__ = ["DEFAULT_JOB_ENV", "job_description", "sbatch_options"]

DEFAULT_JOB_ENV: Mapping[str, str] = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
"""Environment a job submitted over REST starts with (sbatch would copy the submitter's); the
script exports the rest itself."""

_DIRECTIVE = re.compile(r"^#SBATCH\s+--(?P<key>[a-z][a-z-]*)(?:=(?P<value>\S.*?))?\s*$")
_MEMORY = re.compile(r"^(?P<n>\d+)(?P<unit>[KMGT]?)B?$", re.IGNORECASE)
_SIGNAL = re.compile(r"^(?P<batch>B:)?(?P<sig>[A-Z0-9]+)(?:@(?P<secs>\d+))?$")
_GRES = re.compile(r"^gpu(?::[A-Za-z0-9_.-]+)?:(?P<n>\d+)$")
_MB = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}

_STRINGS = {
    "job-name": "name",
    "comment": "comment",
    "output": "standard_output",
    "error": "standard_error",
    "chdir": "current_working_directory",
    "partition": "partition",
    "qos": "qos",
    "account": "account",
    "constraint": "constraints",
}


def sbatch_options(script: str) -> dict[str, str | None]:
    """The `#SBATCH --key[=value]` options at the head of a script (sbatch stops at the first command)."""
    options: dict[str, str | None] = {}
    for line in script.splitlines()[1:] if script.startswith("#!") else script.splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not stripped.startswith("#SBATCH")):
            continue
        if not stripped.startswith("#SBATCH"):
            break
        match = _DIRECTIVE.match(stripped)
        if match is None:
            raise ScriptValidationError(f"cannot pass this #SBATCH line to slurmrestd: {stripped[:200]!r}")
        options[match["key"]] = match["value"]
    return options


def _int(key: str, value: str | None) -> int:
    if value is None or not value.isdigit():
        raise ScriptValidationError(f"#SBATCH --{key} needs a whole number, got {value!r}")
    return int(value)


def _memory_mb(value: str | None) -> int:
    match = _MEMORY.match(value or "")
    if match is None:
        raise ScriptValidationError(f"#SBATCH --mem={value!r} is not a memory size")
    return max(1, int(int(match["n"]) * _MB[match["unit"].upper()]))


def _number(value: int, *, new: bool) -> Any:
    return {"set": True, "infinite": False, "number": value} if new else value


def job_description(script: str, api_version: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The job properties for `script` in `api_version`'s shape ("v0.0.38", "v0.0.41", ...), script included."""
    new = api_version != "v0.0.38"
    job: dict[str, Any] = {}
    for key, value in sbatch_options(script).items():
        if key in _STRINGS:
            if value is None:
                raise ScriptValidationError(f"#SBATCH --{key} needs a value")
            job[_STRINGS[key]] = value
        elif key == "nodes":
            n = _int(key, value)
            job["nodes"] = str(n) if new else [n, n]
        elif key == "ntasks-per-node":
            job["tasks_per_node"] = _int(key, value)
        elif key == "cpus-per-task":
            job["cpus_per_task"] = _int(key, value)
        elif key == "mem":
            job["memory_per_node"] = _number(_memory_mb(value), new=new)
        elif key in ("time", "time-min"):
            job["time_limit" if key == "time" else "time_minimum"] = _number(_int(key, value), new=new)
        elif key == "no-requeue":
            job["requeue"] = False
        elif key == "requeue":
            job["requeue"] = True
        elif key == "gres":
            match = _GRES.match(value or "")
            if match is None:
                raise ScriptValidationError(f"#SBATCH --gres={value!r}: only gpu[:type]:N is passed to slurmrestd")
            if new:
                job["tres_per_node"] = f"gres/{value}"
            else:
                job["gres"] = value
        elif key == "signal":
            job.update(_signal(value, new=new))
        elif key == "export":
            # NONE: the job starts from DEFAULT_JOB_ENV (plus `env`), which is what a REST submission
            # gets anyway; anything else would need the submitter's environment, which REST does not carry.
            if value != "NONE":
                raise ScriptValidationError(f"#SBATCH --export={value!r}: only NONE is passed to slurmrestd")
        else:
            raise ScriptValidationError(f"#SBATCH --{key} has no slurmrestd equivalent here; nothing was submitted")
    environment = {**DEFAULT_JOB_ENV, **(env or {})}
    if new:
        job["environment"] = [f"{k}={v}" for k, v in environment.items()]
        job["script"] = script
    else:
        job["environment"] = dict(environment)
    return job


def _signal(value: str | None, *, new: bool) -> dict[str, Any]:
    match = _SIGNAL.match(value or "")
    if match is None:
        raise ScriptValidationError(f"#SBATCH --signal={value!r} is not [B:]SIG[@seconds]")
    if not new:
        # v0.0.38 refuses the "B:" prefix ("Invalid SIGNAL specification", 22.05.8): the warning
        # then goes to the job's steps, not to its batch shell. Recorded in the backend matrix.
        number = _signal_number(match["sig"])
        return {"signal": f"{number}" + (f"@{match['secs']}" if match["secs"] else "")}
    out: dict[str, Any] = {"kill_warning_signal": match["sig"]}
    if match["secs"] is not None:
        out["kill_warning_delay"] = _number(int(match["secs"]), new=True)
    if match["batch"]:
        out["kill_warning_flags"] = ["BATCH_JOB"]
    return out


def _signal_number(name: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals["SIG" + name.removeprefix("SIG")])
    except KeyError:
        raise ScriptValidationError(f"unknown signal {name!r}") from None
