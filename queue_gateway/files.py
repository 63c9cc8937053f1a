"""`/v1/files`: upload (multipart, streamed to disk with its own cap), list, retrieve, content, delete.

A key sees only its tenant's files (an admin key sees every tenant's by id). Uploads take
`purpose="batch"`; result files of batches carry `purpose="batch_output"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from queue_gateway.batch_api import BatchApi, json_response, page
from queue_gateway.errors import BadRequest, NotFound
from queue_gateway.file_dir import checked, new_id
from queue_gateway.multipart_upload import read_form
from warmpool.apikeys import ApiKeyRecord
from warmpool.files import FileRecord

UPLOAD_PURPOSES = frozenset({"batch"})
MAX_FILENAME = 255


async def find(api: BatchApi, key: ApiKeyRecord, fid: str) -> FileRecord:
    """The file record if this key may see it, else `NotFound` (other tenants' files do not exist for it)."""
    record = await api.files.get(checked(fid, "file"))
    if record is None or (record.tenant != key.tenant and not key.admin):
        raise NotFound(f"No such File object: {fid}", code="file_not_found")
    return record


async def upload(api: BatchApi, key: ApiKeyRecord, request: Request) -> Response:
    settings = api.settings
    fid = new_id("file")
    await asyncio.to_thread(api.dir.ensure)
    tmp = api.dir.upload_tmp(fid)
    out = tmp.open("wb")
    newlines = 0
    last = b"\n"

    def write(piece: bytes) -> None:
        nonlocal newlines, last
        out.write(piece)
        newlines += piece.count(b"\n")
        if piece:
            last = piece[-1:]

    try:
        try:
            form = await read_form(
                request.stream(),
                request.headers.get("content-type", ""),
                file_field="file",
                write=write,
                max_file_bytes=settings.file_max_bytes,
            )
        finally:
            out.close()
        purpose = form.fields.get("purpose")
        if form.file_field is None:
            raise BadRequest("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        if purpose is None:
            raise BadRequest(
                "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
            )
        if purpose not in UPLOAD_PURPOSES:
            raise BadRequest(
                f"'{purpose}' is not a supported purpose here; use one of {sorted(UPLOAD_PURPOSES)}.",
                param="purpose",
                code="invalid_value",
            )
        lines = newlines + (1 if form.file_bytes and last != b"\n" else 0)
        if form.file_bytes == 0:
            raise BadRequest("The file is empty.", param="file", code="empty_file")
        if lines > settings.file_max_lines:
            raise BadRequest(
                f"The file has {lines} lines; a batch input file may have at most {settings.file_max_lines}.",
                param="file",
                code="too_many_lines",
            )
        filename = os.path.basename(form.filename or "upload.jsonl")[:MAX_FILENAME] or "upload.jsonl"
        now = int(api.clock())
        record = FileRecord(
            id=fid,
            tenant=key.tenant,
            filename=filename,
            purpose=purpose,
            bytes=form.file_bytes,
            created_at=now,
            expires_at=now + int(settings.file_ttl_s),
            lines=lines,
        )
        await asyncio.to_thread(os.replace, tmp, api.dir.file(fid))
        await api.files.put(record, ttl_s=settings.file_ttl_s)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return json_response(record.openai())


async def list_files(api: BatchApi, key: ApiKeyRecord, request: Request) -> Response:
    records = await api.files.listing(key.tenant)
    purpose = request.query_params.get("purpose")
    if purpose:
        records = [r for r in records if r.purpose == purpose]
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("`order` must be `asc` or `desc`.", param="order")
    if order == "desc":
        records.reverse()
    return page([r.openai() for r in records], request, default_limit=10_000)


async def retrieve(api: BatchApi, key: ApiKeyRecord, request: Request) -> Response:
    return json_response((await find(api, key, request.path_params["fid"])).openai())


async def content(api: BatchApi, key: ApiKeyRecord, request: Request) -> Response:
    record = await find(api, key, request.path_params["fid"])
    path = api.dir.file(record.id)
    if not await asyncio.to_thread(Path.is_file, path):
        raise NotFound(f"The content of file {record.id} is no longer available.", code="file_not_found")
    return FileResponse(path, media_type="application/jsonl", filename=record.filename)


async def delete(api: BatchApi, key: ApiKeyRecord, request: Request) -> Response:
    record = await find(api, key, request.path_params["fid"])
    await api.files.delete(record)
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(os.unlink, api.dir.file(record.id))
    return json_response({"id": record.id, "object": "file", "deleted": True})
