"""Forwarding a request for an external model to its OpenAI-compatible endpoint.

No queue and no slots: the endpoint is not ours to schedule. The key's per-key limits were taken
before (like any request), and visibility was checked when the model was resolved. The site's API
key is read from its file (`gateway.external.keys_dir`), sent in the Authorization header and
nowhere else: it is not logged, and an endpoint's error that echoes it is scrubbed before the
client sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from queue_gateway.errors import (
    BadRequest,
    EngineRejected,
    GatewayError,
    UpstreamFailed,
    UpstreamTimeout,
)
from queue_gateway.metrics import GatewayMetrics
from queue_gateway.settings import ExternalSettings
from queue_gateway.sinks import Sink
from warmpool.external import External, key_path

log = logging.getLogger(__name__)

KEY_CACHE_S = 5.0
"""A key file is read again after this long: a rotated key is used within it."""
MAX_ERROR_BYTES = 65_536
FORWARDED_HEADERS = (b"content-type",)
"""The endpoint's response headers a client sees; the rest (its cookies, its own ids) stay behind."""


class ExternalKeys:
    """Keys read from their files, each trusted for `KEY_CACHE_S`."""

    def __init__(self, keys_dir: Path | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.keys_dir = keys_dir
        self.clock = clock
        self._cache: dict[str, tuple[float, str]] = {}

    def get(self, key_name: str) -> str:
        now = self.clock()
        hit = self._cache.get(key_name)
        if hit is not None and hit[0] > now:
            return hit[1]
        if self.keys_dir is None:
            raise UpstreamFailed("This external model's key is not configured on this gateway.", code="external_key")
        try:
            value = key_path(self.keys_dir, key_name).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError, ValueError):
            log.warning("external key file %r is not readable", key_name)
            raise UpstreamFailed(
                "This external model's key is not readable on this gateway.", code="external_key"
            ) from None
        if not value or any(ord(c) < 33 for c in value):
            raise UpstreamFailed("This external model's key file is empty or malformed.", code="external_key")
        self._cache[key_name] = (now + KEY_CACHE_S, value)
        return value


def scrub(raw: bytes, secret: str | None) -> bytes:
    """`raw` without `secret` (an endpoint's error may quote the key it was given)."""
    if not secret:
        return raw
    return raw.replace(secret.encode(), b"[redacted]")


def external_url(external: External, path: str) -> str:
    """The endpoint's URL for one of our `/v1/...` routes (its base URL ends in its own `/v1`)."""
    if not path.startswith("/v1/"):
        raise BadRequest(f"External models serve OpenAI's /v1 routes only, not {path}.", code="unsupported_route")
    return external.url + path.removeprefix("/v1")


class ExternalRoutes:
    """One gateway process's connections to external endpoints."""

    def __init__(self, settings: ExternalSettings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.keys = ExternalKeys(settings.keys_dir)
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=settings.max_connections),
            follow_redirects=False,
            trust_env=False,
        )

    async def run(self, external: External, path: str, body: bytes, content_type: bytes, sink: Sink, model: str,
                  extra_headers: list[tuple[bytes, bytes]], arrived_perf: float) -> bool:  # fmt: skip
        """Forward one request; its answer goes to `sink`. Returns whether a body byte was sent.

        Raises `GatewayError` for refusals before the answer started.
        """
        url = external_url(external, path)
        secret = self.keys.get(external.key_name) if external.key_name is not None else None
        headers = {"content-type": content_type.decode("latin-1"), "accept-encoding": "identity"}
        if secret is not None:
            headers["authorization"] = f"Bearer {secret}"
        timeout = httpx.Timeout(external.timeout_s, connect=self.settings.connect_timeout_s)
        request = self.client.build_request("POST", url, content=body, headers=headers, timeout=timeout)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException:
            self.metrics.upstream_errors.labels(model, "timeout").inc()
            raise UpstreamTimeout(f"The external endpoint {external.host} did not answer in time.") from None
        except httpx.HTTPError as exc:
            self.metrics.upstream_errors.labels(model, "connect").inc()
            log.warning("external endpoint %s unreachable: %s", external.host, type(exc).__name__)
            raise UpstreamFailed(f"The external endpoint {external.host} is unreachable.") from None
        sent = False
        in_flight = self.metrics.in_flight.labels(model)
        in_flight.inc()
        try:
            if response.status_code >= 400:
                raw = b""
                try:
                    async for chunk in response.aiter_raw():
                        raw += chunk
                        if len(raw) > MAX_ERROR_BYTES:
                            break
                except httpx.HTTPError:
                    pass
                self.metrics.upstream_errors.labels(model, "status").inc()
                raise _refusal(response.status_code, scrub(raw, secret), external.host)
            kept = [(k, v) for k, v in response.headers.raw if k.lower() in FORWARDED_HEADERS]
            await sink.start(response.status_code, kept + extra_headers)
            try:
                async for chunk in response.aiter_raw():
                    if not chunk:
                        continue
                    if not sent:
                        sent = True
                        self.metrics.ttfb.labels(model).observe(time.perf_counter() - arrived_perf)
                    await sink.write(chunk)
            except httpx.HTTPError as exc:
                self.metrics.upstream_errors.labels(model, "stream").inc()
                log.warning("external endpoint %s broke off: %s", external.host, type(exc).__name__)
                raise UpstreamFailed(f"The external endpoint {external.host}'s response broke off.") from None
            await sink.end()
            return sent
        finally:
            in_flight.dec()
            await response.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


def _refusal(status: int, raw: bytes, host: str) -> GatewayError:
    """What the client sees of an endpoint's error: its 4xx as it said it (but for its verdict on the
    site's key, which is the site's problem, not the client's), a 502 for the rest."""
    if status in (401, 403):
        return UpstreamFailed(f"The external endpoint {host} refused this site's key (status {status}).",
                              code="external_key")  # fmt: skip
    if status >= 500:
        detail = EngineRejected(status, raw).message
        return UpstreamFailed(f"The external endpoint {host} failed with status {status}: {detail}")
    return EngineRejected(status, raw)
