"""Which model a request means, whether its key may use it, and where it is served.

Specs are cached in-process for a short time (`ttl_s`), so the warm path costs no Redis round
trip to resolve a model; a registration or change shows within that time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from queue_gateway.errors import NotFound
from warmpool.apikeys import ApiKeyRecord
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec

MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request for a client model name goes."""

    spec: ModelSpec
    instance_model: str
    """The model whose queue and instances serve it (the base model for a LoRA adapter)."""
    upstream_name: str
    """The `model` field the engine expects (its served name, or the adapter's name)."""


def route_target(spec: ModelSpec) -> Target:
    """A registered model's (instance model, upstream model name): `ModelSpec.instance_model` maps an
    adapter to its base.

    The launcher starts engines with `--served-model-name <client_name>`; a LoRA adapter is
    served by its base model's instances under the adapter's client name.
    """
    if spec.external is not None:
        return Target(spec, spec.name, spec.external.model or spec.client_name)
    return Target(spec, spec.instance_model, spec.client_name)


def visible(spec: ModelSpec, key: ApiKeyRecord) -> bool:
    """Public models, and private ones whose owner or visibility list names the key's tenant."""
    if spec.visibility.public or key.admin:
        return True
    return spec.owner_tenant == key.tenant or key.tenant in spec.visibility.tenants


class Catalog:
    """Cached model resolution."""

    def __init__(self, store: ModelStore, *, ttl_s: float, clock: Callable[[], float]) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, tuple[float, Target | None]] = {}

    async def target(self, client_name: str, key: ApiKeyRecord) -> Target:
        """The target of `client_name` for this key; `NotFound` for unknown and invisible models alike."""
        now = self.clock()
        hit = self._entries.get(client_name)
        if hit is not None and hit[0] > now:
            target = hit[1]
        else:
            spec = await self.store.resolve(client_name)
            target = None if spec is None else route_target(spec)
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[client_name] = (now + self.ttl_s, target)
        if target is None or not visible(target.spec, key):
            raise NotFound(f"The model `{client_name}` does not exist or you do not have access to it.")
        return target

    async def listing(self, key: ApiKeyRecord) -> list[ModelSpec]:
        """Every registered model this key may use (a cold path: always read from Redis)."""
        return [spec for spec in await self.store.all() if visible(spec, key)]
