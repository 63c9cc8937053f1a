"""Schedules in Redis: keep a model warm on a cron expression or an iCalendar timetable.

Specs are validated on the way in (cron with croniter, feeds with icalendar through the same
expansion the policies use), so the launcher never meets a schedule it cannot read.
"""

from __future__ import annotations

import secrets
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis.asyncio as aioredis
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.schedules import CronSchedule, expand_cron, expand_ical
from policies.types import Occurrence
from warmpool.keys import Keys
from warmpool.redisio import awaited, text
from warmpool.specs import MODEL_NAME_RE

ICS_MAX_BYTES = 1_000_000
"""A lecture timetable is a few kB; anything this large is a mistake or an attack."""
_VALIDATE_HORIZON_S = 366 * 86400.0


class ScheduleKind(StrEnum):
    CRON = "cron"
    ICS = "ics"


class ScheduleSpec(BaseModel):
    """Keep `replicas` of `model` warm during each occurrence of a cron expression or a feed's events."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: secrets.token_hex(4), pattern=r"^[a-z0-9]{1,32}$")
    model: str = Field(pattern=MODEL_NAME_RE.pattern)
    kind: ScheduleKind
    expression: str | None = Field(None, max_length=200)
    """The cron expression (kind=cron)."""
    ics: str | None = Field(None, max_length=ICS_MAX_BYTES)
    """The iCalendar text (kind=ics)."""
    timezone: str = "UTC"
    replicas: int = Field(1, ge=1, le=64)
    duration_s: float | None = Field(None, gt=0, le=7 * 86400)
    """How long each cron occurrence lasts; feeds carry their events' own durations."""
    created_s: float = 0.0

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _well_formed(self) -> ScheduleSpec:
        if self.kind is ScheduleKind.CRON:
            if not self.expression or self.ics is not None:
                raise ValueError("a cron schedule needs an expression (and no ics)")
            if any(ord(c) < 32 for c in self.expression) or not croniter.is_valid(self.expression):
                raise ValueError(f"invalid cron expression {self.expression!r}")
            if self.duration_s is None:
                raise ValueError("a cron schedule needs duration_s")
        else:
            if not self.ics or self.expression is not None:
                raise ValueError("an ics schedule needs the feed's text (and no expression)")
            if "BEGIN:VCALENDAR" not in self.ics.upper():
                raise ValueError("the ics text is not an iCalendar feed (no BEGIN:VCALENDAR)")
            if "BEGIN:VEVENT" not in self.ics.upper():
                raise ValueError("the iCalendar feed has no events (VEVENT)")
            try:
                expand_ical(self.ics, 0.0, 1.0, default_tz=self.timezone)
            # A hostile feed may trip icalendar or dateutil in many ways; all mean "unreadable".
            except Exception as exc:
                raise ValueError(f"unreadable iCalendar feed: {_one_line(exc)}") from exc
        return self

    def occurrences(self, start_s: float, end_s: float) -> tuple[Occurrence, ...]:
        """Warm windows overlapping [start_s, end_s), for the launcher and the simulator."""
        if self.kind is ScheduleKind.CRON:
            assert self.expression is not None and self.duration_s is not None
            cron = CronSchedule(self.id, self.expression, self.duration_s, self.replicas, self.timezone)
            return expand_cron(cron, start_s, end_s)
        assert self.ics is not None
        return expand_ical(
            self.ics, start_s, end_s, default_replicas=self.replicas, default_tz=self.timezone, source=f"ics:{self.id}"
        )

    def summary(self) -> str:
        """One line for listings."""
        if self.kind is ScheduleKind.CRON:
            return f"cron '{self.expression}' for {self.duration_s:.0f}s"
        events = self.ics.upper().count("BEGIN:VEVENT") if self.ics else 0
        return f"ics feed with {events} event(s)"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


class ScheduleStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    async def add(self, spec: ScheduleSpec) -> None:
        """Store a validated schedule; the model must be registered (checked in the same transaction)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.keys.models)
                    if not await awaited(pipe.hexists(self.keys.models, spec.model)):
                        raise KeyError(f"model {spec.model!r} is not registered")
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(self.keys.schedules(spec.model), spec.id, spec.model_dump_json())
                    await pipe.execute()
                    return
                except aioredis.WatchError:
                    continue

    async def of_model(self, model: str) -> list[ScheduleSpec]:
        raw = await awaited(self.redis.hgetall(self.keys.schedules(model)))
        return sorted((ScheduleSpec.model_validate_json(v) for v in raw.values()), key=lambda s: (s.created_s, s.id))

    async def all(self, models: list[str]) -> list[ScheduleSpec]:
        """Schedules of the given models (the registry's names), in one round trip."""
        if not models:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.hgetall(self.keys.schedules(model))
            raws: list[dict[bytes, bytes]] = await pipe.execute()
        specs = [ScheduleSpec.model_validate_json(v) for raw in raws for v in raw.values()]
        return sorted(specs, key=lambda s: (s.model, s.created_s, s.id))

    async def remove(self, model: str, schedule_id: str) -> bool:
        return bool(await awaited(self.redis.hdel(self.keys.schedules(model), schedule_id)))

    async def get(self, model: str, schedule_id: str) -> ScheduleSpec | None:
        raw = await awaited(self.redis.hget(self.keys.schedules(model), schedule_id))
        return None if raw is None else ScheduleSpec.model_validate_json(text(raw))
