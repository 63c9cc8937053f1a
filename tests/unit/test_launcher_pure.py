"""Pure parts of the launcher: job specs, desired replicas, percentiles, instance ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher.desired import ModelLoad, desired_replicas
from launcher.history import p95
from launcher.jobs import job_spec, new_instance_id, new_token, signal_timing
from slurm.engine_args import EngineArgValue
from slurm.jobscript import render_job_script
from slurmless.settings import LauncherSettings
from warmpool.specs import ModelSpec, Policy, Resources


def spec(**policy: object) -> ModelSpec:
    return ModelSpec(
        name="m",
        source="org/m",
        aliases=["m-alias"],
        resources=Resources(gpus=1, time_limit_min=2),
        policy=Policy.model_validate({"max_replicas": 2, "keepalive_min_s": 10, "keepalive_max_s": 20, **policy}),
    )


def load(**fields: object) -> ModelLoad:
    base: dict[str, object] = {
        "queue_depth": 0,
        "oldest_wait_s": 0.0,
        "in_flight": 0,
        "ready": 0,
        "held": 0,
        "last_request_s": None,
        "idle_counts": {},
    }
    base.update(fields)
    return ModelLoad(**base)  # type: ignore[arg-type]


def test_instance_ids_are_short_lowercase_and_distinct() -> None:
    ids = {new_instance_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[a-z0-9]{10}", i) for i in ids)


def test_a_two_minute_job_renders_with_a_fitting_signal_lead(tmp_path: Path) -> None:
    lead, settle, drain, kill = signal_timing(120, 120)
    assert lead == 60 and settle + drain + kill <= lead
    settings = LauncherSettings(job_output_dir=tmp_path, engine_command=["python3", "-m", "enginesim"])
    job = job_spec(
        spec(),
        instance_id="abc123",
        settings=settings,
        callback_url="http://127.0.0.1:8099",
        callback_token=new_token(),
        engine_api_key=new_token(),
        partition=None,
        qos=None,
        enable_lora=True,
    )
    script = render_job_script(job)
    assert "#SBATCH --time=2" in script
    assert "#SBATCH --comment=slurmless:abc123" in script
    assert "--enable-lora" in script
    # Batch lines carry a larger vLLM priority than interactive requests: the engine must order by it.
    assert "--scheduling-policy priority" in script


@pytest.mark.parametrize(
    ("setting", "model_args", "expected"),
    [(True, {}, "priority"), (True, {"--scheduling-policy": "fcfs"}, "fcfs"), (False, {}, None)],
)
def test_engines_schedule_by_priority_unless_the_model_or_the_site_says_otherwise(
    tmp_path: Path, setting: bool, model_args: dict[str, EngineArgValue], expected: str | None
) -> None:
    settings = LauncherSettings(job_output_dir=tmp_path, engine_priority_scheduling=setting)
    job = job_spec(
        spec().model_copy(update={"engine_args": model_args}),
        instance_id="abc123",
        settings=settings,
        callback_url="http://127.0.0.1:8099",
        callback_token=new_token(),
        engine_api_key=new_token(),
        partition=None,
        qos=None,
    )
    assert job.engine_args.get("--scheduling-policy") == expected


def test_cold_model_with_waiting_requests_wants_one_replica() -> None:
    decision = desired_replicas(
        spec(), load(queue_depth=3), 1000.0, expected_cold_start_s=60.0, default_keepalive_s=600.0
    )
    assert decision.replicas == 1


def test_idle_model_scales_to_zero_after_its_keepalive() -> None:
    warm = load(ready=1, held=1, last_request_s=1000.0)
    kept = desired_replicas(spec(), warm, 1015.0, expected_cold_start_s=60.0, default_keepalive_s=600.0)
    dropped = desired_replicas(spec(), warm, 1025.0, expected_cold_start_s=60.0, default_keepalive_s=600.0)
    assert kept.replicas == 1
    assert dropped.replicas == 0


def test_min_replicas_hold_without_demand() -> None:
    decision = desired_replicas(spec(min_replicas=1), load(), 0.0, expected_cold_start_s=60.0, default_keepalive_s=1.0)
    assert decision.replicas == 1


def test_p95_is_nearest_rank() -> None:
    assert p95([]) is None
    assert p95([1.0]) == 1.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0
