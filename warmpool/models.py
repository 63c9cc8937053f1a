"""The registry of models in Redis: specs by name, and the names clients may use for them."""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

from warmpool.errors import ModelExists, QuotaExceeded
from warmpool.keys import Keys
from warmpool.redisio import awaited, text
from warmpool.specs import ModelSpec


class ModelStore:
    """Read and write model specs. Writes are atomic (MULTI) so nothing is half-written."""

    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None, *, local_only: bool = False) -> None:
        """`local_only`: behave as if external models (forwarded elsewhere, no instances) were not
        registered; the launcher's view, so that it never plans, submits or reports for them."""
        self.redis = redis
        self.keys = keys or Keys()
        self.local_only = local_only
        self._parsed: dict[bytes, ModelSpec] = {}
        self._all: tuple[bytes | None, list[ModelSpec]] | None = None
        self._local_of: tuple[list[ModelSpec], list[ModelSpec]] | None = None
        self.generation = 0
        """Counts the times `all` found the registry changed and read it anew: what is derived from the
        specs (by name, the base models) holds while it stands."""

    async def get(self, name: str) -> ModelSpec | None:
        raw = await awaited(self.redis.hget(self.keys.models, name))
        spec = None if raw is None else ModelSpec.model_validate_json(raw)
        return None if spec is None or (self.local_only and spec.external is not None) else spec

    async def resolve(self, client_name: str) -> ModelSpec | None:
        """The spec a client means by `client_name`: a registered name first, then a served name or alias.

        `put` keeps names and aliases disjoint; the order decides only for data written before it did,
        where an alias (perhaps a tenant's private one) must not shadow a model of that name.
        """
        spec = await self.get(client_name)
        if spec is not None:
            return spec
        name = await awaited(self.redis.hget(self.keys.aliases, client_name))
        return None if name is None else await self.get(text(name))

    async def all(self) -> list[ModelSpec]:
        """Every registered spec, by name. Specs are shared between calls while unchanged: do not mutate them.

        The launcher reads every spec on every tick: 1,000 specs are ~0.5 MB to fetch and decode, more
        than the rest of its scaling step. Every change of the registry sets `Keys.models_version` to a
        new random value in the same transaction, so an unchanged version means unchanged specs (a
        counter would repeat after a flush or a restore). The version is read first: a change in
        between costs one more read, never a stale one.
        """
        version: bytes | None = await awaited(self.redis.get(self.keys.models_version))
        if self._all is not None and version is not None and self._all[0] == version:
            return self._local(self._all[1])
        raw: dict[bytes, bytes] = await awaited(self.redis.hgetall(self.keys.models))
        parsed: dict[bytes, ModelSpec] = {}
        for value in raw.values():
            spec = self._parsed.get(value)
            parsed[value] = spec if spec is not None else ModelSpec.model_validate_json(value)
        self._parsed = parsed
        specs = sorted(parsed.values(), key=lambda s: s.name)
        self._all = (version, specs)
        self.generation += 1
        return self._local(specs)

    def _local(self, specs: list[ModelSpec]) -> list[ModelSpec]:
        if not self.local_only:
            return list(specs)
        if self._local_of is None or self._local_of[0] is not specs:
            # Filtered once per registry change, not on every call (the launcher's tick calls it).
            self._local_of = (specs, [s for s in specs if s.external is None])
        return list(self._local_of[1])

    async def put(self, spec: ModelSpec, *, replace: bool = False, owner_quota: int | None = None) -> None:
        """Register (or with `replace`, update) a model and its client names in one transaction.

        With `owner_quota`, a model that is new to `spec.owner_tenant` is refused (QuotaExceeded) when
        the tenant owns that many already; the count is taken inside the transaction, so concurrent
        registrations cannot overshoot it.
        """
        names = _client_names(spec)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.keys.models, self.keys.aliases)
                    existing = await awaited(pipe.hget(self.keys.models, spec.name))
                    if existing is not None and not replace:
                        raise ModelExists(f"model {spec.name!r} is registered already: use update")
                    if existing is None and replace:
                        raise KeyError(f"model {spec.name!r} is not registered")
                    if owner_quota is not None and spec.owner_tenant is not None:
                        old_owner = None if existing is None else ModelSpec.model_validate_json(existing).owner_tenant
                        if old_owner != spec.owner_tenant:
                            owned = await self._owned(pipe, spec.owner_tenant)
                            if owned >= owner_quota:
                                raise QuotaExceeded(
                                    f"quota exceeded: tenant {spec.owner_tenant!r} owns {owned} model(s),"
                                    f" its quota is {owner_quota}"
                                )
                    squatter = await awaited(pipe.hget(self.keys.aliases, spec.name))
                    if squatter is not None and text(squatter) != spec.name:
                        raise ModelExists(f"name {spec.name!r} is an alias of model {text(squatter)!r}")
                    owners = await awaited(pipe.hmget(self.keys.aliases, names)) if names else []
                    for alias, owner in zip(names, owners, strict=True):
                        if owner is not None and text(owner) != spec.name:
                            raise ModelExists(f"name {alias!r} is used by model {text(owner)!r}")
                    for alias in names:
                        if await awaited(pipe.hexists(self.keys.models, alias)):
                            raise ModelExists(f"name {alias!r} is a registered model")
                    old = [] if existing is None else _client_names(ModelSpec.model_validate_json(existing))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(self.keys.models, spec.name, spec.model_dump_json())
                    pipe.set(self.keys.models_version, secrets.token_hex(8))
                    stale = [n for n in old if n not in names]
                    if stale:
                        pipe.hdel(self.keys.aliases, *stale)
                    if names:
                        pipe.hset(self.keys.aliases, mapping=dict.fromkeys(names, spec.name))
                    await pipe.execute()
                    return
                except aioredis.WatchError:
                    continue

    async def _owned(self, pipe: aioredis.client.Pipeline, tenant: str) -> int:
        raw = await awaited(pipe.hvals(self.keys.models))
        return sum(1 for v in raw if ModelSpec.model_validate_json(v).owner_tenant == tenant)

    async def owned_by(self, tenant: str) -> list[ModelSpec]:
        """Models whose owner is `tenant`."""
        return [s for s in await self.all() if s.owner_tenant == tenant]

    async def remove(self, name: str) -> bool:
        spec = await self.get(name)
        if spec is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.models, name)
            pipe.set(self.keys.models_version, secrets.token_hex(8))
            names = _client_names(spec)
            if names:
                pipe.hdel(self.keys.aliases, *names)
            # Its history goes too: a model registered again under this name starts afresh, and
            # removed models leave nothing behind. Instances and queues are the launcher's and gateways'.
            pipe.delete(
                self.keys.schedules(name),
                self.keys.warm(name),
                self.keys.timeline(name),
                self.keys.cold_start(name),
                self.keys.demand(name),
                self.keys.idle_hist(name),
                self.keys.gaps(name),
                self.keys.model_stats(name),
                self.keys.phase(name),
            )
            pipe.hdel(self.keys.desired, name)
            await pipe.execute()
        return True


def _client_names(spec: ModelSpec) -> list[str]:
    names = {spec.client_name, *spec.aliases}
    names.discard(spec.name)
    return sorted(names)
