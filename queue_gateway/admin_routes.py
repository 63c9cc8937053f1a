"""The admin API's one route table: the Starlette routes and the OpenAPI 3.1 document are both
generated from `ROUTES`, so a route cannot be served undocumented or documented unserved.

Each row says who may call it (`Role`); the wrapper authenticates before the handler runs and
passes it the caller. Refusals are mapped to OpenAI-shaped errors here, at the one HTTP boundary:
the handlers raise the gateway's HTTP errors (`queue_gateway.errors`) or the warm pool's typed
errors (`warmpool.errors`), which `from_state_error` maps to statuses.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from queue_gateway.admin import AdminApi, Clock, Principal
from queue_gateway.admin_access import AccessApi
from queue_gateway.admin_models import ModelsApi
from queue_gateway.admin_schedules import SchedulesApi
from queue_gateway.admin_schema import (
    ErrorResponse,
    KeyCreate,
    KeyCreated,
    ScheduleCreate,
    TargetGroups,
    TenantQuota,
    WarmBody,
)
from queue_gateway.admin_status import StatusApi
from queue_gateway.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UpstreamFailed,
    error_response,
    from_state_error,
    json_response,
)
from queue_gateway.sd import Observability
from queue_gateway.settings import GatewayConfig
from warmpool.apikeys import ApiKeyRecord
from warmpool.errors import RegistryError
from warmpool.phase import ModelPhase
from warmpool.schedule_store import ScheduleSpec
from warmpool.specs import ModelSpec
from warmpool.tenants import TenantSpec
from warmpool.warm import WarmRequest


class Role(StrEnum):
    """Who may call a route."""

    PUBLIC = "public"
    """Anyone: no credential is read."""
    ADMIN = "admin"
    """The bootstrap token or an admin key."""
    TENANT = "tenant"
    """Also a self-service key (`can_register`), within its own tenant's models."""
    METRICS = "metrics"
    """The metrics token, or an admin credential."""


Handler = Callable[..., Awaitable[Response]]
"""An unbound method of a handler group (`ModelsApi`, `SchedulesApi`, `AccessApi`, `StatusApi`) or of
`Observability`, `(self, request, who) -> Response`, or a function `(request, who) -> Response`."""


@dataclass(frozen=True, slots=True)
class Op:
    """One route: what serves it, who may call it, what it takes and answers, how it may refuse."""

    method: str
    path: str
    handler: Handler
    summary: str
    role: Role = Role.TENANT
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    ok: int = 200
    media: str = "application/json"
    errors: tuple[type[GatewayError], ...] = ()
    """Refusals besides those of the role (401 and 403 for every role but `PUBLIC`)."""

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def refusals(self) -> list[type[GatewayError]]:
        by_role: tuple[type[GatewayError], ...] = () if self.role is Role.PUBLIC else (Unauthorized, Forbidden)
        return sorted({*by_role, *self.errors}, key=lambda e: e.status)


async def serve_document(request: Request, who: Principal | None) -> Response:
    return json_response(openapi_document())


_BODY = (BadRequest, PayloadTooLarge)
"""A route that reads a JSON body refuses a malformed or oversized one."""

ROUTES: tuple[Op, ...] = (
    Op("GET", "/openapi.json", serve_document, "This document", role=Role.PUBLIC),
    Op("GET", "/v1/models", ModelsApi.list_models, "List models the caller can see, with their phase"),
    Op(
        "POST",
        "/v1/models",
        ModelsApi.register_model,
        "Register a model or LoRA adapter",
        request=ModelSpec,
        ok=201,
        errors=(*_BODY, NotFound, Conflict),
    ),
    Op(
        "GET",
        "/v1/models/{name}",
        ModelsApi.show_model,
        "Show a model: spec, status, adapters, schedules",
        errors=(NotFound,),
    ),
    Op(
        "PATCH",
        "/v1/models/{name}",
        ModelsApi.update_model,
        "Update a model (a partial ModelSpec, merged)",
        errors=(*_BODY, NotFound, Conflict),
    ),
    Op("DELETE", "/v1/models/{name}", ModelsApi.remove_model, "Remove a model", errors=(NotFound, Conflict)),
    Op(
        "POST",
        "/v1/models/{name}/warm",
        ModelsApi.warm_model,
        "Keep a model warm for a while",
        request=WarmBody,
        ok=202,
        errors=(*_BODY, NotFound),
    ),
    Op(
        "GET",
        "/v1/models/{name}/schedules",
        SchedulesApi.list_schedules,
        "List a model's schedules",
        errors=(NotFound,),
    ),
    Op(
        "POST",
        "/v1/models/{name}/schedules",
        SchedulesApi.add_schedule,
        "Add a cron or iCalendar schedule",
        request=ScheduleCreate,
        ok=201,
        errors=(*_BODY, NotFound),
    ),
    Op(
        "DELETE",
        "/v1/models/{name}/schedules/{sid}",
        SchedulesApi.remove_schedule,
        "Remove a schedule",
        errors=(NotFound,),
    ),
    Op("GET", "/v1/schedules", SchedulesApi.list_schedules, "List all schedules"),
    Op("GET", "/v1/keys", AccessApi.list_keys, "List API keys (never their secrets)", role=Role.ADMIN),
    Op(
        "POST",
        "/v1/keys",
        AccessApi.create_key,
        "Create an API key; the key is in the answer, once",
        role=Role.ADMIN,
        request=KeyCreate,
        response=KeyCreated,
        ok=201,
        errors=(*_BODY, NotFound),
    ),
    Op("DELETE", "/v1/keys/{key_id}", AccessApi.revoke_key, "Revoke a key", role=Role.ADMIN, errors=(NotFound,)),
    Op(
        "GET", "/v1/tenants", AccessApi.list_tenants, "List tenants with their quotas and model counts", role=Role.ADMIN
    ),
    Op(
        "POST",
        "/v1/tenants",
        AccessApi.create_tenant,
        "Create a tenant",
        role=Role.ADMIN,
        request=TenantSpec,
        response=TenantSpec,
        ok=201,
        errors=(*_BODY, Conflict),
    ),
    Op("GET", "/v1/tenants/{name}", AccessApi.show_tenant, "Show a tenant", errors=(NotFound,)),
    Op(
        "PATCH",
        "/v1/tenants/{name}",
        AccessApi.set_quota,
        "Set a tenant's quotas (null: unlimited)",
        role=Role.ADMIN,
        request=TenantQuota,
        response=TenantSpec,
        errors=(*_BODY, NotFound),
    ),
    Op("GET", "/v1/status", StatusApi.status, "Models with phase, desired/actual replicas, queue depth, cold starts"),
    Op(
        "GET",
        "/v1/events",
        StatusApi.list_events,
        "The events stream, newest last (query: model, kind, count)",
        role=Role.ADMIN,
        errors=(BadRequest,),
    ),
    Op(
        "GET",
        "/v1/sd/engines",
        Observability.sd_engines,
        "Ready engines as Prometheus http_sd_config target groups",
        role=Role.METRICS,
        response=TargetGroups,
    ),
    Op(
        "GET",
        "/v1/engines/{instance}/metrics",
        Observability.engine_metrics,
        "An engine's own /metrics, fetched with its per-instance key",
        role=Role.METRICS,
        media="text/plain",
        errors=(BadRequest, NotFound, UpstreamFailed),
    ),
    Op(
        "GET",
        "/v1/metrics",
        Observability.pool,
        "The warm pool's state (desired, ready, phases, queues) as metrics",
        role=Role.METRICS,
        media="text/plain",
    ),
)

DESCRIBED: tuple[type[BaseModel], ...] = (ModelSpec, ScheduleSpec, ApiKeyRecord, WarmRequest, ModelPhase)
"""Models the answers embed, described in the document's components besides the table's bodies."""


# --- the OpenAPI document ---------------------------------------------------------------------


def openapi_document(mount: str = "/admin", routes: Iterable[Op] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`, its schemas from the pydantic models."""
    routes = tuple(routes)
    bodies: set[type[BaseModel]] = {m for op in routes for m in (op.request, op.response) if m is not None}
    described: set[type[BaseModel]] = {*bodies, *DESCRIBED, ErrorResponse}
    models = sorted(described, key=lambda m: m.__name__)
    _, schemas = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {}
    for op in routes:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
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


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(op: Op) -> dict[str, Any]:
    if op.media == "application/json":
        ok_schema = _ref(op.response) if op.response is not None else {"type": "object"}
    else:
        ok_schema = {}
    responses: dict[str, Any] = {str(op.ok): {"description": "OK", "content": {op.media: {"schema": ok_schema}}}}
    for error in op.refusals:
        responses[str(error.status)] = {
            "description": f"{error.type}: an OpenAI-shaped error",
            "content": {"application/json": {"schema": _ref(ErrorResponse)}},
        }
    out: dict[str, Any] = {"summary": op.summary, "responses": responses}
    if op.role is Role.PUBLIC:
        out["security"] = []
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(op.request)}}}
    if op.path_params:
        out["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in op.path_params
        ]
    return out


# --- the Starlette app ------------------------------------------------------------------------


def refusal(exc: Exception) -> GatewayError | None:
    """The HTTP refusal of an exception raised by a handler; None for a bug (it propagates)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, RegistryError):
        return from_state_error(exc)
    if isinstance(exc, TimeoutError):
        return BadRequest("the model's directory could not be read in time", code="fs_timeout")
    return None


def _endpoint(
    op: Op, api: AdminApi, owners: Sequence[object], obs: Observability
) -> Callable[[Request], Awaitable[Response]]:
    owner = next((t for t in owners if getattr(type(t), op.handler.__name__, None) is op.handler), None)
    handler: Handler = op.handler if owner is None else getattr(owner, op.handler.__name__)

    async def endpoint(request: Request) -> Response:
        try:
            who: Principal | None = None
            if op.role is Role.METRICS:
                who = await obs.authorize(request)
            elif op.role is not Role.PUBLIC:
                who = await api.authenticate(request)
                if op.role is Role.ADMIN:
                    api.require_admin(who)
            return await handler(request, who)
        except Exception as exc:
            error = refusal(exc)
            if error is None:
                raise
            return error_response(error)

    return endpoint


def build_admin_app(
    redis: aioredis.Redis, settings: GatewayConfig, *, clock: Clock = time.time, routes: Iterable[Op] = ROUTES
) -> Starlette:
    """The admin API as a Starlette app, to be mounted at `/admin`: one `Route` per row of `routes`."""
    api = AdminApi(redis, settings, clock)
    obs = Observability(api, clock)
    owners = [group(redis, settings, clock) for group in (ModelsApi, SchedulesApi, AccessApi, StatusApi)] + [obs]
    served = [Route(op.path, _endpoint(op, api, owners, obs), methods=[op.method]) for op in routes]

    async def unrouted(request: Request, exc: Exception) -> Response:
        # Starlette's own 404/405 are plain text: every answer of this API is OpenAI-shaped JSON.
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            return error_response(MethodNotAllowed("method not allowed"))
        return error_response(NotFound(f"unknown path {request.url.path}", code="unknown_url"))

    return Starlette(routes=served, exception_handlers={404: unrouted, 405: unrouted})


__all__ = ["ROUTES", "Op", "Role", "build_admin_app", "openapi_document", "refusal"]
