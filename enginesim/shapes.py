"""Bodies shaped like vLLM's OpenAI server: errors, completions, SSE chunks.

Streamed chunks are built by concatenating per-request byte prefixes and suffixes with
pre-encoded token text, so the hot loop never serialises a dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

SSE_DONE = b"data: [DONE]\n\n"


class ApiError(Exception):
    """An OpenAI-style error answer: HTTP status, vLLM error type and message."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type

    def body(self) -> bytes:
        """The JSON body vLLM sends for this error."""
        return error_body(self.status, self.message, self.err_type)


def error_body(status: int, message: str, err_type: str) -> bytes:
    """vLLM's ErrorResponse: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps({"error": {"message": message, "type": err_type, "param": None, "code": status}})


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The ``usage`` object of a response."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


@dataclass(frozen=True, slots=True)
class Completion:
    """What one request asked for and what the simulator will answer, decided up front."""

    request_id: str
    created: int
    model: str
    chat: bool
    prompt_tokens: int
    seed: int
    num_tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool
    priority: int = 0
    """vLLM's request priority: lower is admitted first under ``--scheduling-policy priority``."""


def completion_body(completion: Completion, text: str) -> bytes:
    """The non-streaming response: ``chat.completion`` or ``text_completion``."""
    choice: dict[str, Any]
    if completion.chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": completion.finish_reason,
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": completion.finish_reason,
            "stop_reason": None,
        }
        obj = "text_completion"
    return orjson.dumps(
        {
            "id": completion.request_id,
            "object": obj,
            "created": completion.created,
            "model": completion.model,
            "choices": [choice],
            "usage": usage(completion.prompt_tokens, completion.num_tokens),
        }
    )


@dataclass(frozen=True, slots=True)
class StreamFraming:
    """Byte pieces of one request's SSE stream; a chunk is ``prefix + text_json + suffix``."""

    head: bytes
    prefix: bytes
    suffix: bytes
    last_suffix: bytes
    tail: bytes

    @classmethod
    def for_completion(cls, completion: Completion) -> StreamFraming:
        """Pre-build the framing of every chunk of ``completion``'s stream."""
        obj = b"chat.completion.chunk" if completion.chat else b"text_completion"
        envelope = (
            b'data: {"id":'
            + orjson.dumps(completion.request_id)
            + b',"object":"'
            + obj
            + b'","created":'
            + str(completion.created).encode()
            + b',"model":'
            + orjson.dumps(completion.model)
        )
        finish = orjson.dumps(completion.finish_reason)
        if completion.chat:
            # vLLM opens a chat stream with a role-only delta.
            head = envelope + (
                b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}]}\n\n'
            )
            prefix = envelope + b',"choices":[{"index":0,"delta":{"content":'
            suffix = b'},"logprobs":null,"finish_reason":null}]}\n\n'
            last_suffix = b'},"logprobs":null,"finish_reason":' + finish + b',"stop_reason":null}]}\n\n'
        else:
            head = b""
            prefix = envelope + b',"choices":[{"index":0,"text":'
            suffix = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            last_suffix = b',"logprobs":null,"finish_reason":' + finish + b',"stop_reason":null}]}\n\n'
        tail = SSE_DONE
        if completion.include_usage:
            usage_json = orjson.dumps(usage(completion.prompt_tokens, completion.num_tokens))
            tail = envelope + b',"choices":[],"usage":' + usage_json + b"}\n\n" + SSE_DONE
        return cls(head=head, prefix=prefix, suffix=suffix, last_suffix=last_suffix, tail=tail)
