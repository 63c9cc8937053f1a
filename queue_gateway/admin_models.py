"""The admin API's models and LoRA adapters: list, show, register, update, remove, warm."""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from queue_gateway.admin import AdminApi, Principal
from queue_gateway.admin_schema import WarmBody
from queue_gateway.admin_status import status_rows
from queue_gateway.errors import Forbidden, json_response
from warmpool.errors import AlreadyExists, Missing, NotPermitted, RegistryError
from warmpool.external import check_external
from warmpool.feasibility import ask as ask_feasible
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
from warmpool.specs import ModelKind, ModelSpec, Resources, Visibility, adapters_of
from warmpool.tenant_limits import check_spec, check_warm
from warmpool.warm import WarmRequest

FS_TIMEOUT_S = 10.0
"""Reading a model's config.json on a shared filesystem; a hung mount must not hang the API."""


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


class ModelsApi(AdminApi):
    """Handlers of `/v1/models` and below (schedules apart)."""

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
        row = (await status_rows(self, [spec]))[0]
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

    async def _runnable(self, spec: ModelSpec) -> list[str]:
        """Ask the launcher whether the cluster can ever run `spec` (`warmpool.feasibility`): refuse it if
        Slurm says never; the warnings to return if it could not be checked."""
        timeout_s = self.settings.gateway.registration_check_s
        if spec.external is not None or spec.kind is not ModelKind.BASE or timeout_s <= 0:
            return []
        verdict = await ask_feasible(self.redis, self.keys, spec, timeout_s=timeout_s)
        if verdict.runnable is False:
            raise RegistryError(
                f"the cluster cannot run this model: {verdict.reason}", param="resources", code="model_unrunnable"
            )
        if verdict.runnable is None:
            return [f"not checked against the cluster ({verdict.reason}): the model may never start"]
        return []

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
        warnings = await self._runnable(spec)
        await self.models.put(spec, owner_quota=await self._owner_quota(who, spec))
        await self.events.record("model_registered", now_s=self.clock(), model=spec.name, by=who.label)
        body = {"model": spec.model_dump(mode="json"), "notes": notes, "warnings": warnings}
        return json_response(body, status=201)

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
        warnings = await self._runnable(spec) if spec.resources != existing.resources else []
        try:
            await self.models.put(spec, replace=True, owner_quota=await self._owner_quota(who, spec))
        except KeyError:
            raise Missing(f"model {name!r} does not exist", param="name", code="model_not_found") from None
        await self.events.record("model_updated", now_s=self.clock(), model=name, by=who.label)
        return json_response({"model": spec.model_dump(mode="json"), "notes": notes, "warnings": warnings})

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


__all__ = ["ModelsApi"]
