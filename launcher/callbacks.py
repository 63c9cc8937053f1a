"""The jobs' callbacks: `POST /register` and `POST /deregister`, authenticated per instance.

Each job carries its own random token; the launcher keeps only its SHA-256 in the instance record
and compares digests in constant time. `/metrics` serves the launcher's Prometheus registry.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from launcher.controller import Launcher

MAX_BODY_BYTES = 4096
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^[0-9A-Fa-f:.]{2,45}$")
_IID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_REASON = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


class BadCallback(ValueError):
    """A callback whose body or token is malformed."""


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise BadCallback("missing bearer token")
    return token.strip()


async def _body(request: Request) -> dict[str, object]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise BadCallback("body too large")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadCallback("body is not JSON") from exc
    if not isinstance(data, dict):
        raise BadCallback("body must be a JSON object")
    iid = data.get("instance_id")
    if not isinstance(iid, str) or not _IID.match(iid):
        raise BadCallback("bad instance_id")
    return data


def _job_id(data: dict[str, object]) -> int | None:
    raw = data.get("job_id")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    return None


def callback_app(launcher: Launcher, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The Starlette app jobs call back to (and Prometheus scrapes)."""

    async def register(request: Request) -> Response:
        try:
            token = _bearer(request)
            data = await _body(request)
            host, port = data.get("host"), data.get("port")
            if not isinstance(host, str) or not _HOST.match(host):
                raise BadCallback("bad host")
            if not isinstance(port, int) or not 0 < port < 65536:
                raise BadCallback("bad port")
        except BadCallback as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        refusal = await launcher.on_register(
            str(data["instance_id"]), job_id=_job_id(data), host=host, port=port, token=token, now_s=clock()
        )
        if refusal is not None:
            return JSONResponse({"ok": False, "error": refusal.reason}, status_code=refusal.status)
        return JSONResponse({"ok": True})

    async def deregister(request: Request) -> Response:
        try:
            token = _bearer(request)
            data = await _body(request)
            reason = data.get("reason", "unknown")
            if not isinstance(reason, str) or not _REASON.match(reason):
                reason = "unknown"
        except BadCallback as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        ok = await launcher.on_deregister(str(data["instance_id"]), reason=reason, token=token, now_s=clock())
        return JSONResponse({"ok": ok}, status_code=200 if ok else 401)

    async def metrics(request: Request) -> Response:
        return Response(launcher.metrics.render(), media_type="text/plain; version=0.0.4")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/register", register, methods=["POST"]),
            Route("/deregister", deregister, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
