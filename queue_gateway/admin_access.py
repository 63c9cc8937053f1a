"""The admin API's access control: API keys and tenants with their quotas."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from queue_gateway.admin import AdminApi, Principal
from queue_gateway.admin_schema import KeyCreate, KeyCreated, TenantQuota
from queue_gateway.errors import json_response
from warmpool.errors import Missing, RegistryError
from warmpool.registry import check_tenant_name, one_line
from warmpool.specs import ModelSpec
from warmpool.tenant_limits import check_account, effective_limits
from warmpool.tenants import TenantSpec


class AccessApi(AdminApi):
    """Handlers of `/v1/keys` and `/v1/tenants`."""

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
                idle_gpu_hours_per_day=quota.idle_gpu_hours_per_day,
                limits=limits,
                clear=clear,
            )
        except KeyError:
            raise Missing(f"tenant {name!r} does not exist", param="name") from None
        await self.events.record("tenant_quota", now_s=self.clock(), tenant=name, by=who.label, **raw)
        return json_response(tenant.model_dump(mode="json"))


__all__ = ["AccessApi"]
