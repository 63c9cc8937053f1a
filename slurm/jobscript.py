"""Job scripts that run one slurmless instance (a vLLM-shaped engine) under Slurm.

`JobSpec` holds every value of one job, validated field by field; `render_job_script(spec)`
validates them all again (defence in depth, also for specs built with `model_construct`) and
returns a bash script in three shapes:

* one GPU, or several on one node: the engine gets `--tensor-parallel-size <gpus_per_node>`;
* several nodes: a Ray head on the batch node and one Ray worker per other node (`srun`), then
  the engine with `--tensor-parallel-size <gpus_per_node> --pipeline-parallel-size <nodes>
  --distributed-executor-backend ray`.

Header: `#SBATCH` lines for the job name `<prefix><model>-<instance_id>`, `--comment=slurmless:<id>`
(how `SlurmBackend.jobs()` and reconciliation recognise our jobs), `--signal=B:USR1@<lead>`,
`--time`, `--time-min`, `--gres=gpu:N`, CPUs, memory, partition, QOS, account, constraint,
`--output`, `--chdir`, `--export=NONE` (the job gets none of the launcher's environment),
`--nodes`, `--ntasks-per-node=1` and `--no-requeue`. Those values cannot be quoted (sbatch parses
them itself), so they are restricted to plain words by `slurm.validate`.

Body (`templates/job.sh.tmpl`), the job contract:

1. `set -u`; the values as shell-quoted variables (`shlex.quote`), `PYTHONSAFEPATH=1` for every
   python the job starts, then the admin's set-up lines (module loads, an apptainer wrapper;
   trusted configuration, kept below the header).
2. One background python3 (the registration helper) refuses a job directory that is not private
   and any model path (the source and path-typed engine arguments, `confined_paths`) that no longer
   resolves under `model_roots`: it deregisters with `refused:<what>` and the job exits 78 before
   any engine starts. Otherwise it picks the node's own address (`$SLURMLESS_ADVERTISE_HOST` if the
   admin sets it, else the source address of its route to the launcher) and a free port there,
   hands them and the resolved model path to the script, and registers: `POST <callback_url>/register`
   with `{"instance_id","job_id","host","port"}` and `Authorization: Bearer <callback_token>`,
   retried. Registering while the engine starts saves a python start on the way to ready; the
   launcher probes host:port until the engine answers.
3. Start the engine in the background: `<engine_command> --model <resolved source> --served-model-name
   <name> [parallelism] [allow-listed engine args] --host <node address> --port $PORT`. The
   per-instance API key travels in `VLLM_API_KEY` (read by vLLM and by the simulator), not in argv,
   so other users cannot read it from `ps` on the node.
4. Wait for the registration's outcome; if it never succeeds the job stops its engine and exits 1.
5. `wait` on the engine in a loop (bash runs traps only when `wait` returns, with >128).
   On USR1 (the walltime warning, or a drain request via `scancel --signal=USR1 --batch`):
   `POST /deregister` with reason "walltime-warning", give routers `settle_s` to notice, wait
   until the engine's `/metrics` report no running or waiting requests (at most `drain_s`),
   SIGTERM the engine (SIGKILL after `kill_grace_s`) and exit 0. On TERM (scancel, preemption):
   the same with reason "terminated" and `term_drain_s`. If the engine exits by itself:
   deregister with reason "engine-exited:<code>" and exit with its code.

Multi-node jobs start Ray with a per-job token (`RAY_AUTH_MODE=token`), bound to the nodes'
addresses and without its dashboard (`templates/ray.sh.tmpl`).

Helpers are python3 stdlib one-offs run with `-I -S` (isolated: the working directory and
`PYTHON*` variables never reach `sys.path`; no site-packages, a faster start), reading values from
the environment, never from code text (curl may be missing on compute nodes). The callback token
and API key are written into the script: Slurm keeps batch scripts readable only by the submitting
user and SlurmUser, and the launcher submits them through stdin, so they never touch a shared
filesystem.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from importlib import resources
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slurm.engine_args import EngineArgValue, check_engine_args, path_values
from slurm.errors import ScriptValidationError
from slurm.types import COMMENT_PREFIX
from slurm.validate import (
    check_absolute_path,
    check_admin_line,
    check_argv,
    check_callback_url,
    check_constraint,
    check_instance_id,
    check_job_name_prefix,
    check_model_name,
    check_model_source,
    check_output_dir,
    check_served_model_name,
    check_slurm_word,
    check_token,
)

__all__ = ["VLLM_COMMAND", "JobSpec", "confined_paths", "job_name", "render_job_script"]

#: The production engine: vLLM's OpenAI-compatible server.
VLLM_COMMAND: tuple[str, ...] = ("python3", "-m", "vllm.entrypoints.openai.api_server")

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
# Seconds the USR1 handler needs besides draining: two callbacks and some slack.
_HANDLER_OVERHEAD_S = 15


class JobSpec(BaseModel):
    """Everything one instance's job needs; every field is validated on construction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_id: str
    model_name: str
    model_source: str
    served_model_name: str | None = None
    gpus_per_node: int = Field(default=1, ge=0, le=16)
    nodes: int = Field(default=1, ge=1, le=64)
    cpus_per_task: int = Field(default=4, ge=1, le=1024)
    mem_mb: int = Field(default=16_000, ge=1)
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    constraint: str | None = None
    time_limit_min: int = Field(ge=1, le=366 * 24 * 60)
    time_min_min: int | None = Field(default=None, ge=1)
    #: Seconds between the USR1 warning and the end of the walltime.
    signal_lead_s: int = Field(default=120, ge=10, le=65_535)
    #: Let Slurm send the warning (`--signal`): off for jobs whose owner ends them on time itself (Slurm checks
    #: time limits periodically, so its warning may come up to ~30 s before the lead).
    walltime_signal: bool = True
    #: Seconds after deregistering before draining starts, so routers stop sending work.
    settle_s: int = Field(default=5, ge=0, le=300)
    #: Most seconds to wait for in-flight requests on USR1; default: what the lead time leaves.
    drain_s: int | None = Field(default=None, ge=0)
    #: Most seconds to wait for in-flight requests on TERM (Slurm kills after KillWait anyway).
    term_drain_s: int = Field(default=10, ge=0, le=300)
    #: Seconds between SIGTERM and SIGKILL for the engine.
    kill_grace_s: int = Field(default=15, ge=1, le=600)
    env_setup_lines: tuple[str, ...] = ()
    engine_command: tuple[str, ...] = VLLM_COMMAND
    engine_args: Mapping[str, EngineArgValue] = Field(default_factory=dict)
    #: Extra environment for the engine (e.g. ENGINESIM_* in tests, HF_HOME); values are quoted.
    engine_env: Mapping[str, str] = Field(default_factory=dict)
    callback_url: str
    callback_token: str
    #: Tries per register/deregister call (back-off 1, 2, 4... s, at most 10 s apart).
    callback_attempts: int = Field(default=5, ge=1, le=20)
    engine_api_key: str
    output_dir: str
    job_name_prefix: str = "slurmless-"
    helper_python: str = "python3"
    ray_command: tuple[str, ...] = ("ray",)
    #: Directories model paths must resolve under; the job checks again (symlinks followed) before starting.
    model_roots: tuple[str, ...] = ()
    #: Shared secret of the multi-node Ray cluster (`RAY_AUTH_TOKEN`); required when `nodes > 1`.
    ray_auth_token: str | None = None
    #: Seconds the multi-node launch waits for all Ray workers to join.
    ray_wait_s: int = Field(default=300, ge=1, le=3600)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Self:
        """Build a spec, raising `ScriptValidationError` (not pydantic's error) on bad input."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ScriptValidationError(str(exc)) from exc

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, v: str) -> str:
        return check_instance_id(v)

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v: str) -> str:
        return check_model_name(v)

    @field_validator("model_source")
    @classmethod
    def _model_source(cls, v: str) -> str:
        return check_model_source(v)

    @field_validator("served_model_name")
    @classmethod
    def _served(cls, v: str | None) -> str | None:
        return None if v is None else check_served_model_name(v)

    @field_validator("partition", "qos", "account")
    @classmethod
    def _slurm_word(cls, v: str | None) -> str | None:
        return None if v is None else check_slurm_word(v, "partition/qos/account")

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, v: str | None) -> str | None:
        return None if v is None else check_constraint(v)

    @field_validator("env_setup_lines")
    @classmethod
    def _env_lines(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_admin_line(line) for line in v)

    @field_validator("engine_command", "ray_command")
    @classmethod
    def _argv(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_argv(list(v), "command"))

    @field_validator("engine_args")
    @classmethod
    def _engine_args(cls, v: Mapping[str, EngineArgValue]) -> Mapping[str, EngineArgValue]:
        check_engine_args(v)
        return dict(v)

    @field_validator("engine_env")
    @classmethod
    def _engine_env(cls, v: Mapping[str, str]) -> Mapping[str, str]:
        _check_env(v)
        return dict(v)

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, v: str) -> str:
        return check_callback_url(v)

    @field_validator("callback_token")
    @classmethod
    def _callback_token(cls, v: str) -> str:
        return check_token(v, "callback token")

    @field_validator("engine_api_key")
    @classmethod
    def _api_key(cls, v: str) -> str:
        return check_token(v, "engine API key")

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, v: str) -> str:
        return check_output_dir(v)

    @field_validator("job_name_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_job_name_prefix(v)

    @field_validator("helper_python")
    @classmethod
    def _helper_python(cls, v: str) -> str:
        return v if v == "python3" else check_absolute_path(v, "helper python")

    @field_validator("model_roots")
    @classmethod
    def _roots(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_absolute_path(r, "model root") for r in v)

    @field_validator("ray_auth_token")
    @classmethod
    def _ray_token(cls, v: str | None) -> str | None:
        return None if v is None else check_token(v, "Ray auth token")

    @model_validator(mode="after")
    def _times(self) -> Self:
        _check_times(self)
        _check_confined(self)
        return self

    @property
    def effective_drain_s(self) -> int:
        """Seconds the USR1 handler waits for in-flight requests."""
        if self.drain_s is not None:
            return self.drain_s
        return max(0, self.signal_lead_s - self.settle_s - self.kill_grace_s - _HANDLER_OVERHEAD_S)


def _check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not _ENV_NAME.fullmatch(key) or key.startswith(("SLURM", "VLLM_API_KEY")):
            raise ScriptValidationError(f"invalid engine env name {key!r}")
        if any(c in value for c in "\x00\n\r"):
            raise ScriptValidationError(f"invalid engine env value for {key}: NUL or line break")


def _check_times(spec: JobSpec) -> None:
    if spec.time_min_min is not None and spec.time_min_min > spec.time_limit_min:
        raise ScriptValidationError("time_min_min exceeds time_limit_min")
    shortest_s = 60 * (spec.time_min_min or spec.time_limit_min)
    if spec.signal_lead_s >= shortest_s:
        raise ScriptValidationError("signal_lead_s must be shorter than the (minimum) time limit")
    needed_s = spec.settle_s + spec.effective_drain_s + spec.kill_grace_s
    if needed_s > spec.signal_lead_s:
        raise ScriptValidationError(
            f"settle_s + drain_s + kill_grace_s = {needed_s}s exceeds signal_lead_s={spec.signal_lead_s}s"
        )


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def confined_paths(spec: JobSpec) -> list[str]:
    """Every path the engine will open (the model first, when it is a path): each must lie under a model root."""
    paths = [spec.model_source] if spec.model_source.startswith("/") else []
    return paths + [v for _, v in sorted(path_values(spec.engine_args).items())]


def _check_confined(spec: JobSpec) -> None:
    for path in confined_paths(spec):
        if not any(_under(path, root) for root in spec.model_roots):
            raise ScriptValidationError(f"path {path!r} is outside the model roots ({', '.join(spec.model_roots)})")
    if spec.nodes > 1 and spec.ray_auth_token is None:
        raise ScriptValidationError("a multi-node job needs a Ray auth token")


def _revalidate(spec: JobSpec) -> None:
    """Check every field again, whatever path built the spec."""
    check_instance_id(spec.instance_id)
    check_model_name(spec.model_name)
    check_model_source(spec.model_source)
    if spec.served_model_name is not None:
        check_served_model_name(spec.served_model_name)
    for word in (spec.partition, spec.qos, spec.account):
        if word is not None:
            check_slurm_word(word, "partition/qos/account")
    if spec.constraint is not None:
        check_constraint(spec.constraint)
    for line in spec.env_setup_lines:
        check_admin_line(line)
    check_argv(list(spec.engine_command), "engine command")
    check_argv(list(spec.ray_command), "ray command")
    check_engine_args(spec.engine_args)
    _check_env(spec.engine_env)
    check_callback_url(spec.callback_url)
    check_token(spec.callback_token, "callback token")
    check_token(spec.engine_api_key, "engine API key")
    check_output_dir(spec.output_dir)
    check_job_name_prefix(spec.job_name_prefix)
    if spec.helper_python != "python3":
        check_absolute_path(spec.helper_python, "helper python")
    for root in spec.model_roots:
        check_absolute_path(root, "model root")
    if spec.ray_auth_token is not None:
        check_token(spec.ray_auth_token, "Ray auth token")
    ints = (spec.gpus_per_node, spec.nodes, spec.cpus_per_task, spec.mem_mb, spec.time_limit_min)
    if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ints):
        raise ScriptValidationError("resource counts must be non-negative integers")
    _check_times(spec)
    _check_confined(spec)


def job_name(spec: JobSpec) -> str:
    """The Slurm job name: `<prefix><model>-<instance_id>`."""
    return f"{spec.job_name_prefix}{spec.model_name}-{spec.instance_id}"


def _header(spec: JobSpec) -> list[str]:
    name = job_name(spec)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --comment={COMMENT_PREFIX}{spec.instance_id}",
        f"#SBATCH --nodes={spec.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --cpus-per-task={spec.cpus_per_task}",
        f"#SBATCH --mem={spec.mem_mb}M",
        f"#SBATCH --time={spec.time_limit_min}",
        *([f"#SBATCH --signal=B:USR1@{spec.signal_lead_s}"] if spec.walltime_signal else []),
        f"#SBATCH --output={spec.output_dir.rstrip('/')}/{name}-%j.out",
        f"#SBATCH --chdir={spec.output_dir}",
        "#SBATCH --export=NONE",
        "#SBATCH --no-requeue",
    ]
    if spec.gpus_per_node > 0:
        lines.append(f"#SBATCH --gres=gpu:{spec.gpus_per_node}")
    if spec.time_min_min is not None:
        lines.append(f"#SBATCH --time-min={spec.time_min_min}")
    for flag, value in (
        ("partition", spec.partition),
        ("qos", spec.qos),
        ("account", spec.account),
        ("constraint", spec.constraint),
    ):
        if value is not None:
            lines.append(f"#SBATCH --{flag}={value}")
    return lines


def _engine_argv(spec: JobSpec) -> list[str]:
    argv = [*spec.engine_command, "--model", spec.model_source]
    argv += ["--served-model-name", spec.served_model_name or spec.model_name]
    if spec.nodes > 1:
        argv += ["--tensor-parallel-size", str(max(1, spec.gpus_per_node))]
        argv += ["--pipeline-parallel-size", str(spec.nodes), "--distributed-executor-backend", "ray"]
    elif spec.gpus_per_node > 1:
        argv += ["--tensor-parallel-size", str(spec.gpus_per_node)]
    return argv + check_engine_args(spec.engine_args)


def _array(name: str, argv: list[str]) -> str:
    return f"{name}=(" + " ".join(shlex.quote(w) for w in argv) + ")"


def _template(name: str) -> str:
    return resources.files("slurm.templates").joinpath(name).read_text(encoding="utf-8")


def _fill(template: str, values: Mapping[str, str]) -> str:
    # One pass: text inserted for one placeholder is never scanned for others.
    return _PLACEHOLDER.sub(lambda m: values[m[1]], template)


def render_job_script(spec: JobSpec) -> str:
    """The batch script for `spec` (validated again here); submit it with `SlurmBackend.submit`."""
    _revalidate(spec)
    q = shlex.quote
    argv = _engine_argv(spec)
    model_index = len(spec.engine_command) + 1 if spec.model_source.startswith("/") else -1
    variables = [
        f"SLURMLESS_INSTANCE_ID={q(spec.instance_id)}",
        f"SLURMLESS_CALLBACK_URL={q(spec.callback_url)}",
        f"SLURMLESS_CALLBACK_TOKEN={q(spec.callback_token)}",
        f"SLURMLESS_CALLBACK_ATTEMPTS={int(spec.callback_attempts)}",
        f"VLLM_API_KEY={q(spec.engine_api_key)}",
        f"SLURMLESS_PYTHON={q(spec.helper_python)}",
        f"SLURMLESS_SETTLE_S={int(spec.settle_s)}",
        f"SLURMLESS_DRAIN_S={int(spec.effective_drain_s)}",
        f"SLURMLESS_TERM_DRAIN_S={int(spec.term_drain_s)}",
        f"SLURMLESS_KILL_GRACE_S={int(spec.kill_grace_s)}",
        _array("SLURMLESS_ENGINE_ARGV", argv),
        f"SLURMLESS_MODEL_INDEX={model_index}",
        f"SLURMLESS_MODEL_ROOTS={q(':'.join(spec.model_roots))}",
        _array("SLURMLESS_CONFINED", confined_paths(spec)),
    ]
    variables += [f"export {key}={q(value)}" for key, value in sorted(spec.engine_env.items())]
    launch, cleanup = ":", ":"
    if spec.nodes > 1:
        variables.append(_array("SLURMLESS_RAY", list(spec.ray_command)))
        variables.append(f"SLURMLESS_RAY_AUTH_TOKEN={q(spec.ray_auth_token or '')}")
        launch = _fill(
            _template("ray.sh.tmpl"),
            {
                "GPUS_PER_NODE": str(int(spec.gpus_per_node)),
                "WORKER_NODES": str(int(spec.nodes) - 1),
                "TOTAL_GPUS": str(int(spec.gpus_per_node) * int(spec.nodes)),
                "RAY_WAIT_S": str(int(spec.ray_wait_s)),
            },
        )
        cleanup = (
            'kill -TERM "${SLURMLESS_RAY_WORKERS_PID:-}" "${SLURMLESS_RAY_HEAD_PID:-}" 2>/dev/null || true\n'
            '  "${SLURMLESS_RAY[@]}" stop --force >/dev/null 2>&1 || true'
        )
    body = _fill(
        _template("job.sh.tmpl"),
        {
            "VARIABLES": "\n".join(variables),
            "ENV_SETUP": "\n".join(spec.env_setup_lines) or ":",
            "LAUNCH": launch,
            "CLEANUP": cleanup,
        },
    )
    return "\n".join(_header(spec)) + "\n\n" + body
