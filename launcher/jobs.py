"""One job = one instance: the `JobSpec` the launcher renders for a model, and the ids and secrets it carries."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.lora import LORA_JOB_ENV
from launcher.settings import LauncherSettings
from slurm.confine import check_job_paths, ensure_private_dir
from slurm.jobscript import JobSpec
from warmpool.instances import InstanceRecord
from warmpool.specs import ModelSpec

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_instance_id(length: int = 10) -> str:
    """A short random instance id of `[a-z0-9]` (it must start with a letter or digit: always true)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def new_token() -> str:
    """A secret for the callback token or the engine's API key (URL-safe, 43 characters)."""
    return secrets.token_urlsafe(32)


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def signal_timing(lead_s: int, shortest_limit_s: int) -> tuple[int, int, int, int]:
    """(signal_lead_s, settle_s, drain_s, kill_grace_s) that fit the job's shortest possible limit."""
    lead = max(10, min(lead_s, shortest_limit_s // 2))
    settle = min(5, lead // 6)
    kill = max(1, min(15, lead // 4))
    drain = max(0, lead - settle - kill - 5)
    return lead, settle, drain, kill


def job_spec(
    spec: ModelSpec,
    *,
    instance_id: str,
    settings: LauncherSettings,
    callback_url: str,
    callback_token: str,
    engine_api_key: str,
    partition: str | None,
    qos: str | None,
    enable_lora: bool = False,
    model_roots: Sequence[Path] = (),
    batch_time_min_min: int | None = None,
) -> JobSpec:
    """The validated job of one instance of `spec` (a base model: adapters are served by their base).

    Right before submission, so also for specs registered long ago: the job directory must be private
    and every model path must still resolve under `model_roots` (`ScriptValidationError` otherwise).
    A batch job (`batch_time_min_min` given, `launcher.batch_scaling.batch_time_min_min`) may be cut
    down by backfill to that `--time-min`, and is ended by the launcher `batch_signal_lead_s` before
    its end (not warned by Slurm, whose warning may come half a minute early): it is never renewed,
    and its lines are short and retried, so it serves until nearly its last second.
    """
    res = spec.resources
    batch = batch_time_min_min is not None
    time_min = batch_time_min_min if batch else res.time_min_min
    shortest_s = 60 * (time_min or res.time_limit_min)
    lead_s = settings.batch_signal_lead_s if batch else settings.signal_lead_s
    lead, settle, drain, kill = signal_timing(lead_s, shortest_s)
    engine_args = dict(spec.engine_args)
    if settings.engine_priority_scheduling:
        engine_args.setdefault("--scheduling-policy", "priority")
    engine_env = dict(settings.engine_env)
    if enable_lora:
        # Adapters are loaded at run time (launcher/lora.py); vLLM refuses that without the variable.
        engine_args["--enable-lora"] = True
        engine_env.update(LORA_JOB_ENV)
    output_dir = ensure_private_dir(Path(settings.job_output_dir))
    job = JobSpec.parse(
        {
            "instance_id": instance_id,
            "model_name": spec.name,
            "model_source": spec.source,
            # TODO(lead): JobSpec takes one served name; aliases are resolved by the gateway meanwhile.
            "served_model_name": spec.client_name,
            "gpus_per_node": res.gpus,
            "nodes": res.nodes,
            "cpus_per_task": res.cpus,
            "mem_mb": res.mem_mb,
            "partition": partition,
            "qos": qos,
            "account": res.account,
            "constraint": res.constraint,
            "time_limit_min": res.time_limit_min,
            "time_min_min": time_min,
            "signal_lead_s": lead,
            # A batch job is ended by the launcher `batch_signal_lead_s` before its end (`launcher.lifecycle`).
            "walltime_signal": not batch,
            "settle_s": settle,
            "drain_s": drain,
            "kill_grace_s": kill,
            "env_setup_lines": tuple(settings.env_setup_lines),
            "engine_command": tuple(settings.engine_command),
            "engine_args": engine_args,
            "engine_env": engine_env,
            "callback_url": callback_url,
            "callback_token": callback_token,
            "engine_api_key": engine_api_key,
            "output_dir": str(output_dir),
            "job_name_prefix": settings.job_name_prefix,
            "helper_python": settings.helper_python,
            "model_roots": tuple(str(r) for r in model_roots),
            "ray_auth_token": new_token() if res.nodes > 1 else None,
        }
    )
    check_job_paths(job, model_roots)
    return job


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused callback: the HTTP status the job gets (4xx is final for it, 503 is retried) and why."""

    status: int
    reason: str


def token_ok(record: InstanceRecord, token: str) -> bool:
    """Whether a callback's token is the instance's (compared as digests, in constant time)."""
    if not record.token_sha256:
        return False
    return hmac.compare_digest(record.token_sha256, sha256_hex(token))
