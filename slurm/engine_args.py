"""The engine-argument allow-list: one table of every vLLM serving option a model may set, each typed.

Each option is a bool flag, a bounded number, a choice from a fixed set, or a path (confined to the
model roots where the registry and the launcher check it). Options that make the engine open a file
or trust what it finds there are `admin_only`: the registry refuses them from self-service keys.
Names and choices are those of vLLM 0.32's `vllm serve` (its argparse parser, the tool and reasoning
parser registries, `QUANTIZATION_METHODS` and `StructuredOutputsConfig.backend`); a vLLM upgrade that
adds a parser is a change to this table.

Options missing from the table are refused, and so are the ones the job script sets itself
(`RESERVED_ENGINE_ARGS`). Values are rendered as argv words (quoted again by the job script).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from slurm.errors import ScriptValidationError
from slurm.validate import check_absolute_path, check_model_source

__all__ = [
    "ENGINE_OPTIONS",
    "RESERVED_ENGINE_ARGS",
    "EngineArgValue",
    "Kind",
    "Option",
    "check_engine_args",
    "path_values",
]

EngineArgValue = bool | int | float | str


class Kind(StrEnum):
    FLAG = "flag"
    """A switch: true renders the flag, false its `--no-` form where vLLM has one, else nothing."""
    INT = "int"
    NUMBER = "number"
    CHOICE = "choice"
    PATH = "path"
    """An absolute path the engine opens: confined to the model roots."""
    SOURCE = "source"
    """A path confined to the model roots, or a hub id where the site allows them."""
    CHOICE_OR_PATH = "choice_or_path"
    """One of `choices`, or (admins only) a path confined to the model roots."""


@dataclass(frozen=True, slots=True)
class Option:
    """How one engine option is typed, bounded and who may set it."""

    kind: Kind
    low: float | None = None
    high: float | None = None
    choices: frozenset[str] = frozenset()
    admin_only: bool = False
    negatable: bool = False
    """A false flag renders `--no-<flag>` (vLLM's default for it may be on)."""
    low_open: bool = False
    """`low` itself is excluded (a fraction in (0, 1])."""


def _choice(*values: str, admin_only: bool = False) -> Option:
    return Option(Kind.CHOICE, choices=frozenset(values), admin_only=admin_only)


def _int(low: int, high: int) -> Option:
    return Option(Kind.INT, low=low, high=high)


TOOL_CALL_PARSERS = [
    "apertus",
    "cohere_command3",
    "cohere_command4",
    "deepseek_v3",
    "deepseek_v31",
    "deepseek_v32",
    "deepseek_v4",
    "deepseek_v41",
    "dots",
    "ernie45",
    "functiongemma",
    "gemma4",
    "gigachat3",
    "glm45",
    "glm47",
    "granite",
    "granite-20b-fc",
    "granite4",
    "hermes",
    "hf",
    "hunyuan_a13b",
    "hy_v3",
    "hy_v4",
    "inkling",
    "internlm",
    "jamba",
    "k2_horizon",
    "kimi_k2",
    "kimi_k3",
    "lfm2",
    "ling3",
    "llama3_json",
    "llama4_json",
    "llama4_pythonic",
    "longcat",
    "mimo",
    "minicpm5",
    "minimax_m2",
    "minimax_m3",
    "mistral",
    "muse_glimmer",
    "olmo3",
    "openai",
    "phi4_mini_json",
    "plamo3",
    "poolside_v1",
    "pythonic",
    "qwen3_coder",
    "qwen3_json",
    "qwen3_xml",
    "seed_oss",
    "step3",
    "step3p5",
    "xlam",
]
"""vLLM 0.32's registered tool-call parsers (`ToolParserManager`)."""
REASONING_PARSERS = [
    "cohere_command3",
    "cohere_command4",
    "deepseek_r1",
    "deepseek_v3",
    "deepseek_v4",
    "deepseek_v41",
    "ernie45",
    "gemma4",
    "glm45",
    "glm47",
    "granite",
    "granite_thinking_parser",
    "hf",
    "holo2",
    "hunyuan_a13b",
    "hy_v3",
    "hy_v4",
    "inkling",
    "k2_horizon",
    "kimi_k2",
    "kimi_k3",
    "ling3",
    "mimo",
    "minicpmv",
    "minimax_m2",
    "minimax_m2_append_think",
    "minimax_m3",
    "mistral",
    "muse_glimmer",
    "nemotron_v3",
    "olmo3",
    "openai_gptoss",
    "plamo3",
    "poolside_v1",
    "qwen3",
    "seed_oss",
    "step3",
    "step3p5",
]
"""vLLM 0.32's registered reasoning parsers (`ReasoningParserManager`)."""
QUANTIZATION_METHODS = [
    "auto_awq",
    "auto_gptq",
    "awq",
    "awq_marlin",
    "compressed-tensors",
    "deepseek_v4_fp8",
    "experts_int8",
    "fbgemm_fp8",
    "fp8",
    "fp8_per_block",
    "fp8_per_channel",
    "fp8_per_tensor",
    "fp_quant",
    "gpt_oss_mxfp4",
    "gptq",
    "gptq_marlin",
    "humming",
    "inc",
    "int8_per_channel_weight_only",
    "modelopt",
    "modelopt_fp4",
    "modelopt_mixed",
    "modelopt_mxfp8",
    "moe_wna16",
    "mxfp4",
    "mxfp8",
    "nvfp4_per_token",
    "online",
    "quark",
    "torchao",
]
KV_CACHE_DTYPES = [
    "auto",
    "bfloat16",
    "float16",
    "fp8",
    "fp8_ds_mla",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_inc",
    "fp8_per_token_head",
    "int4_per_token_head",
    "int8_per_token_head",
    "nvfp4",
    "nvfp4_4over6",
    "nvfp4_ds_mla",
    "turboquant_3bit_nc",
    "turboquant_4bit_nc",
    "turboquant_k3v4_nc",
    "turboquant_k8v4",
    "ultraquant_4bit",
]
LOAD_FORMATS = [
    "auto",
    "pt",
    "safetensors",
    "npcache",
    "dummy",
    "gguf",
    "bitsandbytes",
    "sharded_state",
    "mistral",
    "fastsafetensors",
]
"""Formats that read only the model's own directory (tensorizer and the streamers take extra configs)."""

ENGINE_OPTIONS: Mapping[str, Option] = {
    # Tool calling and reasoning (the OpenAI `tools` and `reasoning_content` surface).
    "--enable-auto-tool-choice": Option(Kind.FLAG),
    "--tool-call-parser": _choice(*TOOL_CALL_PARSERS),
    "--reasoning-parser": _choice(*REASONING_PARSERS),
    "--structured-outputs-config.backend": _choice("auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"),
    "--chat-template": Option(Kind.PATH, admin_only=True),
    "--chat-template-content-format": _choice("auto", "openai", "string"),
    # Capacity.
    "--max-model-len": _int(1, 10_000_000),
    "--max-num-seqs": _int(1, 65_536),
    "--max-num-batched-tokens": _int(1, 10_000_000),
    "--gpu-memory-utilization": Option(Kind.NUMBER, low=0.0, high=1.0, low_open=True),
    "--cpu-offload-gb": Option(Kind.NUMBER, low=0.0, high=4096.0),
    "--block-size": _int(1, 1024),
    "--limit-mm-per-prompt.image": _int(0, 256),
    "--limit-mm-per-prompt.video": _int(0, 256),
    "--limit-mm-per-prompt.audio": _int(0, 256),
    "--enable-prefix-caching": Option(Kind.FLAG, negatable=True),
    "--enable-chunked-prefill": Option(Kind.FLAG, negatable=True),
    "--enforce-eager": Option(Kind.FLAG),
    # Scheduling: the launcher sets `priority` unless a model names it (`launcher.engine_priority_scheduling`).
    "--scheduling-policy": _choice("fcfs", "priority"),
    # Numerics.
    "--dtype": _choice("auto", "bfloat16", "float", "float16", "float32", "half"),
    "--kv-cache-dtype": _choice(*KV_CACHE_DTYPES),
    "--quantization": _choice(*QUANTIZATION_METHODS),
    "--load-format": _choice(*LOAD_FORMATS),
    "--seed": _int(0, 2**32 - 1),
    "--max-logprobs": _int(0, 1024),
    # Tokenizer and generation defaults: files are an admin's call.
    "--tokenizer": Option(Kind.SOURCE, admin_only=True),
    "--tokenizer-mode": _choice("auto", "hf", "mistral"),
    "--generation-config": Option(Kind.CHOICE_OR_PATH, choices=frozenset({"auto", "vllm"})),
    # LoRA (the launcher switches it on for bases with adapters).
    "--enable-lora": Option(Kind.FLAG),
    "--max-loras": _int(1, 256),
    "--max-lora-rank": _choice("1", "8", "16", "32", "64", "128", "256", "320", "512"),
}

#: Flags the job script sets itself; user-supplied values would break the job contract.
RESERVED_ENGINE_ARGS = frozenset(
    {
        "--host",
        "--port",
        "--api-key",
        "--model",
        "--served-model-name",
        "--tensor-parallel-size",
        "--pipeline-parallel-size",
        "--distributed-executor-backend",
    }
)

_FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]{0,63}(\.[a-z0-9][a-z0-9-]{0,31})?$")


def _fail(flag: str, value: object, why: str) -> ScriptValidationError:
    return ScriptValidationError(f"invalid value of {flag} {value!r}: {why}")


def _number(flag: str, opt: Option, value: EngineArgValue) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(flag, value, "expected a number")
    if opt.kind is Kind.INT and not isinstance(value, int):
        raise _fail(flag, value, "expected an integer")
    low = -math.inf if opt.low is None else opt.low
    high = math.inf if opt.high is None else opt.high
    below = value <= low if opt.low_open else value < low
    if below or value > high or (isinstance(value, float) and not math.isfinite(value)):
        interval = f"{'(' if opt.low_open else '['}{low:g}, {high:g}]"
        raise _fail(flag, value, f"expected a number in {interval}")
    return str(value) if isinstance(value, int) else repr(float(value))


def is_path_value(opt: Option, value: EngineArgValue) -> bool:
    """Whether this value of the option names a file or directory (rather than a choice or hub id)."""
    if not isinstance(value, str) or not value.startswith("/"):
        return False
    return opt.kind in (Kind.PATH, Kind.SOURCE, Kind.CHOICE_OR_PATH)


def _value(flag: str, opt: Option, value: EngineArgValue) -> str:
    if opt.kind in (Kind.INT, Kind.NUMBER):
        return _number(flag, opt, value)
    if isinstance(value, bool):
        raise _fail(flag, value, "not a switch")
    if opt.kind is Kind.CHOICE:
        word = str(value)
        if word not in opt.choices:
            shown = ", ".join(sorted(opt.choices)[:12]) + (", ..." if len(opt.choices) > 12 else "")
            raise _fail(flag, value, f"expected one of {shown}")
        return word
    if not isinstance(value, str):
        raise _fail(flag, value, "expected a string")
    if opt.kind is Kind.PATH:
        return check_absolute_path(value, f"value of {flag}")
    if opt.kind is Kind.SOURCE:
        return check_model_source(value)
    if opt.kind is Kind.CHOICE_OR_PATH:
        if value in opt.choices:
            return value
        if value.startswith("/"):
            return check_absolute_path(value, f"value of {flag}")
        raise _fail(flag, value, f"expected one of {', '.join(sorted(opt.choices))} or an absolute path")
    raise AssertionError(f"unknown engine option kind {opt.kind}")  # pragma: no cover


def check_engine_args(args: Mapping[str, EngineArgValue]) -> list[str]:
    """Allow-listed engine options and their values, as argv words in a stable order."""
    argv: list[str] = []
    for flag in sorted(args):
        if flag in RESERVED_ENGINE_ARGS:
            raise ScriptValidationError(f"invalid engine argument {flag!r}: set by slurmless itself")
        opt = ENGINE_OPTIONS.get(flag) if _FLAG.fullmatch(flag) else None
        if opt is None:
            raise ScriptValidationError(f"invalid engine argument {flag!r}: not in the allow-list")
        value = args[flag]
        if opt.kind is Kind.FLAG:
            if not isinstance(value, bool):
                raise _fail(flag, value, "expected true or false")
            if value:
                argv.append(flag)
            elif opt.negatable:
                argv.append("--no-" + flag.removeprefix("--"))
            continue
        argv += [flag, _value(flag, opt, value)]
    return argv


def path_values(args: Mapping[str, EngineArgValue]) -> dict[str, str]:
    """The options whose values are paths the engine will open (each must lie under the model roots)."""
    out: dict[str, str] = {}
    for flag, value in args.items():
        opt = ENGINE_OPTIONS.get(flag)
        if opt is not None and is_path_value(opt, value):
            out[flag] = str(value)
    return out
