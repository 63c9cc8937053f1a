"""The typed engine-argument allow-list: what a tenant may register, what only an admin may, and what nobody may."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slurm.engine_args import ENGINE_OPTIONS, Kind, check_engine_args
from slurm.errors import ScriptValidationError
from slurmless.settings import RegistrySettings
from warmpool.errors import NotPermitted, RegistryError
from warmpool.registry import normalize_engine_args, validate_spec
from warmpool.specs import ModelSpec


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "llama").mkdir(parents=True)
    (root / "llama" / "config.json").write_text("{}")
    (root / "templates").mkdir()
    (root / "templates" / "tools.jinja").write_text("{{ messages }}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "environ.jinja").write_text("secret")
    (root / "escape").symlink_to(outside)
    return root


def _one_line(exc: pytest.ExceptionInfo[Exception]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, message
    return message


# --- path-typed arguments: the holes a tenant key could open ---------------------------------------------

TENANT_FILE_ARGS: list[dict[str, Any]] = [
    {"chat-template": "/proc/self/environ"},
    {"chat_template": "/etc/passwd"},
    {"--tokenizer": "/etc"},
    {"tokenizer": "/proc/self"},
    {"generation-config": "/etc"},
]


@pytest.mark.parametrize("args", TENANT_FILE_ARGS, ids=[next(iter(a.items()))[1] for a in TENANT_FILE_ARGS])
def test_a_tenant_cannot_point_the_engine_at_files(args: dict[str, Any]) -> None:
    with pytest.raises(NotPermitted) as exc:
        normalize_engine_args(args)  # the defaults: a self-service key
    assert "admins only" in _one_line(exc)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ({"chat-template": "/proc/self/environ"}, "outside the model roots"),
        ({"tokenizer": "/etc"}, "outside the model roots"),
        ({"generation-config": "/etc"}, "outside the model roots"),
        ({"chat-template": "{root}/escape/environ.jinja"}, "a symlink leads out"),
        ({"generation-config": ".."}, "expected one of auto, vllm or an absolute path"),
        ({"generation-config": "../../etc"}, "expected one of auto, vllm or an absolute path"),
        ({"chat-template": "{root}/../outside/environ.jinja"}, "component"),
        ({"tokenizer": "meta-llama/Llama-3.1-8B"}, "hub ids are not allowed"),
    ],
)
def test_even_an_admin_is_confined_to_the_model_roots(args: dict[str, Any], why: str, root: Path) -> None:
    args = {k: v.format(root=root) for k, v in args.items()}
    with pytest.raises(RegistryError) as exc:
        normalize_engine_args(args, admin=True, roots=[root], allow_hub_ids=False)
    assert why in _one_line(exc)


def test_an_admin_may_set_files_under_the_roots_and_a_tenant_may_keep_them(root: Path) -> None:
    template = str(root / "templates" / "tools.jinja")
    admin = normalize_engine_args(
        {"chat-template": template, "tokenizer": str(root / "llama")}, admin=True, roots=[root]
    )
    assert admin == {"--chat-template": template, "--tokenizer": str(root / "llama")}
    # A tenant's later update keeps the admin's values, and may change other options...
    kept = normalize_engine_args({**admin, "max-num-seqs": 8}, roots=[root], previous=admin)
    assert kept["--chat-template"] == template and kept["--max-num-seqs"] == 8
    # ... but not change a file-typed one.
    with pytest.raises(NotPermitted):
        normalize_engine_args(
            {**admin, "--chat-template": str(root / "llama" / "config.json")}, roots=[root], previous=admin
        )
    assert normalize_engine_args({"tokenizer": "org/tok"}, admin=True, allow_hub_ids=True) == {"--tokenizer": "org/tok"}


def test_validate_spec_passes_on_who_asks(root: Path) -> None:
    spec = ModelSpec(name="tools", source=str(root / "llama"), engine_args={"chat-template": "/proc/self/environ"})
    with pytest.raises(NotPermitted):
        validate_spec(spec, RegistrySettings(), roots=[root])
    with pytest.raises(RegistryError, match="outside the model roots"):
        validate_spec(spec, RegistrySettings(), roots=[root], admin=True)


# --- the options a site needs, typed ---------------------------------------------------------------------


def test_a_tenant_can_register_tool_calling_reasoning_and_serving_options() -> None:
    args = normalize_engine_args(
        {
            "enable_auto_tool_choice": "true",
            "tool_call_parser": "hermes",
            "reasoning_parser": "qwen3",
            "max_model_len": "32768",
            "max_num_seqs": "64",
            "gpu_memory_utilization": "0.85",
            "limit_mm_per_prompt.image": "2",
            "enable_prefix_caching": "false",
            "kv_cache_dtype": "fp8",
            "quantization": "awq",
            "structured_outputs_config.backend": "xgrammar",
            "chat_template_content_format": "openai",
            "generation_config": "vllm",
        }
    )
    assert check_engine_args(args) == [
        "--chat-template-content-format",
        "openai",
        "--enable-auto-tool-choice",
        "--no-enable-prefix-caching",
        "--generation-config",
        "vllm",
        "--gpu-memory-utilization",
        "0.85",
        "--kv-cache-dtype",
        "fp8",
        "--limit-mm-per-prompt.image",
        "2",
        "--max-model-len",
        "32768",
        "--max-num-seqs",
        "64",
        "--quantization",
        "awq",
        "--reasoning-parser",
        "qwen3",
        "--structured-outputs-config.backend",
        "xgrammar",
        "--tool-call-parser",
        "hermes",
    ]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ({"--tool-call-parser": "../../x"}, "expected one of"),
        ({"--tool-call-parser": "hermes;id"}, "expected one of"),
        ({"--tool-parser-plugin": "/tmp/p.py"}, "not in the allow-list"),
        ({"--trust-remote-code": True}, "not in the allow-list"),
        ({"--reasoning-parser": "nope"}, "expected one of"),
        ({"--quantization": "fp3"}, "expected one of"),
        ({"--structured-outputs-config.backend": "regex"}, "expected one of"),
        ({"--structured-outputs-config": '{"backend": "x"}'}, "not in the allow-list"),
        ({"--limit-mm-per-prompt": '{"image": 1000}'}, "not in the allow-list"),
        ({"--limit-mm-per-prompt.image": 1000}, "[0, 256]"),
        ({"--max-num-seqs": 0}, "[1, 65536]"),
        ({"--max-model-len": 2.5}, "expected an integer"),
        ({"--gpu-memory-utilization": 0}, "(0, 1]"),
        ({"--gpu-memory-utilization": float("nan")}, "(0, 1]"),
        ({"--enable-auto-tool-choice": "yes"}, "expected true or false"),
        ({"--max-lora-rank": 17}, "expected one of"),
        ({"--host": "0.0.0.0"}, "set by slurmless itself"),
    ],
)
def test_values_outside_their_type_are_refused(args: dict[str, Any], why: str) -> None:
    with pytest.raises(ScriptValidationError) as exc:
        check_engine_args(args)
    assert why in _one_line(exc)


def test_every_option_is_typed_and_file_options_are_admin_only() -> None:
    for flag, opt in ENGINE_OPTIONS.items():
        assert flag.startswith("--")
        if opt.kind in (Kind.PATH, Kind.SOURCE):
            assert opt.admin_only, flag
        if opt.kind in (Kind.INT, Kind.NUMBER):
            assert opt.low is not None and opt.high is not None, flag
        if opt.kind is Kind.CHOICE:
            assert opt.choices, flag
    assert json.dumps(sorted(ENGINE_OPTIONS))  # a stable, printable table
