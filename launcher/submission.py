"""A new instance's job: its record, its script, and where it should run.

The script is rendered for every (partition, QOS) the model allows and the placement whose
`sbatch --test-only` estimate starts soonest is chosen (`policies.placement.pick_placement`),
preferring preemptible capacity on a tie. `Launcher._submit` writes the record and runs `sbatch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from launcher.jobs import job_spec, sha256_hex
from launcher.lifecycle import S
from launcher.settings import LauncherSettings
from policies.placement import PlacementOption, pick_placement
from slurm.backend import SlurmBackend
from slurm.errors import SlurmError
from slurm.jobscript import render_job_script
from warmpool.instances import InstanceRecord
from warmpool.keys import DEFAULT_CLUSTER
from warmpool.specs import ModelSpec

Placement = tuple[str | None, str | None]
"""(partition, QOS); None leaves it to the cluster's default."""
Render = Callable[[str | None, str | None], str]
"""The job script of one instance in a placement: `render(partition, qos)`."""


def job_renderer(
    spec: ModelSpec,
    iid: str,
    *,
    token: str,
    api_key: str,
    settings: LauncherSettings,
    callback_url: str,
    enable_lora: bool = False,
    model_roots: Sequence[Path] = (),
    batch_time_min_min: int | None = None,
) -> Render:
    """How instance `iid` of `spec` is rendered in any placement (validated: `ScriptValidationError`);
    a batch job's with `batch_time_min_min` (`launcher.jobs.job_spec`)."""

    def render(partition: str | None, qos: str | None) -> str:
        return render_job_script(
            job_spec(
                spec,
                instance_id=iid,
                settings=settings,
                callback_url=callback_url,
                callback_token=token,
                engine_api_key=api_key,
                partition=partition,
                qos=qos,
                enable_lora=enable_lora,
                model_roots=model_roots,
                batch_time_min_min=batch_time_min_min,
            )
        )

    return render


def new_record(
    spec: ModelSpec,
    iid: str,
    *,
    token: str,
    api_key: str,
    now_s: float,
    successor_of: str | None,
    cluster: str = DEFAULT_CLUSTER,
) -> InstanceRecord:
    """The `requested` record written before `sbatch` runs (a launcher that dies in between leaves a trace)."""
    return InstanceRecord(
        id=iid,
        model=spec.name,
        cluster=cluster,
        state=S.REQUESTED,
        api_key=api_key,
        token_sha256=sha256_hex(token),
        created_s=now_s,
        state_since_s=now_s,
        timestamps={S.REQUESTED.value: now_s},
        successor_of=successor_of,
    )


def batch_choices(allowed: Sequence[str], preemptible: Sequence[str]) -> list[str | None]:
    """Where a batch job may go: the model's preemptible partitions (or QOS) when it lists some, the site's
    when it lists none, else what it allows (a batch job takes capacity nobody else uses, so it may yield)."""
    if not allowed:
        return list(preemptible) or [None]
    return [p for p in allowed if p in preemptible] or list(allowed)


async def place(
    slurm: SlurmBackend,
    spec: ModelSpec,
    render: Render,
    settings: LauncherSettings,
    *,
    always_estimate: bool = False,
    errors: list[SlurmError] | None = None,
    batch: bool = False,
) -> tuple[Placement, float | None]:
    """The (partition, QOS) whose `sbatch --test-only` estimate starts soonest, and that estimate.

    `render(partition, qos)` is the job script in that placement; a placement Slurm refuses to
    estimate is skipped (what Slurm said instead is appended to `errors`); with none estimated, the
    first allowed placement and no estimate. A single allowed placement is estimated only when
    `always_estimate` (clusters compare their estimates). A batch job goes only to preemptible
    placements when there are any (`batch_choices`).
    """
    res = spec.resources
    preempt_p, preempt_q = set(settings.preemptible_partitions), set(settings.preemptible_qos)
    partitions: list[str | None] = sorted(res.partitions, key=lambda p: p not in preempt_p) or [None]
    qoses: list[str | None] = sorted(res.qos, key=lambda q: q not in preempt_q) or [None]
    if batch:
        partitions = batch_choices(res.partitions, settings.preemptible_partitions)
        qoses = batch_choices(res.qos, settings.preemptible_qos)
    choices = [(p, q) for p in partitions for q in qoses]
    if len(choices) == 1 and not always_estimate:
        return choices[0], None
    script = render(None, None)
    options: list[PlacementOption] = []
    for partition, qos in choices:
        try:
            est = await slurm.estimate_start(script, partition=partition, qos=qos)
        except SlurmError as exc:
            if errors is not None:
                errors.append(exc)
            continue
        options.append(
            PlacementOption(
                partition=partition or "",
                qos=qos,
                estimated_start_s=est.start_time.timestamp(),
                preemptible=partition in preempt_p or qos in preempt_q,
                time_limit_s=60.0 * res.time_limit_min,
            )
        )
    best = pick_placement(options)
    if best is None:
        return choices[0], None
    return (best.partition or None, best.qos), best.estimated_start_s
