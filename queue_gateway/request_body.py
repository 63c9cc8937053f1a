"""An inference request's body as the gateway needs it: its model, whether it streams, and the bytes to forward.

JSON bodies (every route but transcriptions) are checked for their route's required field
(`endpoints.ENDPOINTS`). A multipart body (`/v1/audio/transcriptions`) is parsed in memory up to
`MAX_MULTIPART_BYTES` and forwarded re-encoded, so its `model` field can name the engine's model.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from queue_gateway.endpoints import JSON_TYPE, Endpoint
from queue_gateway.errors import BadRequest
from queue_gateway.multipart_upload import TooLarge, read_form

MAX_MULTIPART_BYTES = 25 * 1024 * 1024
"""Largest audio file of a transcription (OpenAI's limit)."""


@dataclass
class Parsed:
    model: str
    stream: bool
    payload: dict[str, Any]
    """The JSON body, or a multipart body's fields."""
    file: bytes = b""
    filename: str = "audio"
    file_type: str = "application/octet-stream"
    multipart: bool = False

    def body(self, model: str) -> tuple[bytes, bytes]:
        """(body, content type) to send to the engine, naming `model`."""
        if not self.multipart:
            if self.payload["model"] != model:
                self.payload["model"] = model
            return orjson.dumps(self.payload), JSON_TYPE
        boundary = uuid.uuid4().hex.encode()
        parts = []
        for name, value in {**self.payload, "model": model}.items():
            parts.append(
                b'--%s\r\ncontent-disposition: form-data; name="%s"\r\n\r\n%s\r\n'
                % (boundary, _quoted(name), str(value).encode())
            )
        parts.append(
            b'--%s\r\ncontent-disposition: form-data; name="file"; filename="%s"\r\ncontent-type: %s\r\n\r\n'
            % (boundary, _quoted(self.filename), self.file_type.encode("latin-1", "replace"))
        )
        parts.append(self.file + b"\r\n--%s--\r\n" % boundary)
        return b"".join(parts), b"multipart/form-data; boundary=" + boundary


def _quoted(value: str) -> bytes:
    return value.replace("\\", "_").replace('"', "_").replace("\r", "_").replace("\n", "_").encode()


def _stream_flag(value: object, *, allowed: bool) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    return value and allowed


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object; `BadRequest` (OpenAI's wording) otherwise."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object.")
    return payload


def _client_priority(value: object) -> None:
    """Refuse an engine priority other than the default 0.

    Engines run with vLLM's priority scheduling (lower is served first) and batch lines carry a larger
    value (`gateway.batch.line_priority`), so a tenant's own value could jump ahead of other tenants.
    Refused with a 400 rather than dropped, so that a client relying on it learns it has no effect.
    """
    if value is not None and (value != 0 or isinstance(value, bool)):
        raise BadRequest(
            "'priority' is set by the server; leave it out (or 0).", param="priority", code="invalid_value"
        )


def parse_json(body: bytes, endpoint: Endpoint) -> Parsed:
    """The payload, its model and whether it streams; `BadRequest` for anything malformed."""
    payload = json_object(body)
    _client_priority(payload.get("priority"))
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
    required = endpoint.required
    value = payload.get(required)
    if value is None or (required == "messages" and (not isinstance(value, list) or not value)):
        raise BadRequest(
            f"Missing required parameter: '{required}'.", param=required, code="missing_required_parameter"
        )
    return Parsed(model, _stream_flag(payload.get("stream"), allowed=endpoint.streams), payload)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def parse_multipart(body: bytes, content_type: bytes | None, endpoint: Endpoint) -> Parsed:
    """A transcription's form: `model`, `file` and any other fields passed through."""
    if len(body) > MAX_MULTIPART_BYTES:
        raise TooLarge(f"The request is larger than the limit of {MAX_MULTIPART_BYTES} bytes.", param="file")
    pieces: list[bytes] = []
    form = await read_form(
        _once(body),
        (content_type or b"").decode("latin-1"),
        file_field="file",
        write=pieces.append,
        max_file_bytes=MAX_MULTIPART_BYTES,
    )
    if form.file_field is None:
        raise BadRequest("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    fields: dict[str, Any] = dict(form.fields)
    model = fields.pop("model", None)
    if not model:
        raise BadRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
    stream = str(fields.get("stream", "false")).lower() == "true"
    return Parsed(
        model,
        stream and endpoint.streams,
        fields,
        file=b"".join(pieces),
        filename=form.filename or "audio",
        file_type=form.file_content_type,
        multipart=True,
    )


async def parse_request(body: bytes, endpoint: Endpoint, content_type: bytes | None) -> Parsed:
    if endpoint.multipart:
        return await parse_multipart(body, content_type, endpoint)
    return parse_json(body, endpoint)
