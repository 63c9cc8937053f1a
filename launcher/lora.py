"""LoRA adapters on a base model's instances: many adapters share one GPU.

A base model with registered adapters is started with `--enable-lora` and with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` in the job's environment; before a request for an adapter is
routed to a base instance, `ensure_adapter_loaded` loads it there (`/v1/load_lora_adapter`).
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from slurm.engine_args import EngineArgValue
from warmpool.events import EventLog
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord
from warmpool.specs import ModelSpec, adapters_of

LORA_JOB_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
"""Environment the job of a LoRA-serving base needs: vLLM refuses runtime loading without it."""
MAX_LORAS_PER_BATCH = 4
"""`--max-loras` default: adapters mixed in one batch; more stay loaded and are swapped in."""
LORA_CALL_TIMEOUT_S = 60.0
"""Loading an adapter reads its weights from the shared filesystem: seconds, rarely more."""


class AdapterLoadError(RuntimeError):
    """The engine refused or failed to load an adapter."""


def lora_engine_args(base: ModelSpec, adapters: Sequence[ModelSpec]) -> dict[str, EngineArgValue]:
    """The base's engine arguments, with LoRA switched on when it has adapters.

    Arguments the admin set on the base (`--max-loras`, `--max-lora-rank`) win over the defaults.
    """
    args: dict[str, EngineArgValue] = dict(base.engine_args)
    mine = adapters_of(base.name, adapters)
    if not mine:
        return args
    args["--enable-lora"] = True
    args.setdefault("--max-loras", max(1, min(len(mine), MAX_LORAS_PER_BATCH)))
    return args


def lora_job_env(base: ModelSpec, adapters: Sequence[ModelSpec]) -> dict[str, str]:
    """Extra job environment for the base (empty when it serves no adapters)."""
    return dict(LORA_JOB_ENV) if adapters_of(base.name, adapters) else {}


async def ensure_adapter_loaded(
    instance_url: str,
    api_key: str,
    adapter_name: str,
    adapter_path: str,
    client: httpx.AsyncClient,
    *,
    timeout_s: float = LORA_CALL_TIMEOUT_S,
) -> bool:
    """Load `adapter_name` from `adapter_path` on the instance; True if loaded now, False if it was already.

    Raises AdapterLoadError when the engine refuses (LoRA not enabled, bad path).
    """
    response = await client.post(
        f"{instance_url.rstrip('/')}/v1/load_lora_adapter",
        json={"lora_name": adapter_name, "lora_path": adapter_path},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=timeout_s,
    )
    if response.status_code == 200:
        return True
    body = response.text
    # vLLM answers 400 "... has already been loaded" for a second load: that is success for us.
    if response.status_code == 400 and "already been loaded" in body:
        return False
    raise AdapterLoadError(f"loading adapter {adapter_name!r} failed: HTTP {response.status_code}: {body[:300]}")


async def unload_adapter(
    instance_url: str,
    api_key: str,
    adapter_name: str,
    client: httpx.AsyncClient,
    *,
    timeout_s: float = LORA_CALL_TIMEOUT_S,
) -> bool:
    """Unload an adapter; True if it was loaded, False if the engine did not know it."""
    response = await client.post(
        f"{instance_url.rstrip('/')}/v1/unload_lora_adapter",
        json={"lora_name": adapter_name},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=timeout_s,
    )
    if response.status_code == 200:
        return True
    if response.status_code == 404:
        return False
    raise AdapterLoadError(
        f"unloading adapter {adapter_name!r} failed: HTTP {response.status_code}: {response.text[:300]}"
    )


class AdapterSync:
    """Load the registered adapters a base instance does not serve yet, and note them in its record."""

    def __init__(self, client: httpx.AsyncClient, instances: InstanceStore, events: EventLog) -> None:
        self.client = client
        self.instances = instances
        self.events = events

    async def sync(self, record: InstanceRecord, adapters: list[ModelSpec], now_s: float) -> None:
        """`/v1/load_lora_adapter` for each adapter `record` lacks.

        Runs before an instance is first routed to and on every health check for ready ones, so an
        adapter registered while its base runs is served soon after. A refusal is an event, not a
        failure: the base keeps serving its own requests.
        """
        if record.url is None or record.api_key is None:
            return
        missing = [a for a in adapters if a.client_name not in record.loaded_loras]
        for adapter in missing:
            try:
                await ensure_adapter_loaded(
                    record.url, record.api_key, adapter.client_name, adapter.source, self.client
                )
            except (AdapterLoadError, httpx.HTTPError) as exc:
                await self.events.record(
                    "adapter.failed", now_s=now_s, model=adapter.name, instance=record.id, error=str(exc)[:300]
                )
                continue
            record.loaded_loras.append(adapter.client_name)
            await self.instances.update(record.id, loaded_loras=record.loaded_loras)
            await self.events.record("adapter.loaded", now_s=now_s, model=adapter.name, instance=record.id)
