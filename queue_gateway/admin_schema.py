"""The admin API's request bodies and its OpenAPI 3.1 document (schemas from the pydantic models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from slurmless.settings import TenantLimits
from warmpool.apikeys import ApiKeyRecord
from warmpool.phase import ModelPhase
from warmpool.schedule_store import ScheduleKind, ScheduleSpec
from warmpool.specs import ModelSpec
from warmpool.tenants import TenantSpec
from warmpool.warm import WarmRequest

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
}

# Request bodies that are not stored specs themselves.


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


def openapi_document(mount: str = "/admin") -> dict[str, Any]:
    """A minimal, honest OpenAPI 3.1 description of the admin API, its schemas from the pydantic models."""
    models: list[type[BaseModel]] = [
        ModelSpec,
        ScheduleCreate,
        ScheduleSpec,
        TenantSpec,
        TenantQuota,
        KeyCreate,
        KeyCreated,
        ApiKeyRecord,
        WarmBody,
        WarmRequest,
        ModelPhase,
        ErrorResponse,
    ]
    _, schemas = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def op(
        summary: str,
        *,
        body: str | None = None,
        ok: int = 200,
        ok_schema: dict[str, Any] | None = None,
        params: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        errors = {
            str(c): {"description": ERROR_TYPES[c], "content": {"application/json": {"schema": ref("ErrorResponse")}}}
            for c in (400, 401, 403, 404, 409)
        }
        out: dict[str, Any] = {
            "summary": summary,
            "responses": {
                str(ok): {
                    "description": "OK",
                    "content": {"application/json": {"schema": ok_schema or {"type": "object"}}},
                },
                **errors,
            },
        }
        if body is not None:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(body)}}}
        if params:
            out["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ]
        return out

    paths: dict[str, Any] = {
        "/v1/models": {
            "get": op("List models the caller can see, with their phase"),
            "post": op("Register a model or LoRA adapter", body="ModelSpec", ok=201),
        },
        "/v1/models/{name}": {
            "get": op("Show a model: spec, status, adapters, schedules", params=("name",)),
            "patch": op("Update a model (a partial ModelSpec, merged)", params=("name",)),
            "delete": op("Remove a model", params=("name",)),
        },
        "/v1/models/{name}/warm": {
            "post": op("Keep a model warm for a while", body="WarmBody", ok=202, params=("name",)),
        },
        "/v1/models/{name}/schedules": {
            "get": op("List a model's schedules", params=("name",)),
            "post": op("Add a cron or iCalendar schedule", body="ScheduleCreate", ok=201, params=("name",)),
        },
        "/v1/models/{name}/schedules/{sid}": {"delete": op("Remove a schedule", params=("name", "sid"))},
        "/v1/schedules": {"get": op("List all schedules")},
        "/v1/keys": {
            "get": op("List API keys (never their secrets)"),
            "post": op(
                "Create an API key; the key is in the answer, once",
                body="KeyCreate",
                ok=201,
                ok_schema=ref("KeyCreated"),
            ),
        },
        "/v1/keys/{key_id}": {"delete": op("Revoke a key", params=("key_id",))},
        "/v1/tenants": {
            "get": op("List tenants with their quotas and model counts"),
            "post": op("Create a tenant", body="TenantSpec", ok=201, ok_schema=ref("TenantSpec")),
        },
        "/v1/tenants/{name}": {
            "get": op("Show a tenant", params=("name",)),
            "patch": op(
                "Set a tenant's quotas (null: unlimited)",
                body="TenantQuota",
                params=("name",),
                ok_schema=ref("TenantSpec"),
            ),
        },
        "/v1/status": {"get": op("Models with phase, desired/actual replicas, queue depth, last cold start")},
        "/v1/events": {"get": op("The events stream, newest last (query: model, kind, count)")},
    }
    from queue_gateway.sd import observability_paths  # it imports the admin API: at call time

    paths |= observability_paths()
    return {
        "openapi": "3.1.0",
        "info": {"title": "slurmless admin API", "version": "1"},
        "servers": [{"url": mount}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
