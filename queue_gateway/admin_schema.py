"""The admin API's request and response bodies that are not stored specs themselves (the OpenAPI
document's schemas are generated from these in `queue_gateway.admin_routes`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, RootModel

from warmpool.apikeys import ApiKeyRecord
from warmpool.schedule_store import ScheduleKind
from warmpool.settings import TenantLimits


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str
    name: str = Field("", max_length=100)
    admin: bool = False
    can_register: bool = False
    operator: bool = False
    """May look at the status page (`/ui/`)."""
    rpm_limit: int | None = Field(None, ge=1)
    concurrency_limit: int | None = Field(None, ge=1)
    expires_in_s: float | None = Field(None, gt=0, le=10 * 365 * 86400)
    """The key stops working this long after its creation; None: never."""


class KeyCreated(BaseModel):
    key: str
    """The plaintext key: shown once, never stored."""
    record: ApiKeyRecord


class TenantQuota(BaseModel):
    """Quota changes: a given number sets a quota, null makes it unlimited, absent leaves it."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent_requests: int | None = Field(None, ge=1)
    max_models: int | None = Field(None, ge=0)
    idle_gpu_hours_per_day: float | None = Field(None, gt=0, le=1_000_000, strict=True)
    """Idle GPU-hours a day the tenant's models may spend warm (null: the site's budget or rate)."""
    limits: TenantLimits | None = None
    """Resource limits to change, field by field (null: inherit the site's again)."""


class WarmBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    duration_s: float = Field(1800.0, gt=0, le=7 * 86400)
    replicas: int = Field(1, ge=1, le=64)


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ScheduleKind
    expression: str | None = None
    ics: str | None = None
    timezone: str = "UTC"
    replicas: int = Field(1, ge=1, le=64)
    duration_s: float | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class TargetGroup(BaseModel):
    """One Prometheus `http_sd_config` target group."""

    targets: list[str]
    labels: dict[str, str]


class TargetGroups(RootModel[list[TargetGroup]]):
    """What Prometheus's HTTP service discovery reads."""
