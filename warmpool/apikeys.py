"""API keys: shown once, stored only as SHA-256 hashes, mapped to tenants.

A key looks like `sk-sl-<key_id>-<secret>`: the key id is public (it names the key in listings and
revocations) and 128 random bits, reserved with a collision check before the key is stored; the
secret is 32 random bytes. A key may carry an expiry (`expires_s`), checked on every verification.
Keys are high-entropy, so a plain SHA-256 is the right hash (no slow KDF needed, and verification
stays one Redis lookup).
"""

from __future__ import annotations

import hashlib
import re
import secrets

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from warmpool.keys import Keys
from warmpool.redisio import awaited, text

KEY_PREFIX = "sk-sl-"
TENANT_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class ApiKeyRecord(BaseModel):
    key_id: str
    tenant: str
    name: str = ""
    admin: bool = False
    """Admin keys reach the admin API; user keys only the OpenAI surface."""
    can_register: bool = False
    """Self-service: may register models private to its tenant."""
    operator: bool = False
    """May look at the status page (`/ui/`), which shows every model; nothing else beyond a user key."""
    rpm_limit: int | None = Field(None, ge=1)
    concurrency_limit: int | None = Field(None, ge=1)
    created_s: float = 0.0
    expires_s: float | None = None
    """When the key stops working (epoch s); None: never."""
    revoked: bool = False


class KeyIdCollision(RuntimeError):
    """No free key id was found (128-bit ids: only a broken random source gets here)."""


KEY_ID_ATTEMPTS = 5


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class ApiKeyStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    @property
    def _ids(self) -> str:
        return self.keys.api_keys + ":ids"

    async def create(
        self,
        *,
        tenant: str,
        now_s: float,
        name: str = "",
        admin: bool = False,
        can_register: bool = False,
        operator: bool = False,
        rpm_limit: int | None = None,
        concurrency_limit: int | None = None,
        expires_s: float | None = None,
    ) -> tuple[str, ApiKeyRecord]:
        """Make a key; the plaintext is returned once and never stored."""
        if not TENANT_RE.match(tenant):
            raise ValueError(f"tenant {tenant!r} must be a DNS label (a-z, 0-9, '-')")
        for _ in range(KEY_ID_ATTEMPTS):
            key_id = self.new_key_id()
            # The id is reserved first (HSETNX), so two keys can never share one.
            if await awaited(self.redis.hsetnx(self._ids, key_id, "")):
                break
        else:
            raise KeyIdCollision(f"no free key id after {KEY_ID_ATTEMPTS} attempts")
        plaintext = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        record = ApiKeyRecord(
            key_id=key_id,
            tenant=tenant,
            name=name,
            admin=admin,
            can_register=can_register,
            operator=operator,
            rpm_limit=rpm_limit,
            concurrency_limit=concurrency_limit,
            created_s=now_s,
            expires_s=expires_s,
        )
        digest = hash_key(plaintext)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.api_keys, digest, record.model_dump_json())
            pipe.hset(self._ids, key_id, digest)
            await pipe.execute()
        return plaintext, record

    @staticmethod
    def new_key_id() -> str:
        return secrets.token_hex(16)

    async def verify(self, plaintext: str, *, now_s: float) -> ApiKeyRecord | None:
        """The key's record, or None when unknown, revoked or expired at `now_s`."""
        if not plaintext.startswith(KEY_PREFIX):
            return None
        return await self.by_digest(hash_key(plaintext), now_s=now_s)

    async def by_digest(self, digest: str, *, now_s: float) -> ApiKeyRecord | None:
        """The record of the key whose SHA-256 is `digest`, or None when unknown, revoked or expired at `now_s`."""
        raw = await awaited(self.redis.hget(self.keys.api_keys, digest))
        if raw is None:
            return None
        record = ApiKeyRecord.model_validate_json(raw)
        if record.revoked or (record.expires_s is not None and record.expires_s <= now_s):
            return None
        return record

    async def revoke(self, key_id: str) -> bool:
        digest = await awaited(self.redis.hget(self._ids, key_id))
        if digest is None:
            return False
        raw = await awaited(self.redis.hget(self.keys.api_keys, text(digest)))
        if raw is None:
            return False
        record = ApiKeyRecord.model_validate_json(raw)
        record.revoked = True
        await awaited(self.redis.hset(self.keys.api_keys, text(digest), record.model_dump_json()))
        return True

    async def list(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        raw = await awaited(self.redis.hgetall(self.keys.api_keys))
        records = [ApiKeyRecord.model_validate_json(v) for v in raw.values()]
        return sorted(
            (r for r in records if tenant is None or r.tenant == tenant), key=lambda r: (r.tenant, r.created_s)
        )
