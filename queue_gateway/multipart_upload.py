"""A multipart/form-data body read as it arrives: small fields in memory, the file part to a sink with a cap.

Uploads (`POST /v1/files`, `/v1/audio/transcriptions`) are read here rather than by a request-wide body
limit: the file part goes to disk (or a buffer) piece by piece and the upload stops with a 413 as soon
as it passes its own cap, so a large file never sits in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from queue_gateway.errors import BadRequest, GatewayError

MAX_FIELD_BYTES = 64 * 1024
"""A non-file form field larger than this is refused."""
MAX_FIELDS = 64


class TooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "file_too_large"


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_field: str | None = None
    file_content_type: str = "application/octet-stream"
    file_bytes: int = 0


@dataclass
class _Part:
    name: str = ""
    is_file: bool = False
    header: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    buf: bytearray = field(default_factory=bytearray)


def boundary_of(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise BadRequest("The request must be multipart/form-data.", code="invalid_content_type")
    return options[b"boundary"]


async def read_form(
    chunks: AsyncIterator[bytes],
    content_type: str,
    *,
    file_field: str,
    write: Callable[[bytes], None],
    max_file_bytes: int,
) -> Form:
    """Parse the body; the part named `file_field` goes to `write` (at most `max_file_bytes`), fields are returned."""
    form = Form()
    part = _Part()
    error: list[GatewayError] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        name = part.header.lower()
        part.headers[name] = part.headers.get(name, b"") + data[start:end]

    def on_header_end() -> None:
        part.header = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        part.is_file = part.name == file_field
        if part.is_file:
            form.file_field = part.name
            raw = options.get(b"filename")
            form.filename = raw.decode("utf-8", "replace") if raw is not None else None
            form.file_content_type = part.headers.get(b"content-type", b"application/octet-stream").decode("latin-1")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if error:
            return
        piece = data[start:end]
        if part.is_file:
            form.file_bytes += len(piece)
            if form.file_bytes > max_file_bytes:
                error.append(TooLarge(f"The file is larger than the limit of {max_file_bytes} bytes.", param="file"))
                return
            write(piece)
            return
        part.buf.extend(piece)
        if len(part.buf) > MAX_FIELD_BYTES:
            error.append(BadRequest(f"The form field `{part.name}` is too large.", param=part.name))

    def on_part_end() -> None:
        nonlocal part
        if not part.is_file and part.name and not error:
            if len(form.fields) >= MAX_FIELDS:
                error.append(BadRequest("Too many form fields."))
            else:
                form.fields[part.name] = part.buf.decode("utf-8", "replace")
        part = _Part()

    parser = MultipartParser(
        boundary_of(content_type),
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in chunks:
            parser.write(chunk)
            if error:
                raise error[0]
        parser.finalize()
    except GatewayError:
        raise
    except Exception as exc:  # python-multipart raises its own errors for malformed bodies
        raise BadRequest(f"We could not parse the multipart body: {exc}") from None
    if error:
        raise error[0]
    return form
