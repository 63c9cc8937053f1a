"""`SlurmCLI`: the Slurm backend that runs `sbatch`, `squeue`, `scancel` and `sinfo`.

Each call runs one subprocess with a timeout (killed when it expires) and is retried with
tenacity when the controller is transiently unreachable. Errors are mapped once, in `_run`:

* stderr naming an unreachable/busy controller, or a JSON `errors` list (22.05 exits 0 then)
  -> `SlurmUnavailable` (retried);
* the timeout -> `SlurmTimeout` (retried);
* submissions (`submit`) are retried only when the controller was never reached ("Unable to
  contact", "Connection refused"): after a timeout or a lost reply the job may exist, and a
  duplicate is worse than a failed submission the launcher retries after reconciling with `jobs()`;
* "Invalid job id" and "already completing or completed" -> `JobNotFound`;
* other non-zero exits -> `SlurmCommandError`.

`jobs()` runs one `squeue --noheader --user=<us> --states=all --Format=...` and keeps the jobs whose
name starts with the prefix: a fifth of `squeue --json`'s time and a 37th of its output with 200
jobs (see `slurm.parse`), and only this user's jobs on a shared cluster (22.05's `--json` ignores
every filter).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from slurm.errors import JobNotFound, SlurmCommandError, SlurmTimeout, SlurmUnavailable
from slurm.parse import (
    SQUEUE_ENV,
    SQUEUE_FORMAT,
    parse_sinfo,
    parse_squeue_lines,
    parse_test_only,
    partitions_from_nodes,
)
from slurm.retry import slurm_retrying
from slurm.types import NodeInfo, Partition, SlurmJob, StartEstimate
from slurm.validate import check_slurm_word

__all__ = ["CommandHook", "SlurmCLI"]

T = TypeVar("T")

#: Called after every command with (command name, seconds taken, succeeded).
CommandHook = Callable[[str, float, bool], None]

_TRANSIENT = re.compile(
    r"Socket timed out|Unable to contact slurm controller|Connection refused|"
    r"Zero Bytes were transmitted or received|Slurm temporarily unable|"
    r"Resource temporarily unavailable|Communication connection failure|"
    r"Transport endpoint is not connected|Slurmctld is not responding|"
    r"Invalid authentication credential|Socket operation timed out",
    re.IGNORECASE,
)
# Of the transient failures, those that mean the controller never saw the request: only these
# are safe to retry for a submission.
_NOT_REACHED = re.compile(r"Unable to contact slurm controller|Connection refused", re.IGNORECASE)
_NOT_FOUND = re.compile(r"Invalid job id|already completing or completed|Job does not exist", re.IGNORECASE)
_SIGNAL_NAME = re.compile(r"^(?:SIG)?[A-Z0-9]{2,8}$")


class SlurmCLI:
    """A `SlurmBackend` built on the Slurm command-line tools.

    Args:
        env: extra environment for every command (e.g. `SLURM_CONF`), on top of ours.
        bin_dir: directory holding the Slurm binaries; None looks them up on PATH.
        command_timeout_s: how long one command may run before it is killed.
        job_name_prefix: names of slurmless jobs start with this; `jobs()` keeps only those.
        retry_attempts: tries per call for transient controller errors.
        retry_wait_s: first back-off between tries (doubles each time, capped at 8x).
        on_command: hook called after each command, for metrics.
        command_prefix: argv put before every command (a chroot holding another Slurm release, an
            `ssh login-node`); the command itself is then looked up by the prefix, not on our PATH.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        bin_dir: Path | None = None,
        command_timeout_s: float = 30.0,
        job_name_prefix: str = "slurmless-",
        *,
        retry_attempts: int = 3,
        retry_wait_s: float = 0.5,
        on_command: CommandHook | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.env = dict(env or {})
        self.bin_dir = bin_dir
        self.command_timeout_s = command_timeout_s
        self.job_name_prefix = job_name_prefix
        self.retry_attempts = retry_attempts
        self.retry_wait_s = retry_wait_s
        self.on_command = on_command
        self.command_prefix = tuple(command_prefix)
        #: Commands run, by name ("sbatch", "squeue", ...), including retries.
        self.calls: Counter[str] = Counter()
        #: Commands that failed, by name.
        self.failures: Counter[str] = Counter()

    # --- the SlurmBackend interface -------------------------------------------------------------

    async def submit(self, script: str) -> int:
        """Submit a rendered batch script through `sbatch --parsable` on stdin; return the job id."""
        return await self._call("sbatch", ["--parsable"], _parse_job_id, stdin=script, retry_on=(_SubmitNotReached,))

    async def jobs(self) -> list[SlurmJob]:
        """This user's jobs whose name starts with `job_name_prefix`, from one `squeue`.

        `--states=all` lists recently ended jobs too (for `MinJobAge`): how a job ended is read there.
        """
        args = ["--noheader", f"--user={os.getuid()}", "--states=all", f"--Format={SQUEUE_FORMAT}"]
        jobs = await self._call("squeue", args, lambda out, _: parse_squeue_lines(out), env=SQUEUE_ENV)
        return [j for j in jobs if j.name.startswith(self.job_name_prefix)]

    async def job(self, job_id: int) -> SlurmJob | None:
        """One slurmless job by id, or None if the controller no longer lists it."""
        return next((j for j in await self.jobs() if j.job_id == job_id), None)

    async def cancel(self, job_id: int) -> None:
        """`scancel <id>`; a job that has already ended is not an error."""
        try:
            await self._call("scancel", [str(job_id)], _ignore)
        except JobNotFound:
            return

    async def signal(self, job_id: int, signal: str, *, batch_only: bool = True) -> None:
        """`scancel --signal=<sig> [--batch] <id>`; `JobNotFound` if the job is gone."""
        if not _SIGNAL_NAME.fullmatch(signal):
            raise ValueError(f"not a signal name: {signal!r}")
        args = [f"--signal={signal}"]
        if batch_only:
            args.append("--batch")
        await self._call("scancel", [*args, str(job_id)], _ignore)

    async def estimate_start(
        self, script: str, *, partition: str | None = None, qos: str | None = None
    ) -> StartEstimate:
        """`sbatch --test-only` on the script; command-line placement overrides its #SBATCH lines."""
        args = ["--test-only"]
        if partition:
            args.append(f"--partition={check_slurm_word(partition, 'partition')}")
        if qos:
            args.append(f"--qos={check_slurm_word(qos, 'qos')}")
        estimate = await self._call("sbatch", args, lambda out, err: parse_test_only(err + "\n" + out), stdin=script)
        if qos:
            estimate = StartEstimate(
                start_time=estimate.start_time,
                partition=estimate.partition,
                node_list=estimate.node_list,
                processors=estimate.processors,
                qos=qos,
            )
        return estimate

    async def nodes(self) -> list[NodeInfo]:
        """Every node, from one `sinfo -N --json`."""
        return await self._call("sinfo", ["-N", "--json"], lambda out, _: parse_sinfo(out))

    async def node_addresses(self, node: str) -> tuple[str, ...]:
        """The node's name, address (`NodeAddr`) and hostname (`NodeHostname`), from one `sinfo -N -n`."""
        check_slurm_word(node, "node name")
        out = await self._call("sinfo", ["--noheader", "-N", f"--nodes={node}", "--format=%N|%o|%n"], _first_line)
        return tuple(dict.fromkeys(w for w in [node, *out.split("|")] if w and w != "(null)"))

    async def partitions(self) -> list[Partition]:
        """Every partition with GPU totals, from one `sinfo -N --json`."""
        return partitions_from_nodes(await self.nodes())

    # --- running commands -----------------------------------------------------------------------

    def _executable(self, name: str) -> str:
        return str(self.bin_dir / name) if self.bin_dir is not None else name

    async def _call(
        self,
        name: str,
        args: list[str],
        parse: Callable[[str, str], T],
        *,
        stdin: str | None = None,
        retry_on: tuple[type[Exception], ...] = (SlurmUnavailable, SlurmTimeout),
        env: Mapping[str, str] | None = None,
    ) -> T:
        """Run one command (with retries) and parse its (stdout, stderr) inside each attempt."""
        async for attempt in slurm_retrying(self.retry_attempts, self.retry_wait_s, retry_on):
            with attempt:
                return await self._run(name, args, parse, stdin=stdin, env=env)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _run(
        self,
        name: str,
        args: list[str],
        parse: Callable[[str, str], T],
        *,
        stdin: str | None,
        env: Mapping[str, str] | None = None,
    ) -> T:
        self.calls[name] += 1
        started = time.monotonic()
        ok = False
        try:
            out, err = await self._exec(name, args, stdin, env)
            # Parsing counts as part of the command: 22.05 reports a dead controller in the JSON.
            result = parse(out, err)
            ok = True
            return result
        finally:
            if not ok:
                self.failures[name] += 1
            if self.on_command is not None:
                self.on_command(name, time.monotonic() - started, ok)

    async def _exec(
        self, name: str, args: list[str], stdin: str | None, extra_env: Mapping[str, str] | None = None
    ) -> tuple[str, str]:
        """Run the command once; map its failure modes to the error tree."""
        env = {**command_env(os.environ), **self.env, **(extra_env or {})}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command_prefix,
                self._executable(name),
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except FileNotFoundError as exc:
            raise SlurmUnavailable(name, f"command not found: {exc}") from exc
        try:
            out_b, err_b = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None),
                timeout=self.command_timeout_s,
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SlurmTimeout(name, self.command_timeout_s) from None
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        out, err = out_b.decode(errors="replace"), err_b.decode(errors="replace")
        rc = proc.returncode if proc.returncode is not None else -1
        if rc != 0:
            raise self._classify(name, rc, err or out)
        return out, err

    @staticmethod
    def _classify(name: str, rc: int, stderr: str) -> Exception:
        if _NOT_FOUND.search(stderr):
            return JobNotFound(name, rc, stderr)
        if _NOT_REACHED.search(stderr):
            return _SubmitNotReached(name, stderr)
        if _TRANSIENT.search(stderr):
            return SlurmUnavailable(name, stderr)
        return SlurmCommandError(name, rc, stderr)


class _SubmitNotReached(SlurmUnavailable):
    """The controller never received the request, so even a submission may be retried."""


_PASSED_ON = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR"})
_PASSED_PREFIXES = ("SLURM_", "SBATCH_", "SQUEUE_", "SINFO_", "SCANCEL_", "SCONTROL_", "MUNGE", "LC_")


def command_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What the Slurm commands get of this process's environment: Slurm's own variables and the basics.

    Even with `--export=NONE`, sbatch hands every variable whose name starts with "SLURM" to the
    job, and slurmless's settings (a Redis URL with its password, the admin token) are all
    `SLURMLESS_*`; no other variable of the launcher's reaches a command or a job either.
    """
    return {k: v for k, v in environ.items() if k in _PASSED_ON or k.startswith(_PASSED_PREFIXES)}


def _first_line(out: str, err: str) -> str:
    lines = out.strip().splitlines()
    return lines[0].strip() if lines else ""


def _ignore(out: str, err: str) -> None:
    return None


def _parse_job_id(out: str, err: str) -> int:
    # --parsable prints "<id>" or "<id>;<cluster>".
    lines = out.strip().splitlines()
    job_id = lines[-1].split(";", 1)[0] if lines else ""
    if not job_id.isdigit():
        raise SlurmCommandError("sbatch", 0, f"unexpected --parsable output: {out!r} {err!r}")
    return int(job_id)
