"""The Files and Batches API's parts, and its routes (added to the gateway's route table as one list).

`routes(wrap)` is the table: `wrap` turns a handler `(BatchApi, key, request) -> Response` into an
authenticated endpoint with OpenAI-shaped errors (the gateway's own `_api`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from queue_gateway.batch_settings import BatchSettings
from queue_gateway.catalog import Catalog
from queue_gateway.errors import BadRequest
from queue_gateway.file_dir import FileDir
from warmpool.apikeys import ApiKeyRecord
from warmpool.batches import Batches
from warmpool.files import FileStore

UPLOAD_PATHS = frozenset({"/v1/files", "/v1/audio/transcriptions"})
"""Routes that read their (multipart) body as a stream with their own size cap: the request-wide body
limit (`http_limits`) holds them to the larger upload cap instead."""
UPLOAD_FORM_OVERHEAD = 64 * 1024
"""Room for a multipart upload's other fields and framing beyond the file's own cap."""
BATCH_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/slurmless/chunked",
    "/v1/slurmless/tribunal",
)
"""Endpoints a batch may target."""


@dataclass
class BatchApi:
    settings: BatchSettings
    files: FileStore
    batches: Batches
    dir: FileDir
    catalog: Catalog
    clock: Callable[[], float]


Handler = Callable[[BatchApi, ApiKeyRecord, Request], Awaitable[Response]]


def json_response(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def page(items: list[dict[str, Any]], request: Request, *, default_limit: int) -> Response:
    """OpenAI's cursor page over `items` (already in the requested order): `after` and `limit`."""
    try:
        limit = int(request.query_params.get("limit", default_limit))
    except ValueError:
        raise BadRequest("`limit` must be an integer.", param="limit") from None
    if not 1 <= limit <= 10_000:
        raise BadRequest("`limit` must be between 1 and 10000.", param="limit")
    after = request.query_params.get("after")
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    data = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(items) > limit,
        }
    )


def routes(wrap: Callable[[Handler], Callable[[Request], Awaitable[Response]]]) -> list[Route]:
    from queue_gateway import batches, files

    return [
        Route("/v1/files", wrap(files.upload), methods=["POST"]),
        Route("/v1/files", wrap(files.list_files), methods=["GET"]),
        Route("/v1/files/{fid}", wrap(files.retrieve), methods=["GET"]),
        Route("/v1/files/{fid}", wrap(files.delete), methods=["DELETE"]),
        Route("/v1/files/{fid}/content", wrap(files.content), methods=["GET"]),
        Route("/v1/batches", wrap(batches.create), methods=["POST"]),
        Route("/v1/batches", wrap(batches.list_batches), methods=["GET"]),
        Route("/v1/batches/{bid}", wrap(batches.retrieve), methods=["GET"]),
        Route("/v1/batches/{bid}/cancel", wrap(batches.cancel), methods=["POST"]),
    ]
