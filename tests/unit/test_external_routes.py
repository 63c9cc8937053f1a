"""External routes: the URL and key-name rules, and what the gateway derives from a spec."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from queue_gateway.catalog import route_target
from queue_gateway.errors import BadRequest
from queue_gateway.external import ExternalKeys, external_url, scrub
from warmpool.external import External, ExternalUrlError, check_external, check_url
from warmpool.specs import ModelSpec, Policy


@pytest.mark.parametrize(
    ("url", "loopback_ok", "allowed"),
    [
        ("https://api.example.org/v1", False, True),
        ("https://api.example.org:8443/v1", False, True),
        ("http://api.example.org/v1", True, False),
        ("http://127.0.0.1:9000/v1", False, False),
        ("http://127.0.0.1:9000/v1", True, True),
        ("http://[::1]:9000/v1", True, True),
        ("http://localhost/v1", True, True),
        ("http://10.0.0.1/v1", True, False),
        ("https://user:pw@api.example.org/v1", False, False),
        ("https://api.example.org/v1?key=x", False, False),
        ("https://api.example.org/v1#x", False, False),
        ("https:///v1", False, False),
        ("file:///etc/passwd", True, False),
        ("https://api.example.org/v 1", False, False),
        ("https://api.example.org:99999/v1", False, False),
    ],
)
def test_external_urls(url: str, loopback_ok: bool, allowed: bool) -> None:
    if allowed:
        check_url(url, allow_http_loopback=loopback_ok)
    else:
        with pytest.raises(ExternalUrlError):
            check_url(url, allow_http_loopback=loopback_ok)


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "", "x" * 65, "a b"])
def test_key_names_are_plain_file_names(name: str) -> None:
    with pytest.raises(ValidationError):
        External(url="https://api.example.org/v1", key_name=name)


def test_key_file_must_exist_where_the_gateway_reads_keys(tmp_path: Path) -> None:
    ext = External(url="https://api.example.org/v1/", key_name="prov")
    assert ext.url == "https://api.example.org/v1"
    with pytest.raises(ValueError, match="keys_dir"):
        check_external(ext, keys_dir=None, allow_http_loopback=False)
    with pytest.raises(ValueError, match="no key file"):
        check_external(ext, keys_dir=tmp_path, allow_http_loopback=False)
    (tmp_path / "prov").write_text("sk-abc\n")
    notes = check_external(ext, keys_dir=tmp_path, allow_http_loopback=False)
    assert "sk-abc" not in " ".join(notes)
    assert ExternalKeys(tmp_path).get("prov") == "sk-abc"


def test_external_specs_have_no_source_or_instances() -> None:
    ext = External(url="https://api.example.org/v1", model="gpt-x")
    spec = ModelSpec(name="ext", served_name="ours", external=ext)
    target = route_target(spec)
    assert (target.instance_model, target.upstream_name) == ("ext", "gpt-x")
    for bad in (
        {"source": "/models/x"},
        {"engine_args": {"--max-model-len": 10}},
        {"policy": Policy(min_replicas=1, max_replicas=1)},
    ):
        with pytest.raises(ValidationError):
            ModelSpec(name="ext", external=ext, **bad)
    with pytest.raises(ValidationError, match="source is required"):
        ModelSpec(name="local")


def test_paths_and_scrubbing() -> None:
    ext = External(url="https://api.example.org/v1")
    assert external_url(ext, "/v1/chat/completions") == "https://api.example.org/v1/chat/completions"
    with pytest.raises(BadRequest):
        external_url(ext, "/tokenize")
    assert scrub(b'{"error": "bad key sk-123"}', "sk-123") == b'{"error": "bad key [redacted]"}'
    assert scrub(b"x", None) == b"x"
