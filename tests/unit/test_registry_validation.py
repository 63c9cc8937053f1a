"""Registry validation: hostile and oversized inputs are refused with one clear line.

(The same inputs sent through the admin API, with Redis compared before and after, are in
tests/integration/test_admin_api.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from launcher.lora import LORA_JOB_ENV, lora_engine_args, lora_job_env
from slurmless.settings import PartitionLimits, RegistrySettings
from warmpool.errors import Missing, RegistryError
from warmpool.registry import (
    check_model_dir,
    check_name,
    check_resources,
    check_source,
    estimate_gpus,
    normalize_engine_args,
    one_line,
    validate_spec,
    visible_to,
)
from warmpool.schedule_store import ScheduleKind, ScheduleSpec
from warmpool.specs import ModelKind, ModelSpec, Resources, Visibility

LLAMA_8B: dict[str, Any] = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
LLAMA_70B: dict[str, Any] = LLAMA_8B | {
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
}
LLAMA_405B: dict[str, Any] = LLAMA_8B | {
    "hidden_size": 16384,
    "intermediate_size": 53248,
    "num_attention_heads": 128,
    "num_hidden_layers": 126,
}


@pytest.fixture
def roots(tmp_path: Path) -> list[Path]:
    root = tmp_path / "models"
    (root / "llama").mkdir(parents=True)
    (root / "llama" / "config.json").write_text(json.dumps(LLAMA_8B))
    (root / "adapter").mkdir()
    (root / "adapter" / "adapter_config.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (root / "escape").symlink_to(outside)
    return [root]


def _one_line(message: str) -> None:
    assert message and "\n" not in message, message


@pytest.mark.parametrize(
    "name",
    ["Llama", "a;rm -rf /", "$(id)", "a b", "-lead", "trail-", "x" * 64, "a/b", "a\nb", "", "ab..c", "ünï"],
)
def test_names_must_be_dns_labels(name: str) -> None:
    with pytest.raises(RegistryError) as exc:
        check_name(name)
    _one_line(str(exc.value))
    assert "DNS label" in str(exc.value)


def test_good_names_pass() -> None:
    for name in ("llama", "llama-3-8b", "a", "x" * 63):
        assert check_name(name) == name


def test_sources_must_lie_under_roots(roots: list[Path]) -> None:
    root = roots[0]
    assert check_source(f"{root}/llama", roots=roots, allow_hub_ids=False) == f"{root}/llama"
    cases = {
        f"{root}/../outside": "'..'",
        f"{root}/llama/../../outside": "'..'",
        "/etc": "outside the model roots",
        f"{root}x/llama": "outside the model roots",
        f"{root}/escape": "symlink escape",
        f"{root}/escape/config.json": "symlink escape",
        f"{root}/llama;rm -rf ~": "characters",
        f"{root}/$(reboot)": "characters",
        f"{root}/llama\nexport X=1": "control characters",
        "relative/path/../x": "hub ids are not allowed",
        "meta-llama/Llama-3.1-8B": "hub ids are not allowed",
    }
    for source, why in cases.items():
        with pytest.raises(RegistryError) as exc:
            check_source(source, roots=roots, allow_hub_ids=False)
        _one_line(str(exc.value))
        assert why in str(exc.value), (source, str(exc.value))


def test_hub_ids_only_where_allowed(roots: list[Path]) -> None:
    assert check_source("meta-llama/Llama-3.1-8B", roots=roots, allow_hub_ids=True) == "meta-llama/Llama-3.1-8B"
    for bad in ("a/b/c", "../x", "org/$(id)", "-org/x"):
        with pytest.raises(RegistryError):
            check_source(bad, roots=roots, allow_hub_ids=True)


def test_no_roots_means_no_paths(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no model roots"):
        check_source(str(tmp_path), roots=[], allow_hub_ids=False)


def test_model_dir_check(roots: list[Path]) -> None:
    root = roots[0]
    assert check_model_dir(f"{root}/llama") is None
    assert check_model_dir(f"{root}/adapter", ModelKind.LORA) is None
    assert "holds no config.json" in str(check_model_dir(f"{root}/adapter"))
    assert "holds no adapter_config.json" in str(check_model_dir(f"{root}/llama", ModelKind.LORA))
    assert "not a directory" in str(check_model_dir(f"{root}/missing"))
    assert "outside the model roots" in str(check_model_dir(f"{root}/escape", roots=roots))
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("[1, 2")
    assert "unreadable" in str(check_model_dir(f"{root}/broken"))
    assert check_model_dir("org/model") is None


def test_engine_args_normalised_and_typed() -> None:
    args = normalize_engine_args(
        {"max_model_len": "4096", "--gpu-memory-utilization": "0.85", "enforce-eager": "", "dtype": "bfloat16"}
    )
    assert args == {
        "--max-model-len": 4096,
        "--gpu-memory-utilization": 0.85,
        "--enforce-eager": True,
        "--dtype": "bfloat16",
    }


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ({"--trust-remote-code": True}, "not in the allow-list"),
        ({"--worker-extension-cls": "x"}, "not in the allow-list"),
        ({"--port": 1}, "set by slurmless itself"),
        ({"--api-key": "x"}, "set by slurmless itself"),
        ({"dtype": "auto; rm -rf /"}, "expected one of"),
        ({"dtype": "$(reboot)"}, "expected one of"),
        ({"dtype": "auto\n--trust-remote-code"}, "expected one of"),
        ({"max-model-len": "4096; id"}, "not a int"),
        ({"chat-template": "/tmp/$(id)"}, "characters"),
        ({"gpu-memory-utilization": "1.5"}, "(0, 1]"),
        ({"a b": 1}, "flag name"),
        ({"--x;y": 1}, "flag name"),
        ({"enforce-eager": "maybe"}, "not a flag"),
    ],
)
def test_hostile_engine_args_refused(args: dict[str, Any], why: str) -> None:
    with pytest.raises(RegistryError) as exc:
        normalize_engine_args(args)
    _one_line(str(exc.value))
    assert why in str(exc.value), str(exc.value)


def test_gpu_estimates_match_known_models() -> None:
    small = estimate_gpus(LLAMA_8B, gpu_mem_gb=80)
    assert small is not None and 7.9e9 < small.params < 8.2e9 and small.gpus == 1
    big = estimate_gpus(LLAMA_70B, gpu_mem_gb=80)
    assert big is not None and 69e9 < big.params < 72e9 and big.gpus == 4
    assert estimate_gpus(LLAMA_70B, gpu_mem_gb=40) is not None
    quantised = estimate_gpus(LLAMA_70B | {"quantization_config": {"bits": 4}}, gpu_mem_gb=80)
    assert quantised is not None and quantised.gpus == 1
    longer = estimate_gpus(LLAMA_8B, gpu_mem_gb=24, engine_args={"--max-model-len": 131072})
    assert longer is not None and longer.gpus > 1
    assert estimate_gpus({"model_type": "mystery"}, gpu_mem_gb=80) is None


def test_resources_estimated_and_bounded_by_partition() -> None:
    reg = RegistrySettings(
        partitions={
            "gpu": PartitionLimits(gpu_mem_gb=80, gpus_per_node=4, max_nodes=1),
            "multi": PartitionLimits(gpu_mem_gb=80, gpus_per_node=4, max_nodes=4),
        }
    )
    res, notes = check_resources(Resources(partitions=["gpu"]), reg, config=LLAMA_70B, gpus_given=False)
    assert (res.gpus, res.nodes) == (4, 1) and "estimated" in notes[0]
    res, _ = check_resources(Resources(partitions=["multi"]), reg, config=LLAMA_405B, gpus_given=False)
    assert (res.gpus, res.nodes) == (4, 4)
    with pytest.raises(RegistryError, match="offers at most 4") as exc:
        check_resources(Resources(partitions=["gpu"]), reg, config=LLAMA_405B, gpus_given=False)
    _one_line(str(exc.value))
    for resources, why in (
        (Resources(gpus=8, partitions=["gpu"]), "exceed partition gpu's 4 GPUs"),
        (Resources(nodes=2, partitions=["gpu"]), "limit of 1 node"),
        (Resources(partitions=["nope"]), "unknown partition"),
        (Resources(partitions=["gpu;id"]), "invalid partition"),
        (Resources(qos=["$(id)"]), "invalid QOS"),
        (Resources(account="a b"), "invalid account"),
        (Resources(constraint="a100\nb"), "invalid constraint"),
    ):
        with pytest.raises(RegistryError) as exc:
            check_resources(resources, reg)
        _one_line(str(exc.value))
        assert why in str(exc.value), str(exc.value)


def test_validate_spec_lora_rules(roots: list[Path]) -> None:
    reg = RegistrySettings()
    root = roots[0]
    base = ModelSpec(name="llama", source=f"{root}/llama")
    adapter = ModelSpec(name="tutor", source=f"{root}/adapter", kind=ModelKind.LORA, base_model="llama")
    spec, notes = validate_spec(adapter, reg, roots=roots, base=base)
    assert spec == adapter and "llama" in notes[0]
    with pytest.raises(Missing):
        validate_spec(adapter, reg, roots=roots, base=None)
    with pytest.raises(RegistryError, match="engine arguments on the base"):
        validate_spec(adapter.model_copy(update={"engine_args": {"--max-loras": 2}}), reg, roots=roots, base=base)
    with pytest.raises(RegistryError, match="itself an adapter"):
        validate_spec(adapter, reg, roots=roots, base=adapter)


def test_spec_level_errors_are_one_line() -> None:
    with pytest.raises(ValidationError) as exc:
        ModelSpec.model_validate(
            {"name": "x", "source": "/m", "policy": {"min_replicas": 3, "max_replicas": 1}, "bogus": 1}
        )
    message = one_line(exc.value)
    _one_line(message)
    assert "more" in message


def test_visibility() -> None:
    public = ModelSpec(name="a", source="/m")
    private = ModelSpec(name="b", source="/m", owner_tenant="physics", visibility=Visibility(public=False))
    shared = private.model_copy(update={"visibility": Visibility(public=False, tenants=["chem"])})
    assert visible_to(public, None) and visible_to(public, "chem")
    assert visible_to(private, "physics") and not visible_to(private, "chem") and not visible_to(private, None)
    assert visible_to(shared, "chem") and visible_to(shared, "physics") and not visible_to(shared, "bio")


def test_lora_engine_args_for_base() -> None:
    base = ModelSpec(name="llama", source="/m", engine_args={"--max-model-len": 4096})
    adapters = [ModelSpec(name=f"a{i}", source="/m", kind=ModelKind.LORA, base_model="llama") for i in range(6)]
    assert lora_engine_args(base, []) == {"--max-model-len": 4096}
    assert lora_engine_args(base, adapters[:2]) == {"--max-model-len": 4096, "--enable-lora": True, "--max-loras": 2}
    assert lora_engine_args(base, adapters)["--max-loras"] == 4
    assert lora_job_env(base, adapters) == LORA_JOB_ENV and lora_job_env(base, []) == {}


def test_schedule_specs_validated() -> None:
    ok = ScheduleSpec(
        model="llama", kind=ScheduleKind.CRON, expression="15 10 * * 1", duration_s=5400, timezone="Europe/Berlin"
    )
    assert ok.occurrences(0, 8 * 86400.0)
    bad: list[dict[str, Any]] = [
        {"kind": "cron", "expression": "61 * * * *", "duration_s": 60},
        {"kind": "cron", "expression": "* * * * *; rm -rf /", "duration_s": 60},
        {"kind": "cron", "expression": "* * * * *"},
        {"kind": "cron", "expression": "* * * * *", "duration_s": 60, "timezone": "Mars/Olympus"},
        {"kind": "cron", "expression": "* * * * *", "duration_s": 60, "timezone": "../../etc/passwd"},
        {"kind": "ics", "ics": "not a calendar"},
        {"kind": "ics", "ics": "BEGIN:VCALENDAR\nEND:VCALENDAR\n"},
        {"kind": "ics", "ics": "BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:x\nEND:VEVENT\nEND:VCALENDAR\n"},
    ]
    for data in bad:
        with pytest.raises(ValidationError) as exc:
            ScheduleSpec.model_validate({"model": "llama"} | data)
        _one_line(one_line(exc.value))
