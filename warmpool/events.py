"""The events stream: lifecycle changes and scaling decisions with their reasons.

An operator asks "why is this model warm?" by reading it (`slurmless events`), and tests assert
on it. It is capped so it never grows without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from warmpool.keys import Keys
from warmpool.redisio import text

EVENTS_MAXLEN = 100_000


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    at_s: float
    kind: str
    model: str
    instance: str
    detail: dict[str, Any]


class EventLog:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    async def record(self, kind: str, *, now_s: float, model: str = "", instance: str = "", **detail: Any) -> None:
        await self.redis.xadd(
            self.keys.events,
            {
                "at_s": repr(now_s),
                "kind": kind,
                "model": model,
                "instance": instance,
                "detail": orjson.dumps(detail),
            },
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )

    async def recent(self, *, count: int = 100, model: str | None = None, kind: str | None = None) -> list[Event]:
        """Newest last. Filters apply to the `count` newest entries scanned (x10 when filtering)."""
        scan = count * 10 if (model or kind) else count
        rows = await self.redis.xrevrange(self.keys.events, count=scan)
        events: list[Event] = []
        for eid, fields in rows:
            f = {text(k): v for k, v in fields.items()}
            event = Event(
                id=text(eid),
                at_s=float(text(f.get("at_s", b"0"))),
                kind=text(f.get("kind")),
                model=text(f.get("model")),
                instance=text(f.get("instance")),
                detail=orjson.loads(f.get("detail", b"{}")),
            )
            if (model is None or event.model == model) and (kind is None or event.kind == kind):
                events.append(event)
            if len(events) >= count:
                break
        return list(reversed(events))
