"""The status page's routes: login, logout, the page, and the fragment it polls.

Who may look: the bootstrap admin token, and API keys with `admin` or `operator`. The key is
typed into a form once (POST, never a URL); the browser then holds only a random session id in
an HttpOnly, SameSite=Strict cookie scoped to this mount (`warmpool.ui_sessions`). Forms that
change something (logout) carry the session's CSRF token, and every POST must come from this
origin. Pages are served with a strict Content-Security-Policy: the one inline script and style
carry a per-response nonce, and nothing is fetched from anywhere else.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from jinja2 import Environment, FileSystemLoader, select_autoescape
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from queue_gateway.settings import GatewayConfig
from queue_gateway.ui.view import RANGES, duration, page_context
from warmpool.apikeys import ApiKeyStore, hash_key
from warmpool.keys import Keys
from warmpool.overview import StatusBoard
from warmpool.timeline import Timeline
from warmpool.ui_sessions import UiSession, UiSessions

COOKIE = "slurmless_ui"
SESSION_TTL_S = 8 * 3600.0
MAX_FORM_BYTES = 4096
POLL_MS = 2000
Clock = Callable[[], float]

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["duration"] = duration


@dataclass(frozen=True, slots=True)
class UiDeps:
    sessions: UiSessions
    api_keys: ApiKeyStore
    board: StatusBoard
    timeline: Timeline
    admin_token: str | None
    clock: Clock


def _headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def _render(name: str, status: int = 200, /, **context: object) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    body = _templates.get_template(name).render(nonce=nonce, **context)
    return HTMLResponse(body, status_code=status, headers=_headers(nonce))


def _same_origin(request: Request) -> bool:
    """A POST from a page of this origin. Browsers say where a request comes from in `Sec-Fetch-Site`
    (or, older ones, `Origin`); a client that sends neither is no browser, so no cross-site form."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", "") and parts.scheme in ("http", "https")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


async def _form(request: Request) -> dict[str, str] | None:
    """The page's small urlencoded forms (the standard library parses them); None when too large or not one."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit() or int(length) > MAX_FORM_BYTES:
        return None
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        return None
    try:
        return dict(parse_qsl(raw.decode(), max_num_fields=8))
    except (UnicodeDecodeError, ValueError):
        return None


class UiApp:
    def __init__(self, deps: UiDeps) -> None:
        self.d = deps

    # --- who is looking ---------------------------------------------------------------------

    async def _who(self, key: str) -> tuple[str, str] | str:
        """(label, key hash) for a key that may see the page, or why not."""
        key = key.strip()
        if not key or len(key) > 512:
            return "Enter an admin or operator key."
        token = self.d.admin_token
        if token and hmac.compare_digest(key.encode(), token.encode()):
            return "admin-token", hash_key(key)
        record = await self.d.api_keys.verify(key, now_s=self.d.clock())
        if record is None:
            return "Unknown or revoked key."
        if not (record.admin or record.operator):
            return "This key may not see the status page: it needs the admin or operator role."
        return f"key:{record.key_id}", hash_key(key)

    async def _session(self, request: Request) -> tuple[str, UiSession] | None:
        """The request's live session; ended when the key behind it lost its right to look."""
        sid = request.cookies.get(COOKIE, "")
        session = await self.d.sessions.get(sid)
        if session is None:
            return None
        token = self.d.admin_token
        if session.label == "admin-token":
            still = bool(token) and hmac.compare_digest(session.key_sha256, hash_key(token or ""))
        else:
            record = await self.d.api_keys.by_digest(session.key_sha256, now_s=self.d.clock())
            still = record is not None and (record.admin or record.operator)
        if not still:
            await self.d.sessions.end(sid)
            return None
        return sid, session

    # --- routes -----------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if await self._session(request) is not None:
            return RedirectResponse(f"{_base(request)}/", status_code=303)
        return _render("login.html.j2", base=_base(request), error=None)

    async def login(self, request: Request) -> Response:
        if not _same_origin(request):
            return _render("login.html.j2", 403, base=_base(request), error="Cross-site login refused.")
        form = await _form(request)
        if form is None:
            return _render("login.html.j2", 400, base=_base(request), error="That was not the login form.")
        who = await self._who(form.get("key", ""))
        if isinstance(who, str):
            return _render("login.html.j2", 401, base=_base(request), error=who)
        label, digest = who
        sid, _ = await self.d.sessions.create(label=label, key_sha256=digest, now_s=self.d.clock(), ttl_s=SESSION_TTL_S)
        response = RedirectResponse(f"{_base(request)}/", status_code=303)
        response.set_cookie(
            COOKIE,
            sid,
            max_age=int(SESSION_TTL_S),
            path=_base(request) or "/",
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )
        return response

    async def logout(self, request: Request) -> Response:
        found = await self._session(request)
        form = await _form(request)
        if found is None:
            return RedirectResponse(f"{_base(request)}/login", status_code=303)
        sid, session = found
        token = (form or {}).get("csrf", "")
        if not _same_origin(request) or not hmac.compare_digest(token.encode(), session.csrf.encode()):
            return Response("Logout refused: the form did not come from this page.", status_code=403)
        await self.d.sessions.end(sid)
        response = RedirectResponse(f"{_base(request)}/login", status_code=303)
        response.delete_cookie(COOKIE, path=_base(request) or "/", httponly=True, samesite="strict")
        return response

    async def page(self, request: Request) -> Response:
        found = await self._session(request)
        if found is None:
            return RedirectResponse(f"{_base(request)}/login", status_code=303)
        _, session = found
        context = await self._context(request)
        return _render("page.html.j2", base=_base(request), session=session, poll_ms=POLL_MS, fragment=True, **context)

    async def state(self, request: Request) -> Response:
        """The live part of the page (polled): HTML, so the browser needs no templating of its own."""
        if await self._session(request) is None:
            return Response("session ended", status_code=401, headers={"Cache-Control": "no-store"})
        context = await self._context(request)
        return _render("live.html.j2", base=_base(request), **context)

    async def _context(self, request: Request) -> dict[str, object]:
        span = request.query_params.get("range", "6h")
        if span not in RANGES:
            span = "6h"
        now_s = self.d.clock()
        return await page_context(self.d.board, self.d.timeline, now_s=now_s, span=span)


def _guard(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except (RedisError, OSError):
            return Response("Redis is unavailable; retrying.", status_code=503, headers={"Retry-After": "2"})

    return endpoint


def build_ui_app(
    redis: aioredis.Redis, keys: Keys, settings: GatewayConfig | None, *, clock: Clock = time.time
) -> Starlette:
    """The status page as an app to mount (the gateway mounts it at `/ui`); `settings` gives the admin token."""
    deps = UiDeps(
        sessions=UiSessions(redis, keys),
        api_keys=ApiKeyStore(redis, keys),
        board=StatusBoard(redis, keys),
        timeline=Timeline(redis, keys),
        admin_token=settings.admin_token if settings is not None else None,
        clock=clock,
    )
    ui = UiApp(deps)
    return Starlette(
        routes=[
            Route("/", _guard(ui.page), methods=["GET"]),
            Route("/state", _guard(ui.state), methods=["GET"]),
            Route("/login", _guard(ui.login_form), methods=["GET"]),
            Route("/login", _guard(ui.login), methods=["POST"]),
            Route("/logout", _guard(ui.logout), methods=["POST"]),
        ]
    )
