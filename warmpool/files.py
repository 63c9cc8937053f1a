"""File records of the Files API: who owns a file and what it is; the bytes live on disk (gateway side).

`{p}file:{fid}` holds one record (JSON) and expires with the file; `{p}files:{tenant}` lists a
tenant's files newest last. A record outliving its TTL is gone from both on the next listing.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

from warmpool.keys import Keys
from warmpool.redisio import awaited, text


class FileRecord(BaseModel):
    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int
    lines: int = 0

    def openai(self) -> dict[str, Any]:
        """The record as OpenAI's `file` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


# ARGV: prefix, fid, tenant, record JSON, created_at, ttl_s
_PUT = """
local key = ARGV[1] .. 'file:' .. ARGV[2]
redis.call('SET', key, ARGV[4], 'EX', math.max(1, math.ceil(tonumber(ARGV[6]))))
redis.call('ZADD', ARGV[1] .. 'files:' .. ARGV[3], ARGV[5], ARGV[2])
return 1
"""

# ARGV: prefix, fid, tenant -> 1 when deleted
_DELETE = """
local key = ARGV[1] .. 'file:' .. ARGV[2]
redis.call('ZREM', ARGV[1] .. 'files:' .. ARGV[3], ARGV[2])
return redis.call('DEL', key)
"""


class FileStore:
    """The atomic steps on file records."""

    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self._put = redis.register_script(_PUT)
        self._delete = redis.register_script(_DELETE)

    async def put(self, record: FileRecord, *, ttl_s: float) -> None:
        await self._put(
            args=[self.keys.prefix, record.id, record.tenant, record.model_dump_json(), record.created_at, repr(ttl_s)]
        )

    async def get(self, fid: str) -> FileRecord | None:
        raw = await self.redis.get(self.keys.file(fid))
        return None if raw is None else FileRecord.model_validate_json(raw)

    async def delete(self, record: FileRecord) -> bool:
        return bool(await self._delete(args=[self.keys.prefix, record.id, record.tenant]))

    async def listing(self, tenant: str) -> list[FileRecord]:
        """A tenant's live files, oldest first; ids whose record expired are dropped from the index."""
        fids = [text(f) for f in await self.redis.zrange(self.keys.tenant_files(tenant), 0, -1)]
        if not fids:
            return []
        raws = await self.redis.mget([self.keys.file(f) for f in fids])
        out: list[FileRecord] = []
        gone: list[str] = []
        for fid, raw in zip(fids, raws, strict=True):
            if raw is None:
                gone.append(fid)
            else:
                out.append(FileRecord.model_validate_json(raw))
        if gone:
            await awaited(self.redis.zrem(self.keys.tenant_files(tenant), *gone))
        return out

    async def exists(self, fids: list[str]) -> list[bool]:
        if not fids:
            return []
        return [bool(n) for n in await self.redis.mget([self.keys.file(f) for f in fids])]
