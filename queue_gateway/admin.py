"""The admin API: models, LoRA adapters, schedules, keys, tenants, status and events, as JSON.

Mounted by the gateway at `/admin`; the routes here are relative to that mount
(`/v1/models` is served as `/admin/v1/models`). The OpenAPI 3.1 document is at `/openapi.json`.

Who may do what:
- the bootstrap `admin_token` setting, or an API key with `admin`: everything;
- a key with `can_register` (self-service): models owned by its tenant (registered private to it by
  default, within the tenant's `max_models`), their schedules and warm requests, and the status of
  models it can see. A model it may not see answers 404, as if it did not exist;
- any other key: 403. No or a wrong token: 401.

The routes, who may call each and the OpenAPI document are declared once, in
`queue_gateway.admin_routes`; the handlers, grouped by resource (`admin_models`, `admin_schedules`,
`admin_access` for keys and tenants, `admin_status`), build on `AdminApi` here (the stores, who is
calling, the request body) and receive the caller already authenticated. They raise
the warm pool's typed errors, mapped to OpenAI-shaped errors (`{"error": {"message", "type", "code",
"param"}}`) at the one HTTP boundary there.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from starlette.requests import Request

from queue_gateway.errors import BadRequest, Forbidden, PayloadTooLarge, Unauthorized
from queue_gateway.settings import GatewayConfig
from warmpool.apikeys import ApiKeyStore
from warmpool.errors import Missing, NotPermitted
from warmpool.events import EventLog
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.phase import PhaseBoard
from warmpool.registry import visible_to
from warmpool.schedule_store import ScheduleStore
from warmpool.settings import TenantLimits
from warmpool.specs import ModelSpec
from warmpool.tenant_limits import effective_limits
from warmpool.tenants import TenantStore
from warmpool.warm import WarmBoard

Clock = Callable[[], float]

MAX_BODY_BYTES = 2_000_000
"""Largest request body: an .ics timetable is the biggest thing anyone sends."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the bootstrap token, an admin key, or a self-service key of a tenant."""

    admin: bool
    tenant: str | None
    key_id: str | None

    @property
    def label(self) -> str:
        return "admin-token" if self.key_id is None else f"key:{self.key_id}"


class AdminApi:
    """The stores of one deployment and what every handler group needs: who is calling, its body, a model it may see."""

    def __init__(self, redis: aioredis.Redis, settings: GatewayConfig, clock: Clock) -> None:
        self.redis = redis
        self.settings = settings
        self.clock = clock
        self.keys = Keys(settings.redis.key_prefix)
        self.models = ModelStore(redis, self.keys)
        self.api_keys = ApiKeyStore(redis, self.keys)
        self.tenants = TenantStore(redis, self.keys)
        self.schedules = ScheduleStore(redis, self.keys)
        self.phases = PhaseBoard(redis, self.keys)
        self.warm_board = WarmBoard(redis, self.keys)
        self.events = EventLog(redis, self.keys)

    # --- plumbing ---------------------------------------------------------------------------

    async def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing bearer token: pass --token or set SLURMLESS_ADMIN_TOKEN", code="missing_token")
        bootstrap = self.settings.admin_token
        if bootstrap and hmac.compare_digest(token.encode(), bootstrap.encode()):
            return Principal(admin=True, tenant=None, key_id=None)
        record = await self.api_keys.verify(token, now_s=self.clock())
        if record is None:
            raise Unauthorized("invalid or revoked token", code="invalid_token")
        if record.admin:
            return Principal(admin=True, tenant=record.tenant, key_id=record.key_id)
        if record.can_register:
            return Principal(admin=False, tenant=record.tenant, key_id=record.key_id)
        raise Forbidden("this key may not use the admin API", code="not_admin")

    @staticmethod
    def require_admin(who: Principal) -> None:
        if not who.admin:
            raise Forbidden("this needs an admin key", code="not_admin")

    @staticmethod
    async def body(request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body larger than {MAX_BODY_BYTES} bytes")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body larger than {MAX_BODY_BYTES} bytes")
        if not raw:
            return {}
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object", code="invalid_json")
        return data

    async def visible_model(self, who: Principal, name: str) -> ModelSpec:
        """The model, or 404 when it does not exist or the caller may not see it."""
        spec = await self.models.get(name)
        if spec is None or not (who.admin or visible_to(spec, who.tenant)):
            raise Missing(f"model {name!r} does not exist", param="name", code="model_not_found")
        return spec

    async def owned_model(self, who: Principal, name: str) -> ModelSpec:
        """The model, when the caller may change it (admins, or the owning tenant's self-service keys)."""
        spec = await self.visible_model(who, name)
        if not who.admin and spec.owner_tenant != who.tenant:
            raise NotPermitted(
                f"model {name!r} belongs to {spec.owner_tenant or 'the site'}: only its owner may change it"
            )
        return spec

    async def tenant_limits(self, tenant: str) -> TenantLimits:
        return effective_limits(self.settings.registry.tenant_limits, await self.tenants.get(tenant))


__all__ = ["MAX_BODY_BYTES", "AdminApi", "Clock", "Principal"]
