"""Every inference route the gateway queues and proxies, and what a request to each must carry.

One table for the gateway's hot endpoints, the batch input checks and the API docs: path -> kind,
the body field that must be present, and whether the route can stream.
"""

from __future__ import annotations

from dataclasses import dataclass

JSON_TYPE = b"application/json"


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    kind: str
    required: str
    """A body field that must be present (and, for chat, a non-empty list)."""
    streams: bool = True
    multipart: bool = False
    """The body is multipart/form-data (the model is a form field)."""


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/v1/chat/completions", "chat", "messages"),
    Endpoint("/v1/completions", "completions", "prompt"),
    Endpoint("/v1/embeddings", "embeddings", "input", streams=False),
    Endpoint("/v1/responses", "responses", "input"),
    Endpoint("/v1/rerank", "rerank", "query", streams=False),
    Endpoint("/v1/score", "score", "text_1", streams=False),
    Endpoint("/tokenize", "tokenize", "model", streams=False),
    Endpoint("/detokenize", "detokenize", "tokens", streams=False),
    Endpoint("/v1/audio/transcriptions", "transcriptions", "file", multipart=True),
)
BY_PATH = {e.path: e for e in ENDPOINTS}
BY_KIND = {e.kind: e for e in ENDPOINTS}
