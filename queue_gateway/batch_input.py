"""A batch input file checked line by line: valid requests to run, invalid lines to report.

`check_line` is pure: one JSONL line -> a `Request` or an `Invalid` with the reason. `prepare`
writes the valid requests to the batch's `lines.jsonl` (one `{"custom_id", "body"}` per line, in
input order; the runners read them by offset) and the invalid ones, already in OpenAI's error-file
shape, to `invalid.jsonl`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from queue_gateway.endpoints import BY_PATH
from queue_gateway.errors import BadRequest
from queue_gateway.workflows import TRIBUNAL_PATH, WORKFLOW_PATHS, parse_tribunal, workflow_model

MAX_CUSTOM_ID = 512
ERRORS_SHOWN = 20
"""Validation errors listed on a batch that failed because no line was valid."""


@dataclass(frozen=True, slots=True)
class Request:
    custom_id: str
    model: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Invalid:
    line: int
    """1-based line number in the input file."""
    message: str
    custom_id: str | None = None


def check_line(raw: bytes, number: int, endpoint: str) -> Request | Invalid:
    """One input line (`number` is 1-based) as a request to `endpoint`, or why it is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Invalid(number, f"Line {number} is not valid JSON: {exc}.")
    if not isinstance(data, dict):
        return Invalid(number, f"Line {number} must be a JSON object.")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return Invalid(number, f"Line {number}: `custom_id` must be a non-empty string of at most {MAX_CUSTOM_ID}.")
    method = data.get("method", "POST")
    if method != "POST":
        return Invalid(number, f"Line {number}: `method` must be POST.", custom_id)
    url = data.get("url")
    if url != endpoint:
        return Invalid(number, f"Line {number}: `url` is {url!r}; this batch's endpoint is {endpoint}.", custom_id)
    body = data.get("body")
    if not isinstance(body, dict):
        return Invalid(number, f"Line {number}: `body` must be a JSON object.", custom_id)
    if endpoint in WORKFLOW_PATHS:
        return _workflow_line(body, number, endpoint, custom_id)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Invalid(number, f"Line {number}: the body has no `model`.", custom_id)
    required = BY_PATH[endpoint].required
    value = body.get(required)
    if value is None or (required == "messages" and (not isinstance(value, list) or not value)):
        return Invalid(number, f"Line {number}: the body has no `{required}`.", custom_id)
    if body.get("stream"):
        return Invalid(number, f"Line {number}: streaming is not supported in a batch.", custom_id)
    return Request(custom_id, model, body)


def _workflow_line(body: dict[str, Any], number: int, endpoint: str, custom_id: str) -> Request | Invalid:
    """A chunked or tribunal line, checked as its synchronous endpoint checks a request."""
    try:
        model = workflow_model(endpoint, body)
        if endpoint == TRIBUNAL_PATH and parse_tribunal(body).critic != model:
            # Every step of a batch line runs on the one slot its line took (idle capacity of the batch's
            # model); a second model would need a slot of its own that nothing here reserves.
            return Invalid(
                number,
                f"Line {number}: in a batch, a tribunal's `critic` must be its `generator` (the batch's one model);"
                " two-model tribunals run through /v1/slurmless/tribunal.",
                custom_id,
            )
    except BadRequest as exc:
        return Invalid(number, f"Line {number}: {exc.message}", custom_id)
    return Request(custom_id, model, body)


def error_line(invalid: Invalid) -> bytes:
    """An invalid input line as an error-file line."""
    return orjson.dumps(
        {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": invalid.custom_id,
            "response": None,
            "error": {"code": "invalid_request", "message": invalid.message, "line": invalid.line},
        }
    )


@dataclass
class Prepared:
    total: int = 0
    good: int = 0
    models: set[str] = field(default_factory=set)
    errors: list[dict[str, Any]] = field(default_factory=list)
    """The first `ERRORS_SHOWN` validation errors in OpenAI's batch `errors.data` shape."""


def prepare(source: Path, lines: Path, invalid: Path, *, endpoint: str, max_lines: int) -> Prepared:
    """Check every line of `source`; write `lines` and `invalid` (blank lines are skipped)."""
    out = Prepared()
    seen: set[str] = set()
    lines.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, lines.open("wb") as good, invalid.open("wb") as bad:
        for number, raw in enumerate(src, start=1):
            if not raw.strip():
                continue
            out.total += 1
            if out.total > max_lines:
                raise ValueError(f"the file has more than {max_lines} requests")
            checked = check_line(raw, number, endpoint)
            if isinstance(checked, Request) and checked.custom_id in seen:
                checked = Invalid(number, f"Line {number}: `custom_id` {checked.custom_id!r} is used twice.")
            if isinstance(checked, Invalid):
                bad.write(error_line(checked) + b"\n")
                if len(out.errors) < ERRORS_SHOWN:
                    out.errors.append(
                        {"code": "invalid_request", "message": checked.message, "param": None, "line": checked.line}
                    )
                continue
            seen.add(checked.custom_id)
            out.models.add(checked.model)
            out.good += 1
            good.write(orjson.dumps({"custom_id": checked.custom_id, "body": checked.body}) + b"\n")
    return out
