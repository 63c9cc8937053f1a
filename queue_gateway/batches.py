"""`/v1/batches`: create, retrieve, list, cancel (OpenAI's Batch API).

Creation checks the whole input file at once: the endpoint and completion window, one model per
batch that the key may use (an unknown or invisible model is refused here, not at run time), and
every line; invalid lines go to the error file while the valid ones run. A tenant may have
`max_active_per_tenant` batches that have not reached a final status.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from queue_gateway.batch_api import BATCH_ENDPOINTS, BatchApi, json_response, page
from queue_gateway.batch_input import prepare
from queue_gateway.errors import BadRequest, NotFound, RateLimited
from queue_gateway.file_dir import checked, new_id
from queue_gateway.files import find
from queue_gateway.request_body import json_object
from warmpool.apikeys import ApiKeyRecord
from warmpool.batches import BatchDoc, BatchRecord

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


async def _body(request: Request) -> dict[str, Any]:
    return json_object(await request.body())


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    out: dict[str, str] = {}
    if isinstance(value, dict) and len(value) <= MAX_METADATA_PAIRS:
        for k, v in value.items():
            if (
                isinstance(k, str)
                and isinstance(v, str)
                and len(k) <= MAX_METADATA_KEY
                and len(v) <= MAX_METADATA_VALUE
            ):
                out[k] = v
        if len(out) == len(value) and all(len(v) <= MAX_METADATA_VALUE for v in out.values()):
            return out
    raise BadRequest(
        f"`metadata` must be an object of at most {MAX_METADATA_PAIRS} string pairs "
        f"(keys up to {MAX_METADATA_KEY}, values up to {MAX_METADATA_VALUE} characters).",
        param="metadata",
    )


async def find_batch(api: BatchApi, key: ApiKeyRecord, bid: str) -> BatchRecord:
    record = await api.batches.get(checked(bid, "batch"))
    if record is None or (record.doc.tenant != key.tenant and not key.admin):
        raise NotFound(f"No batch found with id '{bid}'.", code="batch_not_found")
    return record


async def create(api: BatchApi, key: ApiKeyRecord, request: Request) -> Response:
    data = await _body(request)
    endpoint = data.get("endpoint")
    if endpoint not in BATCH_ENDPOINTS:
        raise BadRequest(
            f"`endpoint` must be one of {', '.join(BATCH_ENDPOINTS)}.", param="endpoint", code="invalid_value"
        )
    window = data.get("completion_window")
    if not isinstance(window, str) or window not in api.settings.completion_windows:
        raise BadRequest(
            f"`completion_window` must be one of {sorted(api.settings.completion_windows)}.",
            param="completion_window",
            code="invalid_value",
        )
    metadata = _metadata(data.get("metadata"))
    fid = data.get("input_file_id")
    if not isinstance(fid, str) or not fid:
        raise BadRequest(
            "Missing required parameter: 'input_file_id'.", param="input_file_id", code="missing_required_parameter"
        )
    source = await find(api, key, fid)
    if source.purpose != "batch":
        raise BadRequest(f"File {fid} was not uploaded with purpose `batch`.", param="input_file_id")
    bid = new_id("batch")
    try:
        prepared = await asyncio.to_thread(
            prepare,
            api.dir.file(source.id),
            api.dir.lines(bid),
            api.dir.invalid(bid),
            endpoint=str(endpoint),
            max_lines=api.settings.file_max_lines,
        )
    except FileNotFoundError:
        api.dir.drop_batch(bid)
        raise NotFound(f"The content of file {fid} is no longer available.", code="file_not_found") from None
    except ValueError as exc:
        api.dir.drop_batch(bid)
        raise BadRequest(f"The input file is too large: {exc}.", param="input_file_id") from None
    try:
        if len(prepared.models) > 1:
            raise BadRequest(
                f"A batch's requests must all use one model; this file uses {sorted(prepared.models)}.",
                param="input_file_id",
                code="mixed_models",
            )
        model = next(iter(prepared.models), "")
        if model:
            try:
                target = await api.catalog.target(model, key)
            except NotFound as exc:
                raise BadRequest(exc.message, param="input_file_id", code="model_not_found") from None
            if target.spec.external is not None:
                # Lines run in the idle capacity of the cluster's own instances; an external model has none.
                raise BadRequest(
                    f"The model `{model}` is external: batches run on the cluster's own models only.",
                    param="input_file_id",
                    code="model_not_supported",
                )
        now = int(api.clock())
        doc = BatchDoc(
            id=bid,
            tenant=key.tenant,
            key_id=key.key_id,
            admin=key.admin,
            endpoint=str(endpoint),
            input_file_id=source.id,
            completion_window=window,
            metadata=metadata,
            model=model,
            created_at=now,
            expires_at=now + int(api.settings.completion_windows[window]),
            total=prepared.total,
            good=prepared.good,
            errors=prepared.errors if prepared.good == 0 else [],
        )
        if not await api.batches.create(doc, cap=api.settings.max_active_per_tenant):
            raise RateLimited(
                f"Your tenant has {api.settings.max_active_per_tenant} batches in progress, the most allowed; "
                "wait for one to finish or cancel one.",
                code="batch_limit_exceeded",
            )
    except BaseException:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(api.dir.drop_batch, bid)
        raise
    if prepared.good == 0:
        # Failed at once (no valid line): the reasons are in its `errors`, nothing will run.
        await asyncio.to_thread(api.dir.drop_batch, bid)
    record = await api.batches.get(bid)
    assert record is not None
    return json_response(record.openai())


async def retrieve(api: BatchApi, key: ApiKeyRecord, request: Request) -> Response:
    return json_response((await find_batch(api, key, request.path_params["bid"])).openai())


async def list_batches(api: BatchApi, key: ApiKeyRecord, request: Request) -> Response:
    records = await api.batches.listing(key.tenant)
    return page([r.openai() for r in records], request, default_limit=20)


async def cancel(api: BatchApi, key: ApiKeyRecord, request: Request) -> Response:
    record = await find_batch(api, key, request.path_params["bid"])
    await api.batches.cancel(record.doc.id, now_s=api.clock())
    updated = await api.batches.get(record.doc.id)
    assert updated is not None
    return json_response(updated.openai())
