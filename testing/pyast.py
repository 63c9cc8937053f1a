"""`ast.parse` for the source-walking tests, safe on CPython 3.11.7.

CPython before 3.11.8 checks the recursion depth around turning a parsed tree into Python objects, and
a garbage collection that runs a finaliser in between (likely late in a long test session) makes that
check fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905). The
collector is paused for the parse, and a parse that still meets the error (another thread's conversion
interleaved with this one) is tried once more: the check starts afresh on every parse.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse_file(path: Path) -> ast.Module:
    """The module at `path`, parsed with the garbage collector paused."""
    source = path.read_text()
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            return ast.parse(source, filename=str(path))
        except SystemError:
            return ast.parse(source, filename=str(path))
    finally:
        if enabled:
            gc.enable()


__all__ = ["parse_file"]
