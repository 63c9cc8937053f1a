"""Can the cluster ever run a model? The launcher's answer when a model is registered.

Two steps, cheapest first: the model's resources against the nodes of its allowed partitions (one
`sinfo`: `SlurmBackend.nodes`), then `sbatch --test-only` of its rendered job script in each
allowed placement, which is Slurm's own word on what the first step cannot see (accounts, QOS,
limits, gres types; the rest and pyslurm backends have no `--test-only`, so there the nodes' word is
all there is). A node counts whatever its state: a drained node may return, a node too small
never grows. The check submits nothing. A Slurm that does not answer leaves the question open: the
model is accepted with a warning rather than refused for an outage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from launcher.jobs import new_instance_id
from launcher.settings import LauncherSettings
from launcher.submission import Render, job_renderer
from slurm.backend import SlurmBackend
from slurm.errors import NotSupported, ScriptValidationError, SlurmCommandError, SlurmError
from slurm.types import NodeInfo
from warmpool.feasibility import FeasibilityAnswer as Verdict
from warmpool.specs import ModelSpec, Resources

__all__ = ["check_feasible", "check_spec", "unfit_reason"]


def unfit_reason(res: Resources, nodes: Sequence[NodeInfo]) -> str | None:
    """Why no `res.nodes` nodes of the allowed partitions can each hold one node's share, or None if they can.

    A figure a backend did not report (0) is not held against a node.
    """
    allowed = set(res.partitions)
    where = f"partition(s) {', '.join(res.partitions)}" if allowed else "the cluster"
    candidates = [n for n in nodes if not allowed or allowed & set(n.partitions)]
    if not candidates:
        return f"no node is in {where}"
    checks: list[tuple[str, int, Callable[[NodeInfo], int], str]] = [
        ("GPUs", res.gpus, lambda n: n.gpus_total, ""),
        ("CPUs", res.cpus, lambda n: n.cpus_total, ""),
        ("memory", res.mem_mb, lambda n: n.mem_total_mb, " MB"),
    ]
    fitting = candidates
    for what, asked, has, unit in checks:
        if asked <= 0:
            continue
        holds = [n for n in fitting if has(n) == 0 or has(n) >= asked]
        if len(holds) < res.nodes:
            largest = max((has(n) for n in fitting), default=0)
            per = " per node" if res.nodes > 1 else ""
            need = f"{res.nodes} nodes" if res.nodes > 1 else "a node"
            return (
                f"{need} with {asked}{unit} {what}{per} asked, but no node in {where} has that much "
                f"(largest: {largest}{unit})"
            )
        fitting = holds
    return None


async def check_feasible(
    slurm: SlurmBackend,
    spec: ModelSpec,
    render: Render,
) -> Verdict:
    """The verdict for `spec`: its resources against `sinfo`, then `sbatch --test-only` per placement.

    `render(partition, qos)` is the model's job script in that placement.
    """
    res = spec.resources
    try:
        nodes = await slurm.nodes()
    except SlurmError as exc:
        return Verdict(runnable=None, reason=f"Slurm unavailable: {exc}"[:500])
    unfit = unfit_reason(res, nodes)
    if unfit is not None:
        return Verdict(runnable=False, reason=unfit)
    partitions: list[str | None] = [*res.partitions] or [None]
    qoses: list[str | None] = [*res.qos] or [None]
    placements = [(p, q) for p in partitions for q in qoses]
    refusals: list[str] = []
    for partition, qos in placements:
        try:
            script = render(partition, qos)
            await slurm.estimate_start(script, partition=partition, qos=qos)
        except ScriptValidationError as exc:
            return Verdict(runnable=False, reason=f"invalid job: {exc}"[:500])
        except NotSupported:
            # slurmrestd and pyslurm have no --test-only: the nodes' word is all there is.
            return Verdict(runnable=True)
        except SlurmCommandError as exc:
            where = "/".join(x for x in (partition, qos) if x) or "the default partition"
            refusals.append(f"{where}: {exc.stderr.strip()[:300]}")
            continue
        except SlurmError as exc:
            return Verdict(runnable=None, reason=f"Slurm unavailable: {exc}"[:500])
        return Verdict(runnable=True)
    why = "; ".join(refusals)
    return Verdict(runnable=False, reason=f"sbatch --test-only refused the job in every allowed placement: {why}")


async def check_spec(
    slurm: SlurmBackend,
    spec: ModelSpec,
    settings: LauncherSettings,
    *,
    callback_url: str,
    model_roots: Sequence[Path] = (),
) -> Verdict:
    """`check_feasible` with the job script an instance of `spec` would get (placeholders for its secrets)."""
    render = job_renderer(
        spec,
        new_instance_id(),
        token="feasibility-check",
        api_key="feasibility-check",
        settings=settings,
        callback_url=callback_url,
        model_roots=model_roots,
    )
    return await check_feasible(slurm, spec, render)
