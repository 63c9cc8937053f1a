"""API key checks with a short in-process cache: no Redis round trip on the warm path.

A revoked key keeps working for at most `ttl_s` (the cache's lifetime). Unknown keys are cached
too (for the same time), so a client hammering with a bad key costs Redis nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from queue_gateway.errors import Unauthorized
from warmpool.apikeys import ApiKeyRecord, ApiKeyStore

MAX_ENTRIES = 100_000
"""Beyond this the cache is cleared (a cheap bound against key-spraying clients)."""


class KeyCache:
    """Verify bearer tokens against `ApiKeyStore`, remembering answers for `ttl_s`."""

    def __init__(self, store: ApiKeyStore, *, ttl_s: float, clock: Callable[[], float]) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        # Keyed by the token's hash so plaintext keys are not kept in memory longer than a request.
        self._entries: dict[str, tuple[float, ApiKeyRecord | None]] = {}

    async def verify(self, token: str) -> ApiKeyRecord | None:
        digest = hashlib.sha256(token.encode()).digest().hex()
        now = self.clock()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await self.store.verify(token, now_s=now)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        until = now + self.ttl_s
        if record is not None and record.expires_s is not None:
            until = min(until, record.expires_s)  # an expiring key is not trusted past its expiry
        self._entries[digest] = (until, record)
        return record

    async def authenticate(self, authorization: bytes | None) -> ApiKeyRecord:
        """The key record for an `Authorization: Bearer ...` header, or `Unauthorized`."""
        if not authorization or not authorization[:7].lower() == b"bearer ":
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        record = await self.verify(authorization[7:].strip().decode("latin-1"))
        if record is None:
            raise Unauthorized("Incorrect API key provided.")
        return record
