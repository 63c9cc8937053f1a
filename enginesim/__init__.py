"""A vLLM-shaped OpenAI-compatible engine simulator for tests and benchmarks.

Run it as ``python -m enginesim`` with vLLM's api_server flags; use ``build_app`` in-process.
"""

from enginesim.app import Engine, build_app, engine_of
from enginesim.config import SimConfig, parse_args

__all__ = ["Engine", "SimConfig", "build_app", "engine_of", "parse_args"]
