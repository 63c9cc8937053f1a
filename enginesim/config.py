"""Settings of the engine simulator, read from a vLLM-style command line and the environment.

The simulator accepts the flags of vLLM's OpenAI api_server that a job script passes, so the
same job script starts either engine; vLLM flags it has no use for are accepted and ignored.
Simulator-only behaviour is set with ``--sim-*`` flags or the matching ``ENGINESIM_*``
environment variables (a flag wins over the variable).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ENV_PREFIX = "ENGINESIM_"

# vLLM's defaults where the simulator mirrors a vLLM setting.
VLLM_DEFAULT_MAX_NUM_SEQS = 256
VLLM_DEFAULT_PORT = 8000


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything the simulated engine does, as one immutable value.

    model: the model path or name (``--model``); the served name when no other is given.
    served_model_names: names the model answers to (``--served-model-name``).
    host, port: where the server listens; port 0 picks a free port.
    api_key: when set, ``/v1/*`` needs ``Authorization: Bearer <api_key>``.
    max_model_len: context length; prompt + max_tokens beyond it is a 400.
    enable_lora: whether LoRA adapters may be loaded at run time.
    lora_modules: adapters loaded at start, as (name, path) pairs.
    load_time_s: how long ``/health`` and the inference endpoints answer 503 after start.
    first_token_delay_ms: time from taking a running slot to the first token.
    inter_token_ms: time between two tokens (0 emits as fast as the event loop allows).
    tokens_per_chunk: tokens carried by one streamed chunk.
    default_max_tokens: completion length when the request sets no ``max_tokens``.
    max_running: requests generating at once; more wait in line.
    scheduling_policy: vLLM's ``--scheduling-policy``: ``fcfs`` (the line is by arrival) or
        ``priority`` (by each request's ``priority`` field, lower first, then arrival).
    crash_after: after this many inference requests, the next one kills the process.
    hang_after: after this many inference requests, later ones and ``/health`` never answer.
    graceful_shutdown_s: how long a stopping server lets in-flight requests finish.
    """

    model: str = "sim-model"
    served_model_names: tuple[str, ...] = ()
    host: str = "0.0.0.0"
    port: int = VLLM_DEFAULT_PORT
    api_key: str | None = None
    max_model_len: int = 4096
    enable_lora: bool = False
    lora_modules: tuple[tuple[str, str], ...] = ()
    load_time_s: float = 2.0
    first_token_delay_ms: float = 0.0
    inter_token_ms: float = 0.0
    tokens_per_chunk: int = 1
    default_max_tokens: int = 64
    max_running: int = VLLM_DEFAULT_MAX_NUM_SEQS
    scheduling_policy: str = "fcfs"
    crash_after: int | None = None
    hang_after: int | None = None
    graceful_shutdown_s: float = 5.0
    ignored_args: tuple[str, ...] = field(default=(), compare=False)

    @property
    def model_names(self) -> tuple[str, ...]:
        """The names the base model is served under; the first one labels the metrics."""
        return self.served_model_names or (self.model,)

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ValueError("max_running must be at least 1")
        if self.tokens_per_chunk < 1:
            raise ValueError("tokens_per_chunk must be at least 1")
        if self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be at least 1")


def parse_context_length(text: str) -> int:
    """Parse a vLLM-style length: ``4096``, ``32k`` (32000) or ``32K`` (32768)."""
    multipliers = {"k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}
    if text and text[-1] in multipliers:
        return int(float(text[:-1]) * multipliers[text[-1]])
    return int(text)


def _parse_lora_module(text: str) -> tuple[str, str]:
    """Parse one ``--lora-modules`` entry: ``name=path`` or vLLM's JSON form."""
    if text.startswith("{"):
        spec = json.loads(text)
        return str(spec["name"]), str(spec["path"])
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=path, got {text!r}")
    return name, path


def _build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(name: str) -> str | None:
        return environ.get(ENV_PREFIX + name)

    def env_float(name: str, default: float) -> float:
        value = env(name)
        return default if value is None else float(value)

    def env_int(name: str, default: int | None) -> int | None:
        value = env(name)
        return default if value is None or value == "" else int(value)

    # allow_abbrev=False: an unknown vLLM flag must never be taken as an abbreviation of ours.
    parser = argparse.ArgumentParser(
        prog="python -m enginesim",
        description="vLLM-shaped OpenAI-compatible engine simulator.",
        allow_abbrev=False,
    )
    vllm = parser.add_argument_group("vLLM flags")
    vllm.add_argument("--model", default=env("MODEL") or "sim-model")
    vllm.add_argument("--served-model-name", nargs="+", default=None, dest="served_model_names")
    vllm.add_argument("--host", default=None)
    vllm.add_argument("--port", type=int, default=VLLM_DEFAULT_PORT)
    vllm.add_argument("--api-key", default=None)
    vllm.add_argument("--max-model-len", type=parse_context_length, default=4096)
    vllm.add_argument("--max-num-seqs", type=int, default=VLLM_DEFAULT_MAX_NUM_SEQS)
    vllm.add_argument("--enable-lora", action="store_true")
    vllm.add_argument("--max-loras", type=int, default=1)
    vllm.add_argument("--lora-modules", nargs="+", type=_parse_lora_module, default=[])
    vllm.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    vllm.add_argument("--dtype", default="auto")
    vllm.add_argument("--scheduling-policy", choices=("fcfs", "priority"), default="fcfs")

    sim = parser.add_argument_group("simulator flags (env ENGINESIM_<NAME>)")
    sim.add_argument("--sim-load-time-s", type=float, default=env_float("LOAD_TIME_S", 2.0))
    sim.add_argument("--sim-first-token-delay-ms", type=float, default=env_float("FIRST_TOKEN_DELAY_MS", 0.0))
    sim.add_argument("--sim-inter-token-ms", type=float, default=env_float("INTER_TOKEN_MS", 0.0))
    sim.add_argument("--sim-tokens-per-chunk", type=int, default=env_int("TOKENS_PER_CHUNK", 1))
    sim.add_argument("--sim-default-max-tokens", type=int, default=env_int("DEFAULT_MAX_TOKENS", 64))
    sim.add_argument(
        "--sim-max-running",
        type=int,
        default=env_int("MAX_RUNNING", None),
        help="running-request cap (default: --max-num-seqs)",
    )
    sim.add_argument("--sim-crash-after", type=int, default=env_int("CRASH_AFTER", None))
    sim.add_argument("--sim-hang-after", type=int, default=env_int("HANG_AFTER", None))
    sim.add_argument("--sim-graceful-shutdown-s", type=float, default=env_float("GRACEFUL_SHUTDOWN_S", 5.0))
    return parser


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> SimConfig:
    """Build a ``SimConfig`` from a vLLM api_server command line; unknown flags are ignored."""
    environ = os.environ if environ is None else environ
    parser = _build_parser(environ)
    args, unknown = parser.parse_known_args(None if argv is None else list(argv))
    api_key = args.api_key if args.api_key is not None else environ.get("VLLM_API_KEY")
    return SimConfig(
        model=args.model,
        served_model_names=tuple(args.served_model_names or ()),
        host=args.host if args.host is not None else "0.0.0.0",
        port=args.port,
        api_key=api_key or None,
        max_model_len=args.max_model_len,
        enable_lora=args.enable_lora,
        lora_modules=tuple(args.lora_modules),
        load_time_s=args.sim_load_time_s,
        first_token_delay_ms=args.sim_first_token_delay_ms,
        inter_token_ms=args.sim_inter_token_ms,
        tokens_per_chunk=args.sim_tokens_per_chunk,
        default_max_tokens=args.sim_default_max_tokens,
        max_running=args.sim_max_running if args.sim_max_running is not None else args.max_num_seqs,
        scheduling_policy=args.scheduling_policy,
        crash_after=args.sim_crash_after,
        hang_after=args.sim_hang_after,
        graceful_shutdown_s=args.sim_graceful_shutdown_s,
        ignored_args=tuple(unknown),
    )
