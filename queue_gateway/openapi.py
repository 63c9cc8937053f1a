"""The OpenAPI 3.1 description of the surface a gateway serves (`GET /openapi.json`).

One entry per route of `queue_gateway.app` (a test holds the two equal), with the request fields
slurmless itself reads and every status it answers; engine fields pass through unchecked
(`additionalProperties`). Errors are OpenAI's error JSON.
"""

from __future__ import annotations

from typing import Any

from queue_gateway.openapi_more import more_paths

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant"]}, "content": {"type": "string"}},
}
_COMMON = {
    "model": {"type": "string", "minLength": 1, "examples": ["m"]},
    "max_tokens": {"type": "integer", "minimum": 1},
    "stream": {"type": "boolean"},
}
REQUESTS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {**_COMMON, "messages": {"type": "array", "minItems": 1, "maxItems": 4, "items": _MESSAGE}},
    },
    "/v1/completions": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {**_COMMON, "prompt": {"type": "string"}},
    },
    "/v1/embeddings": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {"model": _COMMON["model"], "input": {"type": "string"}},
    },
}
_JSON_OBJECT = {"type": "object"}
_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "slurmless": {"type": "object"},
    },
}
_ASYNC_STATUS = {
    "type": "object",
    "required": ["id", "object", "status", "url"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "slurmless.async_request"},
        "status": {"enum": ["queued", "in_progress"]},
        "url": {"type": "string"},
    },
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(ERROR, "an OpenAI-shaped error") for c in codes}


_AUTH_ERRORS = (401,)
_COMPLETION_ERRORS = (400, 401, 404, 408, 413, 429, 502, 503, 504)


def _completion(path: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"OpenAI-compatible {path.rsplit('/', 1)[-1]} (streams as SSE with `stream: true`)",
            "parameters": [
                {
                    "name": "Prefer",
                    "in": "header",
                    "required": False,
                    "schema": {"enum": ["respond-async"]},
                    "description": "Async mode: 202 and an id to poll at /v1/async/{id}",
                }
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": REQUESTS[path]}}},
            "responses": {
                "200": {
                    "description": "the engine's answer",
                    "content": {"application/json": {"schema": _JSON_OBJECT}, "text/event-stream": {"schema": {}}},
                },
                "202": _json(_ASYNC_STATUS, "accepted for async mode"),
                **_errors(*_COMPLETION_ERRORS),
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    """The document; paths are those of `queue_gateway.app.build_app` outside `/admin`."""
    text = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    paths: dict[str, Any] = {
        **{p: _completion(p) for p in REQUESTS},
        "/v1/models": {
            "get": {
                "summary": "Models this key may use, with their state",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["object", "data"],
                            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL}},
                        }
                    ),
                    **_errors(*_AUTH_ERRORS),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "summary": "One model",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_MODEL), **_errors(401, 404)},
            }
        },
        "/v1/async/{rid}": {
            "get": {
                "summary": "An async request: 202 while pending, the stored answer once done",
                "parameters": [
                    {"name": "rid", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "wait_s",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "minimum": 0, "maximum": 60},
                    },
                ],
                "responses": {
                    "200": {"description": "the stored answer", "content": {"application/json": {"schema": {}}}},
                    "202": _json(_ASYNC_STATUS, "pending"),
                    **_errors(401, 404),
                },
            }
        },
        "/healthz": {"get": {"summary": "Alive", "security": [], "responses": {"200": _json(_JSON_OBJECT)}}},
        "/readyz": {
            "get": {
                "summary": "Ready: Redis reachable, grants subscribed",
                "security": [],
                "responses": {"200": _json(_JSON_OBJECT), "503": _json(_JSON_OBJECT, "not ready")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (the metrics or admin token)",
                "responses": {"200": text, **_errors(401)},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "security": [], "responses": {"200": _json(_JSON_OBJECT)}}
        },
        **more_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "slurmless gateway (OpenAI-compatible)", "version": "1"},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
