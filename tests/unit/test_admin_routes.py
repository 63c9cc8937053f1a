"""The admin API's route table: served routes and documented operations come from one declaration;
state-package errors are mapped to HTTP at one boundary."""

from __future__ import annotations

import re

import pytest
import redis.asyncio as aioredis
from starlette.routing import Route

from queue_gateway.admin_routes import ROUTES, Role, build_admin_app, openapi_document, refusal
from queue_gateway.errors import GatewayError, from_state_error
from slurmless.settings import Settings
from warmpool import errors as state
from warmpool.errors import Missing, ModelExists, NotPermitted, QuotaExceeded, RegistryError, TenantExists

METHODS = {"get", "post", "put", "patch", "delete"}


def served_operations() -> set[tuple[str, str]]:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # never connected: building the app reads nothing
    app = build_admin_app(client, Settings())
    out: set[tuple[str, str]] = set()
    for route in app.routes:
        assert isinstance(route, Route)
        out |= {(method, route.path) for method in (route.methods or set()) if method != "HEAD"}
    return out


def documented_operations() -> set[tuple[str, str]]:
    doc = openapi_document()
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_every_served_route_is_documented_and_every_documented_route_is_served() -> None:
    served = served_operations()
    assert served == documented_operations()
    assert ("GET", "/v1/models") in served and ("GET", "/v1/sd/engines") in served and len(served) == len(ROUTES)


def test_each_operation_documents_its_role_refusals_and_path_parameters() -> None:
    doc = openapi_document()
    for op in ROUTES:
        item = doc["paths"][op.path][op.method.lower()]
        codes = set(item["responses"])
        assert str(op.ok) in codes
        if op.role is Role.PUBLIC:
            assert item["security"] == [] and not codes & {"401", "403"}
        else:
            assert {"401", "403"} <= codes, op.path
        assert {e.status for e in op.errors} <= {int(c) for c in codes}
        params = [p["name"] for p in item.get("parameters", [])]
        assert params == re.findall(r"{(\w+)}", op.path)
        if op.request is not None:
            ref = item["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]


def test_a_table_of_other_routes_serves_and_documents_only_those() -> None:
    mine = tuple(op for op in ROUTES if op.path.startswith("/v1/tenants"))
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    app = build_admin_app(client, Settings(), routes=mine)
    assert {r.path for r in app.routes if isinstance(r, Route)} == set(openapi_document(routes=mine)["paths"])


@pytest.mark.parametrize(
    ("error", "status", "type_", "code", "param"),
    [
        (
            Missing("model 'x' does not exist", param="name", code="model_not_found"),
            404,
            "invalid_request_error",
            "model_not_found",
            "name",
        ),
        (NotPermitted("only an admin can", param="owner_tenant"), 403, "permission_error", "forbidden", "owner_tenant"),
        (QuotaExceeded("quota exceeded: 3 of 3"), 403, "permission_error", "quota_exceeded", None),
        (ModelExists("model 'x' is registered already"), 409, "conflict_error", "exists", "name"),
        (TenantExists("tenant 't' exists already"), 409, "conflict_error", "exists", "name"),
        (RegistryError("invalid model name", param="name"), 400, "invalid_request_error", "invalid_value", "name"),
    ],
)
def test_state_errors_map_to_statuses_at_the_http_boundary(
    error: RegistryError, status: int, type_: str, code: str, param: str | None
) -> None:
    mapped = from_state_error(error)
    assert (mapped.status, mapped.type, mapped.code, mapped.param) == (status, type_, code, param)
    assert mapped.message == str(error)
    assert refusal(error) is not None and refusal(error).status == status  # type: ignore[union-attr]


def test_state_errors_carry_no_http_status() -> None:
    for name in state.__all__:
        cls = getattr(state, name)
        assert issubclass(cls, RegistryError) and not issubclass(cls, GatewayError)
        assert not hasattr(cls, "status"), name


def test_a_bug_is_not_turned_into_a_refusal() -> None:
    assert refusal(KeyError("x")) is None
    assert refusal(TimeoutError()) is not None
