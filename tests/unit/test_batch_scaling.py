"""Batch backlogs as a scaling input: pending lines per base model, the GPU budget's leftovers, batch jobs'
placement and job script. The scaling rows themselves are in test_scaling_table.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from launcher.batch_scaling import BatchAsk, BatchNeed, batch_time_min_min, fit_batch, free_gpus, pending_by_model
from launcher.jobs import job_spec, new_token
from launcher.submission import batch_choices, place
from slurm.fake import FakeSlurm
from slurm.jobscript import render_job_script
from slurmless.settings import LauncherSettings
from warmpool.batches import BatchBacklog
from warmpool.specs import ModelKind, ModelSpec, Policy, Resources

T0 = 1_800_000_000.0


def spec(name: str = "m", gpus: int = 1, **res: object) -> ModelSpec:
    return ModelSpec(
        name=name,
        source=f"/models/{name}",
        aliases=[f"{name}-alias"],
        resources=Resources.model_validate({"gpus": gpus, "time_limit_min": 60, **res}),
        policy=Policy(max_replicas=4),
    )


def row(model: str, pending: int, *, resolved: bool = True) -> BatchBacklog:
    return BatchBacklog(bid=f"b-{model}-{pending}", model=model, resolved=resolved, pending=pending)


def test_pending_lines_add_up_per_base_model_whatever_name_the_batch_used() -> None:
    lora = ModelSpec(name="m-lora", source="/adapters/x", kind=ModelKind.LORA, base_model="m")
    specs = {"m": spec(), "m-lora": lora, "n": spec("n")}
    rows = [
        row("m", 10),
        row("m-alias", 5, resolved=False),
        row("m-lora", 7, resolved=False),
        row("n", 0),
        row("gone", 3, resolved=False),
    ]
    assert pending_by_model(rows, specs) == {"m": 22}


def test_batch_jobs_get_only_the_gpus_interactive_work_leaves() -> None:
    asks = [BatchAsk(spec("a", gpus=2), 900, replicas=3, held=1), BatchAsk(spec("b"), 5000, replicas=4, held=0)]
    # 8 GPUs, 3 held by others: the larger backlog (b) first takes 4, a gets 1 more instance of 2 GPUs... none left.
    assert fit_batch(asks, free_gpus(8, [2, 3])) == {"a": BatchNeed(1, 900), "b": BatchNeed(3, 5000)}
    assert fit_batch(asks, None) == {"a": BatchNeed(3, 900), "b": BatchNeed(4, 5000)}
    # What a model holds anyway is never taken away by the budget.
    assert fit_batch([BatchAsk(spec("a"), 10, replicas=1, held=2)], 0) == {"a": BatchNeed(1, 10)}


def test_batch_jobs_go_to_preemptible_capacity_when_there_is_some() -> None:
    assert batch_choices(["gpu", "preempt"], ["preempt"]) == ["preempt"]
    assert batch_choices(["gpu"], ["preempt"]) == ["gpu"]  # the model does not allow it: its own
    assert batch_choices([], ["preempt"]) == ["preempt"]  # the model names none: the site's
    assert batch_choices([], []) == [None]
    fake = FakeSlurm(now_s=T0)
    fake.estimates.update({("gpu", None): T0, ("preempt", None): T0 + 600})
    settings = LauncherSettings(preemptible_partitions=["preempt"])
    model = spec(partitions=["gpu", "preempt"])

    def render(partition: str | None, qos: str | None) -> str:
        return "#SBATCH --job-name=slurmless-m-i1\n"

    assert asyncio.run(place(fake, model, render, settings))[0] == ("gpu", None)
    assert asyncio.run(place(fake, model, render, settings, batch=True))[0] == ("preempt", None)


def test_a_batch_job_is_fitted_by_backfill_and_warned_late(tmp_path: Path) -> None:
    settings = LauncherSettings(job_output_dir=tmp_path, batch_signal_lead_s=10)

    def script(time_min: int | None) -> str:
        return render_job_script(
            job_spec(
                spec().model_copy(update={"source": "org/m"}),
                instance_id="abc123",
                settings=settings,
                callback_url="http://127.0.0.1:8099",
                callback_token=new_token(),
                engine_api_key=new_token(),
                partition=None,
                qos=None,
                batch_time_min_min=time_min,
            )
        )

    interactive, batch = script(None), script(5)
    assert "--time-min" not in interactive and "#SBATCH --signal=B:USR1@120" in interactive
    # Slurm's warning may come half a minute early: the launcher ends a batch job itself (lifecycle).
    assert "#SBATCH --time-min=5" in batch and "--signal" not in batch


def test_a_batch_jobs_time_min_is_as_short_as_its_load_time_allows() -> None:
    settings = LauncherSettings(batch_time_min_min=10)
    assert batch_time_min_min(spec(), None, settings) == 10
    assert batch_time_min_min(spec(time_min_min=2), None, settings) == 2  # the model's own, when lower
    assert batch_time_min_min(spec(time_min_min=30), None, settings) == 10
    # Once loads were observed: serving 4 times as long as loading, whole minutes, at least one.
    assert batch_time_min_min(spec(time_min_min=2), 5.0, settings) == 1
    assert batch_time_min_min(spec(), 90.0, settings) == 6
    assert batch_time_min_min(spec(), 600.0, settings) == 10
