"""The admin API's schedules: cron expressions and iCalendar feeds that keep a model warm."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from queue_gateway.admin import AdminApi, Principal
from queue_gateway.admin_schema import ScheduleCreate
from queue_gateway.errors import json_response
from warmpool.errors import Missing, RegistryError
from warmpool.registry import one_line, visible_to
from warmpool.schedule_store import ScheduleSpec
from warmpool.specs import ModelKind


class SchedulesApi(AdminApi):
    """Handlers of a model's schedules and the list of all."""

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


__all__ = ["SchedulesApi"]
