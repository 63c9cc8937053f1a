"""`SlurmPyslurm`: the Slurm backend on the pyslurm library (libslurm's RPCs, no subprocess).

An optional extra (`slurmless[pyslurm]`): pyslurm is built per Slurm release and refuses any other,
so this backend is for sites whose Slurm matches a pyslurm release (tested: pyslurm 24.11.0 on
Slurm 24.11, `scripts/pyslurm-build.sh`). It uses pyslurm's own API: `JobSubmitDescription` with
the script's `#SBATCH` lines as its attributes (`submit_attributes`), `Jobs.load()`,
`Job.send_signal()`, `Nodes.load()`.

libslurm calls block, so each runs in a worker thread, one at a time, with a timeout. Errors map to
the one tree: an RPC error naming an unknown job -> `JobNotFound`; an unreachable or busy controller
-> `SlurmUnavailable` (retried with backoff); any other RPC error -> `SlurmCommandError`; anything
else pyslurm raises -> `SlurmUnavailable` with its message, never an empty job list.

The mapping from pyslurm's objects to `SlurmJob`/`NodeInfo` (`job_from_pyslurm`, `node_from_pyslurm`)
reads attributes only, so unit tests feed it plain records.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from slurm.cli_backend import CommandHook, SlurmCLI
from slurm.errors import (
    JobNotFound,
    NotSupported,
    ScriptValidationError,
    SlurmCommandError,
    SlurmError,
    SlurmTimeout,
    SlurmUnavailable,
)
from slurm.parse import normalise_job_state, partitions_from_nodes
from slurm.rest_job import DEFAULT_JOB_ENV, sbatch_options
from slurm.retry import slurm_retrying
from slurm.types import NodeInfo, Partition, SlurmJob, StartEstimate
from slurm.validate import check_slurm_word

__all__ = ["SlurmPyslurm", "job_from_pyslurm", "node_from_pyslurm", "submit_attributes"]

_ATTRIBUTES = {
    "job-name": "name",
    "comment": "comment",
    "output": "standard_output",
    "error": "standard_error",
    "chdir": "working_directory",
    "partition": "partitions",  # pyslurm's own --partition mapping names a missing attribute
    "qos": "qos",
    "account": "account",
    "constraint": "constraints",
    "mem": "memory_per_node",
    "gres": "gres_per_node",
}
_NUMBERS = {
    "nodes": "nodes",
    "ntasks-per-node": "ntasks_per_node",
    "cpus-per-task": "cpus_per_task",
    "time": "time_limit",
    "time-min": "time_limit_min",
}

T = TypeVar("T")


class SlurmPyslurm:
    """A `SlurmBackend` on pyslurm (imported at the first call, after `env` is in the environment).

    Args:
        env: environment libslurm reads when pyslurm is imported (`SLURM_CONF`).
        call_timeout_s: how long one libslurm call may take.
        job_name_prefix: names of slurmless jobs start with this; `jobs()` keeps only those.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        call_timeout_s: float = 30.0,
        job_name_prefix: str = "slurmless-",
        retry_attempts: int = 3,
        retry_wait_s: float = 0.5,
        on_command: CommandHook | None = None,
        module: Any = None,
    ) -> None:
        self.env = dict(env or {})
        self.call_timeout_s = call_timeout_s
        self.job_name_prefix = job_name_prefix
        self.retry_attempts = retry_attempts
        self.retry_wait_s = retry_wait_s
        self.on_command = on_command
        self._pyslurm = module
        self._lock = asyncio.Lock()
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    # --- the SlurmBackend interface -------------------------------------------------------------

    async def submit(self, script: str) -> int:
        attributes = submit_attributes(script)

        def run(ps: Any) -> int:
            # Like sbatch: --export=NONE starts from a minimal environment, otherwise ours is exported
            # (pyslurm 24.11.0's own "ALL" default reaches slurmctld empty: "batch job cannot run
            # without an environment").
            # pyslurm takes the script as a path (it tests `Path(script).is_file()` first, which a
            # whole script fails with "File name too long").
            with tempfile.NamedTemporaryFile("w", prefix="slurmless-job-", suffix=".sh") as f:
                f.write(script)
                f.flush()
                desc = ps.JobSubmitDescription(script=f.name, **{"environment": dict(os.environ), **attributes})
                return int(desc.submit())

        # A submission is not retried: after a lost reply the job may exist (as for the CLI).
        return await self._call("submit", run, retry=False)

    async def jobs(self) -> list[SlurmJob]:
        def run(ps: Any) -> list[SlurmJob]:
            return [job_from_pyslurm(j) for j in ps.Jobs.load().values()]

        jobs = await self._call("jobs", run)
        me = _user_name()
        return [j for j in jobs if j.name.startswith(self.job_name_prefix) and j.user_name in ("", me)]

    async def job(self, job_id: int) -> SlurmJob | None:
        return next((j for j in await self.jobs() if j.job_id == job_id), None)

    async def cancel(self, job_id: int) -> None:
        try:
            await self._call("cancel", lambda ps: ps.Job(int(job_id)).cancel())
        except JobNotFound:
            return

    async def signal(self, job_id: int, signal: str, *, batch_only: bool = True) -> None:
        steps = "batch" if batch_only else "all"
        name = signal if signal.startswith("SIG") else f"SIG{signal}"
        await self._call("signal", lambda ps: ps.Job(int(job_id)).send_signal(name, steps=steps))

    async def estimate_start(
        self, script: str, *, partition: str | None = None, qos: str | None = None
    ) -> StartEstimate:
        """pyslurm 24.11 exposes no will-run call: always `NotSupported` (placement keeps its first choice)."""
        raise NotSupported("pyslurm", 0, "no start estimates through pyslurm (no will-run call)")

    async def nodes(self) -> list[NodeInfo]:
        def run(ps: Any) -> list[NodeInfo]:
            # A node's allocated GRES are empty in pyslurm unless slurmdbd tracks gres/gpu TRES:
            # count the GPUs of the jobs running on it instead.
            used: Counter[str] = Counter()
            for job in ps.Jobs.load().values():
                if _text(job.state) == "RUNNING":
                    per_node = _gpus(job.gres_per_node)[0]
                    for node in _node_names(ps, _text(job.allocated_nodes)):
                        used[node] += per_node
            return [node_from_pyslurm(n, gpus_used=used.get(_text(n.name))) for n in ps.Nodes.load().values()]

        return await self._call("nodes", run)

    async def node_addresses(self, node: str) -> tuple[str, ...]:
        """The node's name, address and hostname, from `pyslurm.Node.load`."""
        check_slurm_word(node, "node name")

        def run(ps: Any) -> tuple[str, ...]:
            record = ps.Node.load(node)
            words = [node, _text(record.address), _text(record.hostname)]
            return tuple(dict.fromkeys(w for w in words if w and w != "(null)"))

        return await self._call("node", run)

    async def partitions(self) -> list[Partition]:
        return partitions_from_nodes(await self.nodes())

    # --- calls ----------------------------------------------------------------------------------

    def _module(self) -> Any:
        if self._pyslurm is None:
            os.environ.update(self.env)  # libslurm reads SLURM_CONF when pyslurm is imported
            try:
                import pyslurm  # type: ignore[import-not-found,unused-ignore]
            except ImportError as exc:
                raise SlurmUnavailable("pyslurm", f"cannot import pyslurm: {exc}") from exc
            self._pyslurm = pyslurm
        return self._pyslurm

    async def _call(self, what: str, fn: Callable[[Any], T], *, retry: bool = True) -> T:
        async for attempt in slurm_retrying(
            self.retry_attempts if retry else 1, self.retry_wait_s, (SlurmUnavailable, SlurmTimeout)
        ):
            with attempt:
                return await self._once(what, fn)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _once(self, what: str, fn: Callable[[Any], T]) -> T:
        self.calls[what] += 1
        started = time.monotonic()
        ok = False
        name = f"pyslurm {what}"
        try:
            async with self._lock:
                ps = self._module()
                try:
                    result = await asyncio.wait_for(asyncio.to_thread(fn, ps), timeout=self.call_timeout_s)
                except TimeoutError:
                    raise SlurmTimeout(name, self.call_timeout_s) from None
                except SlurmError:
                    raise
                except Exception as exc:
                    raise _classify(name, ps, exc) from exc
            ok = True
            return result
        finally:
            if not ok:
                self.failures[what] += 1
            if self.on_command is not None:
                self.on_command(name, time.monotonic() - started, ok)


def submit_attributes(script: str) -> dict[str, Any]:
    """`JobSubmitDescription` attributes for the script's `#SBATCH` options.

    Not pyslurm's `load_sbatch_options()`: in 24.11.0 it reads only a file, passes `--time` on as
    text (TypeError in submit), refuses signal names without "SIG" and sets `--partition` on an
    attribute that does not exist (it is `partitions`).
    """
    out: dict[str, Any] = {}
    for key, value in sbatch_options(script).items():
        if key in _ATTRIBUTES and value is not None:
            out[_ATTRIBUTES[key]] = value
        elif key in _NUMBERS and value is not None and value.isdigit():
            out[_NUMBERS[key]] = int(value)
        elif key == "export" and value == "NONE":
            out["environment"] = dict(DEFAULT_JOB_ENV)
        elif key in ("no-requeue", "requeue"):
            out["is_requeueable"] = key == "requeue"
        elif key == "signal" and value:
            batch, _, rest = value.rpartition(":")
            out["signal"] = (
                (f"{batch}:" if batch else "") + ("" if rest.startswith("SIG") or rest[:1].isdigit() else "SIG") + rest
            )
        else:
            raise ScriptValidationError(f"#SBATCH --{key} has no pyslurm equivalent here; nothing was submitted")
    return out


def _classify(name: str, ps: Any, exc: Exception) -> SlurmError:
    message = str(getattr(exc, "msg", None) or exc) or type(exc).__name__
    rpc_error = getattr(ps, "RPCError", None)
    if rpc_error is not None and isinstance(exc, rpc_error):
        # The same words the command-line tools print, mapped the same way.
        mapped = SlurmCLI._classify(name, 1, message)
        assert isinstance(mapped, SlurmError)
        return mapped
    if isinstance(exc, ValueError) and name.endswith("submit"):
        return SlurmCommandError(name, 1, f"pyslurm refused the job: {message}")
    if "Invalid job id" in message:
        return JobNotFound(name, 1, message)
    return SlurmUnavailable(name, f"{type(exc).__name__}: {message}")


def _node_names(ps: Any, nodes: str) -> list[str]:
    """Node names of a job's node list ("n[01-02],m3"), through pyslurm's expander when it has one."""
    if not nodes:
        return []
    if "[" not in nodes:
        return nodes.split(",")
    expand = getattr(getattr(ps, "utils", None), "expand_range_str", None)
    try:
        return [str(n) for n in expand(nodes)] if callable(expand) else []
    except Exception:
        return []


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return ""


def _time(value: Any) -> datetime | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def job_from_pyslurm(job: Any) -> SlurmJob:
    """A `SlurmJob` from a `pyslurm.Job` (attributes only)."""
    state, flags = normalise_job_state(_text(job.state))
    reason = _text(job.state_reason)
    return SlurmJob(
        job_id=int(job.id),
        name=_text(job.name),
        state=state,
        state_flags=flags,
        reason=None if reason in ("", "None") else reason,
        comment=_text(job.comment),
        partition=_text(job.partition),
        qos=_text(job.qos),
        account=_text(job.account),
        user_name=_text(job.user_name),
        node_list=_text(job.allocated_nodes),
        node_count=_int(job.num_nodes),
        batch_host=_text(job.batch_host),
        time_limit_min=_int(job.time_limit),
        time_min_min=_int(job.time_limit_min) or None,
        submit_time=_time(job.submit_time),
        start_time=_time(job.start_time),
        end_time=_time(job.end_time),
        exit_code=_int(job.exit_code),
        exit_signal=_int(job.exit_code_signal) or None,
    )


def _gpus(gres: Any) -> tuple[int, str]:
    """(GPU count, "gpu:N" text) from pyslurm's gres dict ({"gpu": 4}, {"gpu:a100": 4}, {"gres/gpu": 2})."""
    if not isinstance(gres, Mapping):
        return 0, ""
    # Nodes key GRES as "gpu" or "gpu:a100", jobs as "gres/gpu".
    items = {str(k).removeprefix("gres/"): v for k, v in gres.items()}
    items = {k: v for k, v in items.items() if k.split(":")[0] == "gpu"}
    total = sum(int(v) for v in items.values() if isinstance(v, int))
    return total, ",".join(f"{k}:{v}" for k, v in items.items())


def node_from_pyslurm(node: Any, *, gpus_used: int | None = None) -> NodeInfo:
    """A `NodeInfo` from a `pyslurm.Node` (attributes only); `gpus_used` overrides its allocated GRES."""
    gpus_total, gres = _gpus(node.configured_gres)
    allocated, gres_used = _gpus(node.allocated_gres)
    if gpus_used is None:
        gpus_used = allocated
    elif gpus_used and not gres_used:
        gres_used = f"gpu:{gpus_used}"
    words = [w.lower() for w in _text(node.state).replace("+", " ").split() if w]
    return NodeInfo(
        name=_text(node.name),
        state=tuple(words),
        partitions=tuple(_text(p) for p in node.partitions or []),
        cpus_total=_int(node.total_cpus) or 0,
        cpus_alloc=_int(node.allocated_cpus) or 0,
        mem_total_mb=_int(node.real_memory) or 0,
        mem_alloc_mb=_int(node.allocated_memory) or 0,
        gpus_total=gpus_total,
        gpus_used=gpus_used,
        gres=gres,
        gres_used=gres_used,
        features=tuple(_text(f) for f in node.active_features or []),
    )
