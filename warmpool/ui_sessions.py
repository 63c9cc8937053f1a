"""Status-page sessions: the browser holds a random session id, Redis what it stands for.

The key an operator logs in with never reaches the browser again: the session (`Keys.ui_session`,
under the SHA-256 of the id, so a read of Redis does not yield usable cookies) names the key by
its hash, and every request re-checks that key, so revoking it ends its sessions at once. Sessions
expire on their own (`ttl_s`); any gateway process can serve them.
"""

from __future__ import annotations

import hashlib
import secrets

import redis.asyncio as aioredis
from pydantic import BaseModel, ValidationError

from warmpool.keys import Keys
from warmpool.redisio import awaited


class UiSession(BaseModel):
    label: str
    """Who logged in, as shown on the page: `admin-token` or `key:<key id>`."""
    key_sha256: str
    """The SHA-256 of the key or token used to log in."""
    csrf: str
    """Sent back with every form of the page (logout): a cross-site form cannot know it."""
    created_s: float


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class UiSessions:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    async def create(self, *, label: str, key_sha256: str, now_s: float, ttl_s: float) -> tuple[str, UiSession]:
        """A new session; the returned id goes into the cookie and nowhere else."""
        sid = secrets.token_urlsafe(32)
        session = UiSession(label=label, key_sha256=key_sha256, csrf=secrets.token_urlsafe(24), created_s=now_s)
        await awaited(self.redis.set(self.keys.ui_session(_digest(sid)), session.model_dump_json(), ex=int(ttl_s)))
        return sid, session

    async def get(self, sid: str) -> UiSession | None:
        if not sid or len(sid) > 128:
            return None
        raw = await awaited(self.redis.get(self.keys.ui_session(_digest(sid))))
        if raw is None:
            return None
        try:
            return UiSession.model_validate_json(raw)
        except ValidationError:
            return None

    async def end(self, sid: str) -> None:
        if sid and len(sid) <= 128:
            await awaited(self.redis.delete(self.keys.ui_session(_digest(sid))))
