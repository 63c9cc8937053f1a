"""Deterministic fake tokens: prompt counting, generated text, end-of-sequence, embeddings.

Everything here is a pure function of the prompt, so a test can predict what the simulator
will answer and two runs of a benchmark send identical bytes.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

import orjson

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their been has when who will "
    "more no if out so said what up its about into than them can only other new some could "
    "time these two may then do first any my now such like our over man me even most made"
)
VOCAB: tuple[str, ...] = tuple(" " + word for word in _WORDS.split())
# Token text pre-encoded as JSON strings, so a streamed chunk is built by concatenating bytes.
VOCAB_JSON: tuple[bytes, ...] = tuple(orjson.dumps(word) for word in VOCAB)

# When a request does not set ignore_eos, generation "meets EOS" after a prompt-dependent
# number of tokens in [EOS_MIN_TOKENS, EOS_MIN_TOKENS + EOS_SPREAD_TOKENS).
EOS_MIN_TOKENS = 8
EOS_SPREAD_TOKENS = 120

EMBEDDING_DIM = 16


def prompt_seed(text: str) -> int:
    """A stable 32-bit seed for a prompt (``hash()`` is salted per process, crc32 is not)."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def count_tokens(text: str) -> int:
    """Approximate a tokenizer by counting whitespace-separated words (at least one)."""
    return max(1, len(text.split()))


def eos_position(seed: int) -> int:
    """Number of tokens generated before the simulated end-of-sequence."""
    return EOS_MIN_TOKENS + seed % EOS_SPREAD_TOKENS


def token_index(seed: int, position: int) -> int:
    """Vocabulary index of the token at ``position`` of the completion for ``seed``."""
    return (seed + position * 37 + (position * position >> 3)) % len(VOCAB)


def completion_text(seed: int, num_tokens: int) -> str:
    """The whole completion text that streaming would deliver piece by piece."""
    return "".join(VOCAB[token_index(seed, i)] for i in range(num_tokens))


def chunk_json(seed: int, start: int, num_tokens: int) -> bytes:
    """JSON string for the text of tokens ``start .. start+num_tokens``."""
    if num_tokens == 1:
        return VOCAB_JSON[token_index(seed, start)]
    return orjson.dumps(completion_text_range(seed, start, num_tokens))


def completion_text_range(seed: int, start: int, num_tokens: int) -> str:
    """Text of tokens ``start .. start+num_tokens`` of the completion for ``seed``."""
    return "".join(VOCAB[token_index(seed, i)] for i in range(start, start + num_tokens))


def embedding(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector for ``text``."""
    seed = prompt_seed(text)
    raw = [math.sin(seed * 0.0001 + i * 1.7) for i in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def embedding_base64_bytes(vector: Sequence[float]) -> bytes:
    """Little-endian float32 bytes, the payload of ``encoding_format="base64"``."""
    return struct.pack(f"<{len(vector)}f", *vector)
