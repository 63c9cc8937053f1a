"""OpenAPI paths of the other inference routes, the Files and Batches API and the workflows (merged into
`queue_gateway.openapi.openapi_document`)."""

from __future__ import annotations

from typing import Any

from queue_gateway.batch_api import BATCH_ENDPOINTS

_OBJECT = {"type": "object"}
_MODEL_FIELD = {"type": "string", "minLength": 1, "examples": ["m"]}
_ERROR_REF = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"]}},
}
_ROUTE_ERRORS = (400, 401, 404, 408, 413, 429, 502, 503, 504)
_STRINGS = {"type": "array", "minItems": 1, "maxItems": 4, "items": {"type": "string"}}

ROUTE_REQUESTS: dict[str, dict[str, Any]] = {
    "/v1/responses": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": _MODEL_FIELD,
            "input": {"type": "string"},
            "max_output_tokens": {"type": "integer", "minimum": 1, "maximum": 64},
            "stream": {"type": "boolean"},
        },
    },
    "/v1/rerank": {
        "type": "object",
        "required": ["model", "query", "documents"],
        "properties": {"model": _MODEL_FIELD, "query": {"type": "string"}, "documents": _STRINGS},
    },
    "/v1/score": {
        "type": "object",
        "required": ["model", "text_1", "text_2"],
        "properties": {"model": _MODEL_FIELD, "text_1": {"type": "string"}, "text_2": {"type": "string"}},
    },
    "/tokenize": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {"model": _MODEL_FIELD, "prompt": {"type": "string"}},
    },
    "/detokenize": {
        "type": "object",
        "required": ["model", "tokens"],
        "properties": {"model": _MODEL_FIELD, "tokens": {"type": "array", "items": {"type": "integer"}}},
    },
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ERROR_REF, "an OpenAI-shaped error") for c in codes}


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_PAGE = [
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
]
_LIST = {"type": "object", "required": ["object", "data", "has_more"], "properties": {"object": {"const": "list"}}}
_FILE = {"type": "object", "required": ["id", "object", "bytes", "filename", "purpose"]}
_BATCH = {"type": "object", "required": ["id", "object", "endpoint", "status", "input_file_id", "request_counts"]}


def _route(path: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"The engine's {path} through the queue",
            "requestBody": {"required": True, "content": {"application/json": {"schema": ROUTE_REQUESTS[path]}}},
            "responses": {
                "200": {
                    "description": "the engine's answer",
                    "content": {"application/json": {"schema": _OBJECT}, "text/event-stream": {"schema": {}}},
                },
                **_errors(*_ROUTE_ERRORS),
            },
        }
    }


def more_paths() -> dict[str, Any]:
    """Paths of `queue_gateway.endpoints` beyond chat/completions/embeddings, `batch_api.routes`, `workflows.routes`."""
    multipart_audio = {
        "type": "object",
        "required": ["model", "file"],
        "properties": {"model": _MODEL_FIELD, "file": {"type": "string", "format": "binary"}},
    }
    upload = {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"enum": ["batch"]}},
    }
    batch_create = {
        "type": "object",
        "required": ["input_file_id", "endpoint", "completion_window"],
        "properties": {
            "input_file_id": {"type": "string"},
            "endpoint": {"enum": list(BATCH_ENDPOINTS)},
            "completion_window": {"enum": ["24h"]},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    chunked = {
        "type": "object",
        "required": ["model", "input", "instruction"],
        "properties": {
            "model": _MODEL_FIELD,
            "input": {"type": "string"},
            "instruction": {"type": "string", "minLength": 1},
            "chunk_tokens": {"type": "integer", "minimum": 16, "maximum": 4096},
            "overlap_tokens": {"type": "integer", "minimum": 0, "maximum": 15},
            "combine": {"enum": ["concatenate", "reduce"]},
            "reduce_prompt": {"type": "string", "minLength": 1},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 16},
        },
    }
    message = {"type": "object", "required": ["role", "content"], "properties": {"role": {"const": "user"}}}
    tribunal = {
        "type": "object",
        "required": ["generator", "critic", "messages"],
        "properties": {
            "generator": _MODEL_FIELD,
            "critic": _MODEL_FIELD,
            "messages": {"type": "array", "minItems": 1, "maxItems": 2, "items": message},
            "rounds": {"type": "integer", "minimum": 1, "maximum": 5},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 16},
        },
    }
    workflow_errors = _errors(400, 401, 404, 408, 413, 429, 502, 503, 504)
    return {
        **{p: _route(p) for p in ROUTE_REQUESTS},
        "/v1/audio/transcriptions": {
            "post": {
                "summary": "The engine's transcriptions through the queue (multipart; streams with stream=true)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": multipart_audio}}},
                "responses": {
                    "200": {
                        "description": "the engine's answer",
                        "content": {"application/json": {"schema": _OBJECT}, "text/event-stream": {"schema": {}}},
                    },
                    **_errors(*_ROUTE_ERRORS),
                },
            }
        },
        "/v1/files": {
            "post": {
                "summary": "Upload a file (purpose batch), streamed to disk up to the file cap",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": upload}}},
                "responses": {"200": _json(_FILE), **_errors(400, 401, 408, 413)},
            },
            "get": {
                "summary": "This tenant's files",
                "parameters": [
                    *_PAGE,
                    {"name": "purpose", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "order", "in": "query", "required": False, "schema": {"enum": ["asc", "desc"]}},
                ],
                "responses": {"200": _json(_LIST), **_errors(400, 401)},
            },
        },
        "/v1/files/{fid}": {
            "get": {
                "summary": "One file",
                "parameters": [_id("fid")],
                "responses": {"200": _json(_FILE), **_errors(401, 404)},
            },
            "delete": {
                "summary": "Delete a file",
                "parameters": [_id("fid")],
                "responses": {"200": _json(_OBJECT), **_errors(401, 404)},
            },
        },
        "/v1/files/{fid}/content": {
            "get": {
                "summary": "A file's bytes",
                "parameters": [_id("fid")],
                "responses": {
                    "200": {"description": "the file", "content": {"application/jsonl": {"schema": {}}}},
                    **_errors(401, 404),
                },
            }
        },
        "/v1/batches": {
            "post": {
                "summary": "Create a batch from an uploaded file",
                "requestBody": {"required": True, "content": {"application/json": {"schema": batch_create}}},
                "responses": {"200": _json(_BATCH), **_errors(400, 401, 404, 429)},
            },
            "get": {
                "summary": "This tenant's batches, newest first",
                "parameters": _PAGE,
                "responses": {"200": _json(_LIST), **_errors(400, 401)},
            },
        },
        "/v1/batches/{bid}": {
            "get": {
                "summary": "One batch",
                "parameters": [_id("bid")],
                "responses": {"200": _json(_BATCH), **_errors(401, 404)},
            }
        },
        "/v1/batches/{bid}/cancel": {
            "post": {
                "summary": "Cancel a batch: no new lines start, lines in flight finish",
                "parameters": [_id("bid")],
                "responses": {"200": _json(_BATCH), **_errors(401, 404)},
            }
        },
        "/v1/slurmless/chunked": {
            "post": {
                "summary": "Split a long input by the model's tokenizer, process the chunks, combine",
                "requestBody": {"required": True, "content": {"application/json": {"schema": chunked}}},
                "responses": {"200": _json(_OBJECT), **workflow_errors},
            }
        },
        "/v1/slurmless/tribunal": {
            "post": {
                "summary": "Generate with one model, critique with another, revise, for N rounds",
                "requestBody": {"required": True, "content": {"application/json": {"schema": tribunal}}},
                "responses": {"200": _json(_OBJECT), **workflow_errors},
            }
        },
    }
