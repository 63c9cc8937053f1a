"""External routes: a model name forwarded to an OpenAI-compatible endpoint outside the cluster.

The spec holds where to send (`url`), which model to ask for there, and the *name* of the key: the
key itself is a file in the gateway's `gateway.external.keys_dir`, read by the gateway when it
forwards. The key is never in Redis, in a spec, in an API answer or in a log line.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Key names are file names in the keys directory: no separators, no leading dot."""
UPSTREAM_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")


class ExternalUrlError(ValueError):
    """An external endpoint URL the gateway will not forward to."""


class External(BaseModel):
    """Where an external model's requests go."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    url: str
    """The endpoint's OpenAI base URL, as clients would pass to `OpenAI(base_url=...)`: `https://api.example.com/v1`."""
    model: str | None = None
    """The model name to ask the endpoint for; defaults to the name clients use here."""
    key_name: str | None = None
    """The file in `gateway.external.keys_dir` holding the endpoint's API key; None sends no key."""
    timeout_s: float = Field(600.0, gt=0, le=3600)
    """Longest silence tolerated from the endpoint."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        check_url_shape(value)
        return value.rstrip("/")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None and (not UPSTREAM_MODEL_RE.match(value) or ".." in value):
            raise ValueError(f"external model {value!r} must match {UPSTREAM_MODEL_RE.pattern}")
        return value

    @field_validator("key_name")
    @classmethod
    def _key_name(cls, value: str | None) -> str | None:
        if value is not None and (not KEY_NAME_RE.match(value) or ".." in value):
            raise ValueError(f"key_name {value!r} must be a plain file name matching {KEY_NAME_RE.pattern}")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def check_url_shape(url: str) -> None:
    """An http(s) URL with a host, no credentials, query or fragment (the deployment's rules come after)."""
    if any(ord(c) < 33 or c == "\x7f" for c in url):
        raise ExternalUrlError("the external URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError as exc:
        raise ExternalUrlError(f"the external URL is not valid: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise ExternalUrlError(f"the external URL must be https://, not {parts.scheme or 'no scheme'}")
    if not parts.hostname:
        raise ExternalUrlError("the external URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ExternalUrlError("the external URL must not carry credentials: name a key file with key_name")
    if parts.query or parts.fragment:
        raise ExternalUrlError("the external URL must not have a query or fragment")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_http_loopback: bool) -> None:
    """https:// anywhere; http:// only to a loopback address, and only where the deployment allows it
    (tests, a local proxy): a key must not cross a network in clear."""
    check_url_shape(url)
    parts = urlsplit(url)
    if parts.scheme == "http":
        if not allow_http_loopback:
            raise ExternalUrlError("the external URL must be https:// (http:// is refused: keys would travel in clear)")
        if not is_loopback(parts.hostname or ""):
            raise ExternalUrlError("http:// is allowed only to a loopback address (127.0.0.1, ::1, localhost)")


def key_path(keys_dir: Path, key_name: str) -> Path:
    """The key file of `key_name`; the name was validated as a plain file name."""
    if not KEY_NAME_RE.match(key_name) or ".." in key_name:
        raise ValueError(f"key_name {key_name!r} is not a plain file name")
    return keys_dir / key_name


def check_external(external: External, *, keys_dir: Path | None, allow_http_loopback: bool) -> list[str]:
    """The deployment's rules for an external route; raises `ExternalUrlError` (or ValueError) with the reason.

    Returns notes for the operator. The key file must exist now, so that a typo shows at registration
    rather than as 401s from the endpoint; its content is not read here.
    """
    check_url(external.url, allow_http_loopback=allow_http_loopback)
    if external.key_name is None:
        return [f"forwarded to {external.host} without an API key"]
    if keys_dir is None:
        raise ValueError("external.key_name needs gateway.external.keys_dir set in the gateway's configuration")
    if not key_path(keys_dir, external.key_name).is_file():
        raise ValueError(f"no key file {external.key_name!r} in gateway.external.keys_dir")
    return [f"forwarded to {external.host} with the key in file {external.key_name!r}"]
