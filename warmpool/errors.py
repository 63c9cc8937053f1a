"""The warm pool's refusals, typed by what went wrong; no HTTP in here.

    RegistryError            a request to the registry is invalid (a bad name, path, value)
    ├── Missing              the model, tenant, key or schedule does not exist (or is hidden)
    ├── NotPermitted         the caller may not do this
    │   └── QuotaExceeded    the owning tenant has as many models as its quota allows
    └── AlreadyExists        the name is taken
        ├── ModelExists      a model (or one of its client names) is registered already
        └── TenantExists     a tenant of that name exists already

`code` is a stable machine-readable word and `param` names the field at fault; the HTTP layer
(`queue_gateway.errors.from_state_error`) maps the types to statuses.
"""

from __future__ import annotations


class RegistryError(ValueError):
    """A request to the registry was refused."""

    code = "invalid_value"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code


class Missing(RegistryError):
    code = "not_found"


class NotPermitted(RegistryError):
    code = "forbidden"


class QuotaExceeded(NotPermitted):
    code = "quota_exceeded"


class AlreadyExists(RegistryError):
    code = "conflict"


class ModelExists(AlreadyExists):
    code = "exists"

    def __init__(self, message: str, *, param: str | None = "name", code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)


class TenantExists(AlreadyExists):
    code = "exists"

    def __init__(self, message: str, *, param: str | None = "name", code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)


__all__ = [
    "AlreadyExists",
    "Missing",
    "ModelExists",
    "NotPermitted",
    "QuotaExceeded",
    "RegistryError",
    "TenantExists",
]
