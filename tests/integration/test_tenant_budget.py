"""The launcher's submission-time check of tenant-owned models (GPUs held, GPU-hours per day, allow-lists)."""

from __future__ import annotations

import redis.asyncio as aioredis

from slurmless.settings import SITE_TENANT_LIMITS, TenantLimits
from warmpool.events import EventLog
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.specs import ModelSpec
from warmpool.tenant_limits import TenantBudget
from warmpool.tenants import TenantSpec, TenantStore

DAY_S = 86_400.0
NOW_S = 100 * DAY_S + 3600.0


def _spec(**resources: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "phys",
            "source": "/models/phys",
            "owner_tenant": "physics",
            "resources": {"gpus": 1, "time_limit_min": 60, **resources},
        }
    )


async def _submitted(redis: aioredis.Redis, iid: str, state: InstanceState = InstanceState.PENDING) -> None:
    await InstanceStore(redis).put(InstanceRecord(id=iid, model="phys", state=state))


async def test_gpus_held_and_gpu_hours_per_day_are_budgeted_per_tenant(redis_client: aioredis.Redis) -> None:
    limits = TenantLimits(max_gpus=2, max_gpu_hours_per_day=3.0)
    await TenantStore(redis_client).create(TenantSpec(name="physics", limits=limits))
    budget = TenantBudget(redis_client, Keys(), SITE_TENANT_LIMITS)
    spec = _spec()
    assert await budget.admit(spec, "i1", now_s=NOW_S)
    await _submitted(redis_client, "i1")
    assert await budget.admit(spec, "i2", now_s=NOW_S)
    await _submitted(redis_client, "i2")
    refusal = await budget.refusal(spec, "i3", now_s=NOW_S)
    assert refusal is not None and "holds 2 GPU(s)" in refusal
    await _submitted(redis_client, "i1", InstanceState.GONE)
    assert await budget.admit(spec, "i3", now_s=NOW_S), "an ended instance gives its GPUs back"
    await _submitted(redis_client, "i3")
    await _submitted(redis_client, "i2", InstanceState.FAILED)
    assert not await budget.admit(spec, "i4", now_s=NOW_S), "three GPU-hours were granted today already"
    events = await EventLog(redis_client, Keys()).recent(kind="tenant.limit")
    assert events and "GPU-hours" in str(events[-1].detail)
    assert await budget.admit(spec, "i4", now_s=NOW_S + DAY_S), "a new UTC day, a new budget"
    # Models of the site (no owner) are not budgeted.
    site_model = spec.model_copy(update={"owner_tenant": None})
    assert await budget.refusal(site_model, "i9", now_s=NOW_S) is None


async def test_allow_lists_are_checked_again_at_submission(redis_client: aioredis.Redis) -> None:
    await TenantStore(redis_client).create(TenantSpec(name="physics", limits=TenantLimits(partitions=["gpu"])))
    budget = TenantBudget(redis_client, Keys(), SITE_TENANT_LIMITS)
    assert await budget.refusal(_spec(partitions=["gpu"]), "i1", now_s=NOW_S) is None
    await TenantStore(redis_client).set_quota("physics", limits={"partitions": []})
    refusal = await budget.refusal(_spec(partitions=["gpu"]), "i2", now_s=NOW_S)
    assert refusal is not None and "'gpu' is not allowed for tenant physics" in refusal
    assert await budget.held_gpus("physics") == 1.0, "a refusal books nothing"


async def test_a_refused_job_gets_its_booking_back(redis_client: aioredis.Redis) -> None:
    limits = TenantLimits(max_gpus=1, max_gpu_hours_per_day=1.0)
    await TenantStore(redis_client).create(TenantSpec(name="refunded", limits=limits))
    budget = TenantBudget(redis_client, Keys(), SITE_TENANT_LIMITS)
    spec = _spec().model_copy(update={"owner_tenant": "refunded"})
    for attempt in range(3):
        # Each attempt books one GPU and its whole hour; Slurm refuses the job and the booking is returned.
        assert await budget.admit(spec, f"r{attempt}", now_s=NOW_S), attempt
        await budget.refund(spec, f"r{attempt}", now_s=NOW_S)
    assert await budget.held_gpus("refunded") == 0
    assert await budget.admit(spec, "r9", now_s=NOW_S)
    await budget.refund(spec.model_copy(update={"owner_tenant": None}), "r9", now_s=NOW_S)
    assert await budget.held_gpus("refunded") == 1, "a site model's refund touches no tenant"
