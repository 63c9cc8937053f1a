"""Pure parsers for Slurm command output, across the JSON shapes of 22.05 and 23.x/24.x.

The shapes differ in three ways that matter here:

* `job_state` is a string in 22.05 (`"RUNNING"`) and a list of words from 23.02 on
  (`["PENDING", "REQUEUED"]`);
* numbers are bare in 22.05 (with 4294967294/4294967295 meaning NO_VAL/INFINITE, and 0 meaning
  "no time") and `{"set": bool, "infinite": bool, "number": int}` objects from 23.02 on;
* `sinfo --json` lists `nodes` in 22.05 and `sinfo` entries (one per partition and node group,
  with nested `partition`, `node`, `nodes`, `cpus`, `gres` objects) from 23.02 on.

Both report failures to reach the controller only in an `errors` list (exit status 0 in 22.05);
a non-empty `errors` list raises `SlurmUnavailable`.

The CLI backend lists jobs with `squeue --Format` instead (`SQUEUE_FORMAT`, `parse_squeue_lines`):
with 200 jobs `squeue --json` printed 750 KB in 67 ms on the local cluster, the same fields as
delimited text 20 KB in 11 ms, and 22.05's `--json` ignores `--user`, so on a shared cluster it
prints every user's jobs. `parse_squeue` stays for JSON producers (slurmrestd speaks the same
shapes).

Nothing here runs a command: the CLI backend feeds these functions, and tests feed them recorded
output from both generations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

import orjson

from slurm.errors import SlurmParseError, SlurmUnavailable
from slurm.types import JobState, NodeInfo, Partition, SlurmJob, StartEstimate

__all__ = [
    "count_gpus",
    "normalise_job_state",
    "parse_sinfo",
    "parse_squeue",
    "parse_squeue_lines",
    "parse_test_only",
    "partitions_from_nodes",
]

# Slurm's sentinels for 32-bit fields in the 22.05 JSON (NO_VAL and INFINITE).
_NO_VAL32 = 0xFFFFFFFE
_INFINITE32 = 0xFFFFFFFF
_NO_VAL16 = 0xFFFE
_INFINITE16 = 0xFFFF

_BASE_STATES: Mapping[str, JobState] = {
    "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "SUSPENDED": JobState.SUSPENDED,
    "COMPLETE": JobState.COMPLETED,
    "COMPLETED": JobState.COMPLETED,
    "CANCELLED": JobState.CANCELLED,
    "FAILED": JobState.FAILED,
    "TIMEOUT": JobState.TIMEOUT,
    "NODE_FAIL": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
    "BOOT_FAIL": JobState.BOOT_FAIL,
    "DEADLINE": JobState.DEADLINE,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
}


def _load(text: str | bytes | Mapping[str, Any], command: str) -> Mapping[str, Any]:
    if isinstance(text, Mapping):
        return text
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SlurmParseError(f"{command} printed invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SlurmParseError(f"{command} printed JSON that is not an object")
    return doc


def _raise_on_errors(doc: Mapping[str, Any], command: str) -> None:
    # With --json, 22.05 exits 0 when the controller is unreachable and reports it only here, next
    # to an empty list: taking that list at face value would make every job look gone.
    errors = doc.get("errors") or []
    if errors:
        raise SlurmUnavailable(command, f"reported errors: {errors!r}")


def _number(value: Any) -> int | None:
    """A number from either shape; None for unset, NO_VAL and INFINITE."""
    if isinstance(value, Mapping):
        if not value.get("set", False) or value.get("infinite", False):
            return None
        value = value.get("number")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        value = int(value)
    if not isinstance(value, int):
        return None
    if value in (_NO_VAL32, _INFINITE32, _NO_VAL16, _INFINITE16) or value < 0:
        return None
    return value


def _time(value: Any) -> datetime | None:
    """An epoch timestamp from either shape; 0 means "no time"."""
    seconds = _number(value)
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        return [w for w in re.split(r"[\s,+]+", value.upper()) if w]
    if isinstance(value, list):
        return [str(w).upper() for w in value if str(w)]
    return []


def normalise_job_state(value: Any) -> tuple[JobState, tuple[str, ...]]:
    """Map a `job_state` (string or list) to a base state and the remaining flag words.

    COMPLETING and CONFIGURING are flags in Slurm but change what a job is doing, so they win over
    the base state they decorate.
    """
    words = _words(value)
    flags = tuple(w for w in words if w not in _BASE_STATES)
    if "COMPLETING" in words:
        return JobState.COMPLETING, flags
    base = next((_BASE_STATES[w] for w in words if w in _BASE_STATES), None)
    if "CONFIGURING" in words and base in (None, JobState.RUNNING):
        return JobState.CONFIGURING, flags
    if base is None:
        return (JobState.REQUEUED if "REQUEUED" in words else JobState.UNKNOWN), flags
    return base, flags


def _exit_code(value: Any) -> tuple[int | None, int | None]:
    """(return code, signal) from a 22.05 wait status int or a 23.x+ exit-code object."""
    if isinstance(value, Mapping):
        code = _number(value.get("return_code"))
        sig_obj = value.get("signal")
        sig = _number(sig_obj.get("id")) if isinstance(sig_obj, Mapping) else _number(sig_obj)
        return code, (sig or None)
    status = _number(value)
    if status is None:
        return None, None
    return (status >> 8) & 0xFF, (status & 0x7F) or None


def _job(raw: Mapping[str, Any]) -> SlurmJob:
    state, flags = normalise_job_state(raw.get("job_state"))
    reason = _text(raw.get("state_reason"))
    code, sig = _exit_code(raw.get("exit_code"))
    job_id = _number(raw.get("job_id"))
    if job_id is None:
        raise SlurmParseError(f"job without a job_id: {dict(raw)!r}"[:500])
    return SlurmJob(
        job_id=job_id,
        name=_text(raw.get("name")),
        state=state,
        state_flags=flags,
        reason=None if reason in ("", "None") else reason,
        comment=_text(raw.get("comment")),
        partition=_text(raw.get("partition")),
        qos=_text(raw.get("qos")),
        account=_text(raw.get("account")),
        user_name=_text(raw.get("user_name")),
        node_list=_text(raw.get("nodes")),
        node_count=_number(raw.get("node_count")),
        batch_host=_text(raw.get("batch_host")),
        time_limit_min=_number(raw.get("time_limit")),
        time_min_min=_number(raw.get("time_minimum")) or None,
        submit_time=_time(raw.get("submit_time")),
        start_time=_time(raw.get("start_time")),
        end_time=_time(raw.get("end_time")),
        exit_code=code,
        exit_signal=sig,
    )


def parse_squeue(text: str | bytes | Mapping[str, Any]) -> list[SlurmJob]:
    """Every job in `squeue --json` output (22.05 or 23.x+), unfiltered."""
    doc = _load(text, "squeue --json")
    _raise_on_errors(doc, "squeue --json")
    jobs = doc.get("jobs")
    if not isinstance(jobs, list):
        raise SlurmParseError("squeue --json output has no 'jobs' list")
    return [_job(j) for j in jobs if isinstance(j, Mapping)]


# --- squeue --Format -------------------------------------------------------------------------

SQUEUE_SEP = "\x1f"
"""Field separator (ASCII unit separator): no job name or comment slurmless writes contains it."""
SQUEUE_FIELDS = (
    "JobID",
    "State",
    "Reason",
    "Partition",
    "QOS",
    "Account",
    "UserName",
    "NodeList",
    "NumNodes",
    "BatchHost",
    "TimeLimit",
    "SubmitTime",
    "StartTime",
    "EndTime",
    "exit_code",
    "Comment",
    "Name",
)
SQUEUE_FORMAT = ",".join(f"{name}:{SQUEUE_SEP}" for name in SQUEUE_FIELDS)
"""The `squeue --noheader --Format` argument `parse_squeue_lines` reads (no widths: nothing is cut)."""
SQUEUE_ENV = {"SLURM_TIME_FORMAT": "%s"}
"""Times as epoch seconds: no time zone or locale in between."""
_UNSET = frozenset({"", "N/A", "n/a", "(null)", "None", "NONE", "Unknown", "UNLIMITED", "INVALID", "NOT_SET"})


def parse_squeue_lines(text: str) -> list[SlurmJob]:
    """Every job in `squeue --noheader --Format=SQUEUE_FORMAT` output (run with `SQUEUE_ENV`).

    A line with the wrong number of fields (another user's job whose name contains the separator)
    is skipped: the launcher filters on its own job-name prefix, whose names never contain it.
    """
    jobs: list[SlurmJob] = []
    for line in text.splitlines():
        fields = line.split(SQUEUE_SEP)
        if fields and fields[-1] == "":
            fields.pop()  # every field, the last included, ends with the separator
        if len(fields) != len(SQUEUE_FIELDS):
            continue
        f = dict(zip(SQUEUE_FIELDS, fields, strict=True))
        job_id = _digits(f["JobID"])
        if job_id is None:
            raise SlurmParseError(f"squeue printed a job without a job id: {line!r}"[:500])
        state, flags = normalise_job_state(f["State"])
        code, sig = _exit_text(f["exit_code"])
        jobs.append(
            SlurmJob(
                job_id=job_id,
                name=f["Name"],
                state=state,
                state_flags=flags,
                reason=_unset_none(f["Reason"]),
                comment=_unset_empty(f["Comment"]),
                partition=_unset_empty(f["Partition"]),
                qos=_unset_empty(f["QOS"]),
                account=_unset_empty(f["Account"]),
                user_name=_unset_empty(f["UserName"]),
                node_list=_unset_empty(f["NodeList"]),
                node_count=_digits(f["NumNodes"]),
                batch_host=_unset_empty(f["BatchHost"]),
                time_limit_min=duration_min(f["TimeLimit"]),
                submit_time=_text_time(f["SubmitTime"]),
                start_time=_text_time(f["StartTime"]),
                end_time=_text_time(f["EndTime"]),
                exit_code=code,
                exit_signal=sig,
            )
        )
    return jobs


def _unset_empty(value: str) -> str:
    value = value.strip()
    return "" if value in _UNSET else value


def _unset_none(value: str) -> str | None:
    return _unset_empty(value) or None


def _digits(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isdigit() else None


def duration_min(value: str) -> int | None:
    """Minutes in a Slurm duration ("2-04:00:00", "1:00:00", "30:00", "45"); None when unset or unlimited."""
    value = value.strip()
    if value in _UNSET:
        return None
    days = 0
    if "-" in value:
        head, _, value = value.partition("-")
        if not head.isdigit():
            return None
        days = int(head)
    parts = value.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return None
    nums = [int(p) for p in parts]
    hours, minutes = (nums[0], nums[1]) if len(nums) == 3 else (0, nums[0])
    return days * 1440 + hours * 60 + minutes


def _text_time(value: str) -> datetime | None:
    """Epoch seconds (`SQUEUE_ENV`), or an ISO local time if the variable was not honoured."""
    value = value.strip()
    if value in _UNSET:
        return None
    if value.isdigit():
        return datetime.fromtimestamp(int(value), tz=UTC) if int(value) > 0 else None
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return None


def _exit_text(value: str) -> tuple[int | None, int | None]:
    """(return code, signal) from "768" (a wait status, 22.05) or "3:0" (code:signal)."""
    value = value.strip()
    if ":" in value:
        code, _, sig = value.partition(":")
        return _digits(code), (_digits(sig) or None)
    return _exit_code(_digits(value))


def _split_gres(gres: str) -> list[str]:
    """Split "gpu:a100:2(IDX:0,2),tmpsize:10G" on commas outside parentheses."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in gres:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]


def count_gpus(gres: str | None) -> int:
    """Number of GPUs in a GRES string: "gpu:4", "gpu:a100:4(S:0-1)", "gpu:l40s:1(IDX:0),tmp:7T"."""
    if not gres or gres in ("(null)", "N/A"):
        return 0
    total = 0
    for item in _split_gres(gres):
        bare = item.split("(", 1)[0]
        parts = bare.split(":")
        if parts[0] != "gpu":
            continue
        count = parts[-1] if len(parts) > 1 else "1"
        if count.isdigit():
            total += int(count)
    return total


def _node_2205(raw: Mapping[str, Any]) -> NodeInfo:
    state = tuple(w.lower() for w in [*_words(raw.get("state")), *_words(raw.get("state_flags"))])
    return NodeInfo(
        name=_text(raw.get("name")),
        state=state,
        partitions=tuple(_text(p) for p in raw.get("partitions") or []),
        cpus_total=_number(raw.get("cpus")) or 0,
        cpus_alloc=_number(raw.get("alloc_cpus")) or 0,
        mem_total_mb=_number(raw.get("real_memory")) or 0,
        mem_alloc_mb=_number(raw.get("alloc_memory")) or 0,
        gpus_total=count_gpus(_text(raw.get("gres"))),
        gpus_used=count_gpus(_text(raw.get("gres_used"))),
        gres=_text(raw.get("gres")),
        gres_used=_text(raw.get("gres_used")),
        features=tuple(f for f in _text(raw.get("active_features") or raw.get("features")).split(",") if f),
    )


def _sinfo_entries(entries: Sequence[Mapping[str, Any]]) -> list[NodeInfo]:
    """Nodes from 23.x+ `sinfo` entries (one per partition and group of alike nodes).

    GRES and CPU figures in an entry describe one node of the group when it holds one node, which
    is what `sinfo -N --json` gives; for grouped entries the counts are split evenly.
    """
    merged: dict[str, NodeInfo] = {}
    for entry in entries:
        nodes_obj = entry.get("nodes") or {}
        names = [_text(n) for n in nodes_obj.get("nodes") or []]
        if not names:
            continue
        partition = _text((entry.get("partition") or {}).get("name"))
        state = tuple(w.lower() for w in _words((entry.get("node") or {}).get("state")))
        cpus = entry.get("cpus") or {}
        memory = entry.get("memory") or {}
        gres = entry.get("gres") or {}
        features = entry.get("features") or {}
        n = len(names)
        for name in names:
            prior = merged.get(name)
            parts = (*prior.partitions, partition) if prior else (partition,)
            merged[name] = NodeInfo(
                name=name,
                state=state,
                partitions=tuple(p for p in parts if p),
                cpus_total=(_number(cpus.get("total")) or 0) // n,
                cpus_alloc=(_number(cpus.get("allocated")) or 0) // n,
                mem_total_mb=_number(memory.get("maximum")) or 0,
                mem_alloc_mb=(_number(memory.get("allocated")) or 0) // n,
                gpus_total=count_gpus(_text(gres.get("total"))),
                gpus_used=count_gpus(_text(gres.get("used"))),
                gres=_text(gres.get("total")),
                gres_used=_text(gres.get("used")),
                features=tuple(f for f in _text(features.get("active")).split(",") if f),
            )
    return list(merged.values())


def parse_sinfo(text: str | bytes | Mapping[str, Any]) -> list[NodeInfo]:
    """Every node in `sinfo --json` output (22.05 `nodes`, or 23.x+ `sinfo` entries)."""
    doc = _load(text, "sinfo --json")
    _raise_on_errors(doc, "sinfo --json")
    if isinstance(doc.get("sinfo"), list):
        return _sinfo_entries([e for e in doc["sinfo"] if isinstance(e, Mapping)])
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        raise SlurmParseError("sinfo --json output has neither 'sinfo' nor 'nodes'")
    return [_node_2205(n) for n in nodes if isinstance(n, Mapping)]


def partitions_from_nodes(nodes: Iterable[NodeInfo]) -> list[Partition]:
    """Per-partition GPU and CPU totals; free counts only include nodes that can take work."""
    acc: dict[str, list[NodeInfo]] = {}
    for node in nodes:
        for name in node.partitions:
            acc.setdefault(name, []).append(node)
    return [
        Partition(
            name=name,
            nodes=tuple(n.name for n in members),
            gpus_total=sum(n.gpus_total for n in members),
            gpus_free=sum(n.gpus_free for n in members),
            cpus_total=sum(n.cpus_total for n in members),
            cpus_idle=sum(max(0, n.cpus_total - n.cpus_alloc) for n in members if n.available),
        )
        for name, members in sorted(acc.items())
    ]


# 26.05 prints a stray word between the time and "using" ("... at 2026-12-03T09:15:43 a using 1 processors").
_TEST_ONLY = re.compile(
    r"Job (?P<job>\d+) to start at (?P<start>\S+)(?: \S+)? using (?P<procs>\d+) processors?"
    r" on nodes? (?P<nodes>\S+) in partition (?P<partition>\S+)"
)


def parse_test_only(output: str, *, tz: tzinfo | None = None) -> StartEstimate:
    """The estimate in `sbatch --test-only` output (printed on stderr).

    Slurm prints the controller's local time without a zone; `tz` names that zone (default: this
    machine's local zone, right when the launcher runs next to the controller).
    """
    match = _TEST_ONLY.search(output)
    if match is None:
        raise SlurmParseError(f"no start estimate in sbatch --test-only output: {output.strip()[:300]!r}")
    naive = datetime.fromisoformat(match["start"])
    local = naive.replace(tzinfo=tz) if tz is not None else naive.astimezone()
    return StartEstimate(
        start_time=local.astimezone(UTC),
        partition=match["partition"],
        node_list=match["nodes"],
        processors=int(match["procs"]),
    )
