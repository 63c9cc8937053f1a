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
`queue_gateway.admin_routes`; the handlers here receive the caller already authenticated. They raise
the warm pool's typed errors, mapped to OpenAI-shaped errors (`{"error": {"message", "type", "code",
"param"}}`) at the one HTTP boundary there.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from queue_gateway.admin_schema import KeyCreate, KeyCreated, ScheduleCreate, TenantQuota, WarmBody
from queue_gateway.errors import BadRequest, Forbidden, PayloadTooLarge, Unauthorized, json_response
from queue_gateway.settings import GatewayConfig
from warmpool import pool_load
from warmpool.apikeys import ApiKeyStore
from warmpool.errors import AlreadyExists, Missing, NotPermitted, RegistryError
from warmpool.events import EventLog
from warmpool.external import check_external
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.phase import ModelPhase, PhaseBoard
from warmpool.redisio import awaited, text
from warmpool.registry import (
    check_model_dir,
    check_name,
    check_source,
    check_tenant_name,
    flag_name,
    one_line,
    read_model_config,
    validate_spec,
    visible_to,
)
from warmpool.schedule_store import ScheduleSpec, ScheduleStore
from warmpool.settings import TenantLimits
from warmpool.specs import ModelKind, ModelSpec, Resources, Visibility, adapters_of
from warmpool.tenant_limits import check_account, check_spec, check_warm, effective_limits
from warmpool.tenants import TenantSpec, TenantStore
from warmpool.timeline import LAST_COLD_START, LAST_COLD_START_AT
from warmpool.warm import WarmBoard, WarmRequest

Clock = Callable[[], float]

MAX_BODY_BYTES = 2_000_000
"""Largest request body: an .ics timetable is the biggest thing anyone sends."""
FS_TIMEOUT_S = 10.0
"""Reading a model's config.json on a shared filesystem; a hung mount must not hang the API."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the bootstrap token, an admin key, or a self-service key of a tenant."""

    admin: bool
    tenant: str | None
    key_id: str | None

    @property
    def label(self) -> str:
        return "admin-token" if self.key_id is None else f"key:{self.key_id}"


def _merge(base: dict[str, Any], patch: dict[str, Any], *, drop_none: bool = False) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, drop_none=key == "engine_args")
        elif value is None and drop_none:
            out.pop(key, None)
        else:
            out[key] = value
    return out


class AdminApi:
    """The handlers, sharing the stores of one deployment."""

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

    # --- models -----------------------------------------------------------------------------

    async def list_models(self, request: Request, who: Principal) -> Response:
        specs = [s for s in await self.models.all() if who.admin or visible_to(s, who.tenant)]
        phases = await self.phases.many(sorted({s.instance_model for s in specs}))
        data = [
            {"model": s.model_dump(mode="json"), "phase": phases[s.instance_model].model_dump(mode="json")}
            for s in specs
        ]
        return json_response({"object": "list", "data": data})

    async def show_model(self, request: Request, who: Principal) -> Response:
        spec = await self.visible_model(who, request.path_params["name"])
        return json_response(await self._model_view(spec, who))

    async def _model_view(self, spec: ModelSpec, who: Principal) -> dict[str, Any]:
        row = (await self._status_rows([spec]))[0]
        adapters = [
            s.name for s in adapters_of(spec.name, await self.models.all()) if who.admin or visible_to(s, who.tenant)
        ]
        schedules = await self.schedules.of_model(spec.name)
        return {
            "model": spec.model_dump(mode="json"),
            "status": row,
            "adapters": adapters,
            "schedules": [s.model_dump(mode="json", exclude={"ics"}) | {"summary": s.summary()} for s in schedules],
        }

    async def _prepare(
        self, who: Principal, data: dict[str, Any], *, gpus_given: bool, existing: ModelSpec | None
    ) -> tuple[ModelSpec, list[str]]:
        check_name(data.get("name"))
        if not who.admin:
            data["owner_tenant"] = who.tenant
            visibility = data.get("visibility")
            if existing is None and visibility is None:
                data["visibility"] = {"public": False, "tenants": []}
            elif isinstance(visibility, dict):
                previous = existing.visibility if existing is not None else Visibility(public=False)
                if visibility.get("public") and not previous.public:
                    raise NotPermitted("only an admin can make a model public", param="visibility.public")
                if any(t != who.tenant for t in visibility.get("tenants") or [] if t not in previous.tenants):
                    raise NotPermitted(
                        "a self-service key can share a model only with its own tenant", param="visibility"
                    )
        data["created_s"] = existing.created_s if existing is not None else self.clock()
        try:
            spec = ModelSpec.model_validate(data)
        except ValidationError as exc:
            raise RegistryError(one_line(exc)) from None
        if spec.external is not None:
            return self._prepare_external(who, spec)
        base: ModelSpec | None = None
        if spec.kind is ModelKind.LORA and spec.base_model is not None:
            base = await self.models.get(spec.base_model)
            if base is None or not (who.admin or visible_to(base, who.tenant)):
                raise Missing(f"base model {spec.base_model!r} does not exist", param="base_model")
        reg = self.settings.registry
        config: dict[str, Any] | None = None
        if spec.source.startswith("/"):
            # Check the roots before touching the filesystem, so that no hostile path is ever read.
            check_source(spec.source, roots=self.settings.model_roots, allow_hub_ids=reg.allow_hub_ids)
            if reg.check_paths_locally:
                with anyio.fail_after(FS_TIMEOUT_S):
                    problem = await anyio.to_thread.run_sync(
                        check_model_dir, spec.source, spec.kind, list(self.settings.model_roots)
                    )
                if problem is not None:
                    raise RegistryError(problem, param="source")
            if spec.kind is ModelKind.BASE and not gpus_given:
                with anyio.fail_after(FS_TIMEOUT_S):
                    config = await anyio.to_thread.run_sync(read_model_config, spec.source)
        spec, notes = validate_spec(
            spec,
            reg,
            roots=self.settings.model_roots,
            base=base,
            gpus_given=gpus_given,
            config=config,
            admin=who.admin,
            previous=existing,
        )
        if not who.admin:
            assert who.tenant is not None
            check_spec(spec, await self.tenant_limits(who.tenant), who.tenant)
        return spec, notes

    def _prepare_external(self, who: Principal, spec: ModelSpec) -> tuple[ModelSpec, list[str]]:
        """An external route: admins only (it sends the site's key to a URL of their choosing), no resources."""
        assert spec.external is not None
        if not who.admin:
            raise Forbidden("only an admin can register an external model", param="external")
        check_name(spec.name)
        for tenant in spec.visibility.tenants:
            check_tenant_name(tenant)
        conf = self.settings.gateway.external
        try:
            notes = check_external(spec.external, keys_dir=conf.keys_dir, allow_http_loopback=conf.allow_http_loopback)
        except ValueError as exc:
            raise RegistryError(str(exc), param="external") from None
        return spec.model_copy(update={"resources": Resources(gpus=0)}), notes

    async def tenant_limits(self, tenant: str) -> TenantLimits:
        return effective_limits(self.settings.registry.tenant_limits, await self.tenants.get(tenant))

    async def _owner_quota(self, who: Principal, spec: ModelSpec) -> int | None:
        if who.admin:
            return None
        assert who.tenant is not None
        tenant = await self.tenants.get(who.tenant)
        if tenant is None:
            raise NotPermitted(f"tenant {who.tenant!r} does not exist: ask an admin to create it")
        return tenant.max_models

    async def _check_owner_exists(self, spec: ModelSpec) -> None:
        for tenant in {*(spec.visibility.tenants), *([spec.owner_tenant] if spec.owner_tenant else [])}:
            if await self.tenants.get(tenant) is None:
                raise Missing(f"tenant {tenant!r} does not exist", param="tenant")

    async def register_model(self, request: Request, who: Principal) -> Response:
        data = await self.body(request)
        resources = data.get("resources")
        gpus_given = isinstance(resources, dict) and "gpus" in resources
        spec, notes = await self._prepare(who, data, gpus_given=gpus_given, existing=None)
        await self._check_owner_exists(spec)
        await self.models.put(spec, owner_quota=await self._owner_quota(who, spec))
        await self.events.record("model_registered", now_s=self.clock(), model=spec.name, by=who.label)
        return json_response({"model": spec.model_dump(mode="json"), "notes": notes}, status=201)

    async def update_model(self, request: Request, who: Principal) -> Response:
        name = request.path_params["name"]
        existing = await self.owned_model(who, name)
        patch = await self.body(request)
        if patch.get("name", name) != name:
            raise RegistryError("a model cannot be renamed: register the new name and remove the old", param="name")
        if "kind" in patch and patch["kind"] != existing.kind.value:
            raise RegistryError("a model's kind cannot change: remove it and register again", param="kind")
        if not who.admin and "owner_tenant" in patch and patch["owner_tenant"] != who.tenant:
            raise NotPermitted("only an admin can change a model's owner", param="owner_tenant")
        resources = patch.get("resources")
        gpus_given = "source" not in patch or (isinstance(resources, dict) and "gpus" in resources)
        if isinstance(patch.get("engine_args"), dict):
            patch["engine_args"] = {flag_name(str(k)): v for k, v in patch["engine_args"].items()}
        merged = _merge(existing.model_dump(mode="json"), patch)
        spec, notes = await self._prepare(who, merged, gpus_given=gpus_given, existing=existing)
        await self._check_owner_exists(spec)
        try:
            await self.models.put(spec, replace=True, owner_quota=await self._owner_quota(who, spec))
        except KeyError:
            raise Missing(f"model {name!r} does not exist", param="name", code="model_not_found") from None
        await self.events.record("model_updated", now_s=self.clock(), model=name, by=who.label)
        return json_response({"model": spec.model_dump(mode="json"), "notes": notes})

    async def remove_model(self, request: Request, who: Principal) -> Response:
        spec = await self.owned_model(who, request.path_params["name"])
        adapters = adapters_of(spec.name, await self.models.all())
        if adapters:
            # Another tenant's private adapter is not named, not even to the base's owner.
            shown = [s.name for s in adapters if who.admin or visible_to(s, who.tenant)]
            hidden = len(adapters) - len(shown)
            names = ", ".join([*shown, *([f"{hidden} of other tenants"] if hidden else [])])
            raise AlreadyExists(f"model {spec.name!r} is the base of adapter(s) {names}: remove them first")
        removed = await self.models.remove(spec.name)
        if not removed:
            raise Missing(f"model {spec.name!r} does not exist", param="name", code="model_not_found")
        await self.events.record("model_removed", now_s=self.clock(), model=spec.name, by=who.label)
        return json_response({"deleted": True, "name": spec.name})

    async def warm_model(self, request: Request, who: Principal) -> Response:
        spec = await self.owned_model(who, request.path_params["name"])
        try:
            body = WarmBody.model_validate(await self.body(request))
        except ValidationError as exc:
            raise RegistryError(one_line(exc)) from None
        if not who.admin:
            assert who.tenant is not None
            check_warm(body.duration_s, await self.tenant_limits(who.tenant), who.tenant)
        if spec.external is not None:
            raise RegistryError(f"model {spec.name!r} is external: it runs no instances to warm", param="name")
        target = spec if spec.kind is ModelKind.BASE else await self.models.get(spec.instance_model)
        if target is None:
            raise Missing(f"base model {spec.instance_model!r} does not exist", param="base_model")
        if body.replicas > target.policy.max_replicas:
            raise RegistryError(
                f"{body.replicas} replicas exceed max_replicas {target.policy.max_replicas} of {target.name}",
                param="replicas",
            )
        now_s = self.clock()
        warm = WarmRequest(
            model=target.name,
            replicas=body.replicas,
            until_s=now_s + body.duration_s,
            requested_s=now_s,
            requested_by=who.label,
        )
        warm = await self.warm_board.request(warm)
        await self.events.record(
            "warm_requested",
            now_s=now_s,
            model=target.name,
            replicas=warm.replicas,
            until_s=warm.until_s,
            by=who.label,
            via=spec.name,
        )
        phase = await self.phases.get(target.name)
        return json_response({"warm": warm.model_dump(mode="json"), "phase": phase.model_dump(mode="json")}, status=202)

    # --- schedules --------------------------------------------------------------------------

    async def list_schedules(self, request: Request, who: Principal) -> Response:
        name = request.path_params.get("name")
        if name is not None:
            models = [(await self.visible_model(who, name)).name]
        else:
            models = [s.name for s in await self.models.all() if who.admin or visible_to(s, who.tenant)]
        specs = await self.schedules.all(models)
        data = [s.model_dump(mode="json", exclude={"ics"}) | {"summary": s.summary()} for s in specs]
        return json_response({"object": "list", "data": data})

    async def add_schedule(self, request: Request, who: Principal) -> Response:
        spec = await self.owned_model(who, request.path_params["name"])
        try:
            body = ScheduleCreate.model_validate(await self.body(request))
            schedule = ScheduleSpec(model=spec.name, created_s=self.clock(), **body.model_dump())
        except ValidationError as exc:
            raise RegistryError(one_line(exc)) from None
        if spec.external is not None:
            raise RegistryError(f"model {spec.name!r} is external: it runs no instances to schedule", param="name")
        target = spec if spec.kind is ModelKind.BASE else await self.models.get(spec.instance_model)
        if target is not None and schedule.replicas > target.policy.max_replicas:
            raise RegistryError(
                f"{schedule.replicas} replicas exceed max_replicas {target.policy.max_replicas} of {target.name}",
                param="replicas",
            )
        try:
            await self.schedules.add(schedule)
        except KeyError:
            raise Missing(f"model {spec.name!r} does not exist", param="name", code="model_not_found") from None
        await self.events.record(
            "schedule_added", now_s=self.clock(), model=spec.name, schedule=schedule.id, by=who.label
        )
        data = schedule.model_dump(mode="json", exclude={"ics"}) | {"summary": schedule.summary()}
        return json_response({"schedule": data}, status=201)

    async def remove_schedule(self, request: Request, who: Principal) -> Response:
        spec = await self.owned_model(who, request.path_params["name"])
        sid = request.path_params["sid"]
        if not await self.schedules.remove(spec.name, sid):
            raise Missing(f"model {spec.name!r} has no schedule {sid!r}", param="schedule")
        await self.events.record("schedule_removed", now_s=self.clock(), model=spec.name, schedule=sid, by=who.label)
        return json_response({"deleted": True, "id": sid})

    # --- keys -------------------------------------------------------------------------------

    async def list_keys(self, request: Request, who: Principal) -> Response:
        tenant = request.query_params.get("tenant")
        records = await self.api_keys.list(tenant)
        return json_response({"object": "list", "data": [r.model_dump(mode="json") for r in records]})

    async def create_key(self, request: Request, who: Principal) -> Response:
        try:
            body = KeyCreate.model_validate(await self.body(request))
        except ValidationError as exc:
            raise RegistryError(one_line(exc)) from None
        check_tenant_name(body.tenant)
        if await self.tenants.get(body.tenant) is None:
            raise Missing(f"tenant {body.tenant!r} does not exist: create it first", param="tenant")
        now_s = self.clock()
        plaintext, record = await self.api_keys.create(
            tenant=body.tenant,
            now_s=now_s,
            name=body.name,
            admin=body.admin,
            can_register=body.can_register,
            operator=body.operator,
            rpm_limit=body.rpm_limit,
            concurrency_limit=body.concurrency_limit,
            expires_s=None if body.expires_in_s is None else now_s + body.expires_in_s,
        )
        await self.events.record(
            "key_created", now_s=self.clock(), key_id=record.key_id, tenant=body.tenant, by=who.label
        )
        return json_response(KeyCreated(key=plaintext, record=record).model_dump(mode="json"), status=201)

    async def revoke_key(self, request: Request, who: Principal) -> Response:
        key_id = request.path_params["key_id"]
        if not await self.api_keys.revoke(key_id):
            raise Missing(f"key {key_id!r} does not exist", param="key_id")
        await self.events.record("key_revoked", now_s=self.clock(), key_id=key_id, by=who.label)
        return json_response({"revoked": True, "key_id": key_id})

    # --- tenants ----------------------------------------------------------------------------

    async def _tenant_view(self, tenant: TenantSpec, specs: list[ModelSpec]) -> dict[str, Any]:
        return tenant.model_dump(mode="json") | {"models": sum(1 for s in specs if s.owner_tenant == tenant.name)}

    async def list_tenants(self, request: Request, who: Principal) -> Response:
        specs = await self.models.all()
        data = [await self._tenant_view(t, specs) for t in await self.tenants.all()]
        return json_response({"object": "list", "data": data})

    async def show_tenant(self, request: Request, who: Principal) -> Response:
        name = request.path_params["name"]
        if not who.admin and name != who.tenant:
            raise Missing(f"tenant {name!r} does not exist", param="name")
        tenant = await self.tenants.get(name)
        if tenant is None:
            raise Missing(f"tenant {name!r} does not exist", param="name")
        return json_response(await self._tenant_view(tenant, await self.models.all()))

    async def create_tenant(self, request: Request, who: Principal) -> Response:
        data = await self.body(request)
        check_tenant_name(data.get("name"))
        data["created_s"] = self.clock()
        try:
            tenant = TenantSpec.model_validate(data)
        except ValidationError as exc:
            raise RegistryError(one_line(exc)) from None
        check_account(tenant, effective_limits(self.settings.registry.tenant_limits, tenant))
        await self.tenants.create(tenant)
        await self.events.record("tenant_created", now_s=self.clock(), tenant=tenant.name, by=who.label)
        return json_response(tenant.model_dump(mode="json"), status=201)

    async def set_quota(self, request: Request, who: Principal) -> Response:
        name = request.path_params["name"]
        raw = await self.body(request)
        try:
            quota = TenantQuota.model_validate(raw)
        except ValidationError as exc:
            raise RegistryError(one_line(exc)) from None
        clear = frozenset(k for k, v in raw.items() if v is None and k != "limits")
        limits = None if quota.limits is None else quota.limits.model_dump(exclude_unset=True)
        try:
            tenant = await self.tenants.set_quota(
                name,
                max_concurrent_requests=quota.max_concurrent_requests,
                max_models=quota.max_models,
                limits=limits,
                clear=clear,
            )
        except KeyError:
            raise Missing(f"tenant {name!r} does not exist", param="name") from None
        await self.events.record("tenant_quota", now_s=self.clock(), tenant=name, by=who.label, **raw)
        return json_response(tenant.model_dump(mode="json"))

    # --- status and events ------------------------------------------------------------------

    async def _status_rows(self, specs: list[ModelSpec]) -> list[dict[str, Any]]:
        now_s = self.clock()
        targets = sorted({s.instance_model for s in specs})
        phases = await self.phases.many(targets)
        desired_raw = await awaited(self.redis.hgetall(self.keys.desired))
        desired = {text(k): _replicas(v) for k, v in desired_raw.items()}
        per_spec = pool_load.REPLIES + 2
        async with self.redis.pipeline(transaction=False) as pipe:
            for spec in specs:
                pool_load.ask(pipe, self.keys, spec.instance_model)
                pipe.hmget(self.keys.model_stats(spec.instance_model), [LAST_COLD_START, LAST_COLD_START_AT])
                pipe.get(self.keys.warm(spec.instance_model))
            raw = await pipe.execute()
        rows: list[dict[str, Any]] = []
        for i, spec in enumerate(specs):
            replies = raw[per_spec * i : per_spec * (i + 1)]
            load = pool_load.parse(replies[: pool_load.REPLIES])
            (cold, cold_at), warm_raw = replies[pool_load.REPLIES :]
            phase: ModelPhase = phases[spec.instance_model]
            warm = WarmRequest.model_validate_json(warm_raw) if warm_raw else None
            rows.append(
                {
                    "model": spec.name,
                    "kind": spec.kind.value,
                    "instance_model": spec.instance_model,
                    "phase": phase.phase.value,
                    "slurm_reason": phase.slurm_reason,
                    "est_start_s": phase.est_start_s,
                    "eta_s": phase.eta_s,
                    "detail": phase.detail,
                    "desired": desired.get(spec.instance_model),
                    "actual": load.ready,
                    "coming": phase.coming_instances,
                    "queue_depth": load.queue_depth,
                    "last_cold_start_s": float(cold) if cold else None,
                    "last_cold_start_at_s": float(cold_at) if cold_at else None,
                    "warm_until_s": warm.until_s if warm is not None and warm.until_s > now_s else None,
                }
            )
        return rows

    async def status(self, request: Request, who: Principal) -> Response:
        specs = [s for s in await self.models.all() if who.admin or visible_to(s, who.tenant)]
        return json_response({"object": "list", "now_s": self.clock(), "data": await self._status_rows(specs)})

    async def list_events(self, request: Request, who: Principal) -> Response:
        params = request.query_params
        try:
            count = max(1, min(1000, int(params.get("count", "50"))))
        except ValueError:
            raise BadRequest("count must be an integer", code="invalid_value", param="count") from None
        events = await self.events.recent(
            count=count, model=params.get("model") or None, kind=params.get("kind") or None
        )
        data = [
            {"id": e.id, "at_s": e.at_s, "kind": e.kind, "model": e.model, "instance": e.instance, "detail": e.detail}
            for e in events
        ]
        return json_response({"object": "list", "data": data})


def _replicas(raw: object) -> int | None:
    try:
        value = orjson.loads(raw if isinstance(raw, bytes | str) else b"null")
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict):
        value = value.get("replicas")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


__all__ = ["AdminApi", "Principal"]
