"""Registering models: every check a spec passes before it is stored, each failing with one line.

- names are DNS labels; served names and aliases are checked by `ModelSpec` itself;
- a path source must lie under an admin-configured root, lexically and after resolving symlinks;
  a hub id only where the site allows them;
- engine arguments must be on the typed allow-list (`slurm.engine_args`); path-typed ones lie under
  the roots too, and only admins may set them;
- resources must fit the partition; GPUs are estimated from `config.json` when not given;
- a LoRA adapter names a registered base model; adapters carry no engine arguments of their own.

`check_model_dir` checks what the directory holds (`config.json` or `adapter_config.json`) where the
paths are visible; the admin API runs it when the site says they are visible locally. Confinement
is checked again later: by the launcher before every submission and by the job before its engine
starts (`slurm.confine`, the job script).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from slurm.confine import outside_roots
from slurm.engine_args import ENGINE_OPTIONS, EngineArgValue, Kind, Option, check_engine_args, is_path_value
from slurm.errors import ScriptValidationError
from slurm.validate import check_absolute_path, check_constraint, check_model_source, check_slurm_word
from warmpool.apikeys import TENANT_RE
from warmpool.errors import Missing, NotPermitted, RegistryError
from warmpool.settings import PartitionLimits, RegistrySettings
from warmpool.specs import MODEL_NAME_RE, ModelKind, ModelSpec, Resources

CONFIG_MAX_BYTES = 10_000_000
"""A config.json is a few kB; a bigger file is not one."""
_FLAG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}(\.[a-z0-9][a-z0-9-]{0,31})?$")
_TRUE = frozenset({"true", "1", "yes", "on", ""})
_FALSE = frozenset({"false", "0", "no", "off"})
_DTYPE_BYTES = {
    "float32": 4.0,
    "float": 4.0,
    "float16": 2.0,
    "half": 2.0,
    "bfloat16": 2.0,
    "float8": 1.0,
    "fp8": 1.0,
    "int8": 1.0,
}
WEIGHT_OVERHEAD = 1.2
"""Activations, CUDA graphs and fragmentation on top of the weights."""
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's default share of a GPU's memory it takes."""


def one_line(exc: ValidationError) -> str:
    """A pydantic error as one line: the first problem with its location, and how many more."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(f"{loc}: {msg}{more}".split()) if loc else " ".join(f"{msg}{more}".split())


def check_name(name: object, what: str = "model name") -> str:
    """A DNS label: it ends up in job names, Redis keys and URLs."""
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
        raise RegistryError(
            f"invalid {what} {name!r}: use a DNS label (a-z, 0-9 and '-', at most 63 characters)",
            param="name",
        )
    return name


def check_tenant_name(name: object) -> str:
    if not isinstance(name, str) or not TENANT_RE.match(name):
        raise RegistryError(
            f"invalid tenant {name!r}: use a DNS label (a-z, 0-9 and '-', at most 63 characters)", param="tenant"
        )
    return name


def _under(path: PurePosixPath, root: PurePosixPath) -> bool:
    return path == root or root in path.parents


def check_source(source: str, *, roots: Sequence[Path], allow_hub_ids: bool) -> str:
    """A path under one of `roots` (also after resolving symlinks), or a hub id where allowed."""
    try:
        if not source.startswith("/"):
            if not allow_hub_ids:
                raise RegistryError(
                    f"source {source!r} is not an absolute path, and hub ids are not allowed on this site",
                    param="source",
                )
            return check_model_source(source)
        check_absolute_path(source, "model source")
    except ScriptValidationError as exc:
        raise RegistryError(str(exc), param="source") from None
    if not roots:
        raise RegistryError("no model roots are configured (model_roots): paths cannot be registered", param="source")
    lexical = PurePosixPath(source)
    if not any(_under(lexical, PurePosixPath(os.path.normpath(r))) for r in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise RegistryError(f"source {source!r} is outside the model roots ({allowed})", param="source")
    # realpath resolves every symlink along the part of the path that exists here, so a link
    # inside a root that points elsewhere is caught; the launcher and the job repeat this later.
    resolved = PurePosixPath(os.path.realpath(source))
    if not any(_under(resolved, PurePosixPath(os.path.realpath(r))) for r in roots):
        raise RegistryError(
            f"source {source!r} resolves to {str(resolved)!r}, outside the model roots (symlink escape)",
            param="source",
        )
    return source


def check_model_dir(path: str, kind: ModelKind = ModelKind.BASE, roots: Sequence[Path] = ()) -> str | None:
    """Where the path is visible (the cluster side): None when it holds what `kind` needs, else why not.

    With `roots`, the resolved path must also lie under one of them (a symlink may have changed since
    registration).
    """
    if not path.startswith("/"):
        return None  # a hub id: the engine fetches it
    if roots:
        resolved = PurePosixPath(os.path.realpath(path))
        if not any(_under(resolved, PurePosixPath(os.path.realpath(r))) for r in roots):
            return f"{path} resolves to {resolved}, outside the model roots"
    directory = Path(path)
    if not directory.is_dir():
        return f"{path} is not a directory"
    wanted = "adapter_config.json" if kind is ModelKind.LORA else "config.json"
    try:
        _read_json(directory / wanted)
    except FileNotFoundError:
        return f"{path} holds no {wanted}"
    except (OSError, ValueError) as exc:
        return f"{path}/{wanted} is unreadable: {exc}"
    return None


def _read_json(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        data = fh.read(CONFIG_MAX_BYTES + 1)
    if len(data) > CONFIG_MAX_BYTES:
        raise ValueError("larger than 10 MB")
    parsed = json.loads(data)
    if not isinstance(parsed, dict):
        raise ValueError("not a JSON object")
    return parsed


def read_model_config(path: str) -> dict[str, Any] | None:
    """The model's config.json when the path is visible here, else None."""
    if not path.startswith("/"):
        return None
    try:
        return _read_json(Path(path) / "config.json")
    except (OSError, ValueError):
        return None


def flag_name(key: str) -> str:
    """`max_model_len`, `max-model-len` and `--max-model-len` all name the flag `--max-model-len`."""
    bare = key.removeprefix("--").replace("_", "-")
    if not _FLAG_RE.match(bare):
        raise RegistryError(
            f"invalid engine argument {key!r}: expected a flag name like max-model-len", param="engine_args"
        )
    return f"--{bare}"


def normalize_engine_args(
    raw: Mapping[str, object],
    *,
    admin: bool = False,
    roots: Sequence[Path] = (),
    allow_hub_ids: bool = False,
    previous: Mapping[str, EngineArgValue] | None = None,
) -> dict[str, EngineArgValue]:
    """Engine arguments as `--flag: typed value`, checked against the allow-list (`slurm.engine_args`).

    Keys may be given as `max_model_len`, `max-model-len` or `--max-model-len`; string values (from
    the CLI's KEY=VALUE) are converted to the option's type. Paths must lie under `roots` (also
    after resolving symlinks), hub ids only where the site allows them. Options that open files or
    extend trust are for admins: a self-service key may keep an admin's value (`previous`) but not
    set or change one.
    """
    out: dict[str, EngineArgValue] = {}
    for key, value in raw.items():
        flag = flag_name(key)
        opt = ENGINE_OPTIONS.get(flag)
        out[flag] = _coerce(flag, opt, value)
    try:
        check_engine_args(out)
    except ScriptValidationError as exc:
        raise RegistryError(str(exc), param="engine_args") from None
    for flag, value in out.items():
        opt = ENGINE_OPTIONS[flag]
        unchanged = previous is not None and previous.get(flag) == value
        path = is_path_value(opt, value)
        if not admin and not unchanged and (opt.admin_only or path):
            raise NotPermitted(f"engine argument {flag} is for admins only (it opens files)", param="engine_args")
        if path:
            why = outside_roots(str(value), roots)
            if why is not None:
                raise RegistryError(f"invalid value of {flag}: {why}", param="engine_args")
        elif opt.kind is Kind.SOURCE and not allow_hub_ids:
            raise RegistryError(
                f"invalid value of {flag} {value!r}: hub ids are not allowed on this site; give a path under the "
                "model roots",
                param="engine_args",
            )
    return out


def _coerce(flag: str, opt: Option | None, value: object) -> EngineArgValue:
    if not isinstance(value, str | int | float | bool):
        raise RegistryError(f"invalid value of {flag}: expected a string, number or boolean", param="engine_args")
    if not isinstance(value, str) or opt is None:
        return value
    try:
        if opt.kind is Kind.FLAG:
            low = value.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if opt.kind is Kind.INT:
            return int(value, 10)
        if opt.kind is Kind.NUMBER:
            return float(value)
    except ValueError:
        raise RegistryError(
            f"invalid value of {flag}: {value!r} is not a {opt.kind.value}", param="engine_args"
        ) from None
    return value


@dataclass(frozen=True, slots=True)
class GpuEstimate:
    """How many GPUs a model needs, and why."""

    params: int
    weight_gb: float
    kv_gb: float
    need_gb: float
    gpus: int

    def explain(self, gpu_mem_gb: float) -> str:
        return (
            f"~{self.params / 1e9:.1f}B parameters: {self.weight_gb:.1f} GB weights x{WEIGHT_OVERHEAD} "
            f"+ {self.kv_gb:.1f} GB KV cache = {self.need_gb:.1f} GB -> {self.gpus} GPU(s) of {gpu_mem_gb:g} GB"
        )


def _int(config: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def estimate_gpus(
    config: Mapping[str, Any],
    *,
    gpu_mem_gb: float,
    engine_args: Mapping[str, EngineArgValue] | None = None,
    kv_headroom_tokens: int = 8192,
) -> GpuEstimate | None:
    """Estimate GPUs from a Hugging Face config.json; None when the config lacks the sizes needed.

    Parameters come from the transformer's shapes (attention with grouped KV heads, a gated MLP,
    experts for MoE, embeddings counted twice unless tied); bytes per parameter from the dtype or
    quantization. Weights x1.2 plus the KV cache of one `--max-model-len` sequence (else
    `kv_headroom_tokens`, capped by the context length) must fit in the GPUs' usable memory. The
    result is rounded up to a power of two, as tensor parallelism needs.
    """
    args = engine_args or {}
    text_config = config.get("text_config")
    if _int(config, "hidden_size") is None and isinstance(text_config, Mapping):
        config = text_config
    hidden = _int(config, "hidden_size", "d_model", "n_embd")
    layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _int(config, "vocab_size")
    heads = _int(config, "num_attention_heads", "n_head")
    if hidden is None or layers is None or vocab is None or heads is None:
        return None
    inter = _int(config, "intermediate_size", "ffn_dim") or 4 * hidden
    kv_heads = _int(config, "num_key_value_heads") or heads
    head_dim = _int(config, "head_dim") or hidden // heads
    experts = _int(config, "num_local_experts", "n_routed_experts", "num_experts") or 1
    expert_inter = _int(config, "moe_intermediate_size") or inter
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * inter if experts == 1 else experts * 3 * hidden * expert_inter + hidden * experts
    tied = bool(config.get("tie_word_embeddings", False))
    params = layers * (attention + mlp + 2 * hidden) + vocab * hidden * (1 if tied else 2) + hidden

    dtype_arg = args.get("--dtype")
    dtype = str(dtype_arg) if isinstance(dtype_arg, str) and dtype_arg != "auto" else None
    dtype = dtype or str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    bytes_per_param = _DTYPE_BYTES.get(dtype.lower(), 2.0)
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping):
        bits = quant.get("bits") or quant.get("weight_bits")
        if isinstance(bits, int) and 0 < bits <= 16:
            bytes_per_param = bits / 8
        elif str(quant.get("quant_method", "")).lower() == "fp8":
            bytes_per_param = 1.0
    kv_dtype = args.get("--kv-cache-dtype")
    kv_bytes = 1.0 if isinstance(kv_dtype, str) and kv_dtype.startswith("fp8") else max(bytes_per_param, 2.0)

    max_len = args.get("--max-model-len")
    context = _int(config, "max_position_embeddings", "n_positions", "seq_length") or kv_headroom_tokens
    tokens = int(max_len) if isinstance(max_len, int) else min(context, kv_headroom_tokens)
    kv_gb = 2 * layers * kv_heads * head_dim * kv_bytes * tokens / 1e9
    weight_gb = params * bytes_per_param / 1e9
    need_gb = weight_gb * WEIGHT_OVERHEAD + kv_gb
    utilization = args.get("--gpu-memory-utilization")
    usable = float(utilization) if isinstance(utilization, int | float) else DEFAULT_GPU_MEMORY_UTILIZATION
    gpus = max(1, math.ceil(need_gb / (gpu_mem_gb * usable)))
    gpus = 1 << (gpus - 1).bit_length()
    return GpuEstimate(params=params, weight_gb=weight_gb, kv_gb=kv_gb, need_gb=need_gb, gpus=gpus)


def partition_limits(partition: str | None, settings: RegistrySettings) -> PartitionLimits:
    """The limits of a partition (None: the cluster default); unknown partitions are refused."""
    if partition is None or not settings.partitions:
        return settings.default_limits
    limits = settings.partitions.get(partition)
    if limits is None:
        known = ", ".join(sorted(settings.partitions))
        raise RegistryError(f"unknown partition {partition!r} (known: {known})", param="resources.partitions")
    return limits


def check_resources(
    resources: Resources,
    settings: RegistrySettings,
    *,
    config: Mapping[str, Any] | None = None,
    gpus_given: bool = True,
    engine_args: Mapping[str, EngineArgValue] | None = None,
) -> tuple[Resources, list[str]]:
    """Resources checked against every listed partition, GPUs estimated when not given.

    Returns the (possibly estimated) resources and notes for the operator.
    """
    try:
        for partition in resources.partitions:
            check_slurm_word(partition, "partition")
        for qos in resources.qos:
            check_slurm_word(qos, "QOS")
        if resources.account is not None:
            check_slurm_word(resources.account, "account")
        if resources.constraint is not None:
            check_constraint(resources.constraint)
    except ScriptValidationError as exc:
        raise RegistryError(str(exc), param="resources") from None
    unknown = [c for c in resources.clusters if settings.clusters and c not in settings.clusters]
    if unknown:
        known = ", ".join(settings.clusters)
        raise RegistryError(f"unknown cluster {unknown[0]!r} (known: {known})", param="resources.clusters")
    parts: list[str | None] = list(resources.partitions) or [None]
    limits = [(p or "default", partition_limits(p, settings)) for p in parts]
    notes: list[str] = []
    if not gpus_given and config is not None:
        gpu_mem_gb = min(lim.gpu_mem_gb for _, lim in limits)
        estimate = estimate_gpus(
            config, gpu_mem_gb=gpu_mem_gb, engine_args=engine_args, kv_headroom_tokens=settings.kv_headroom_tokens
        )
        if estimate is not None:
            per_node = min(lim.gpus_per_node for _, lim in limits)
            nodes = max(1, math.ceil(estimate.gpus / per_node)) if per_node > 0 else 1
            gpus = min(estimate.gpus, per_node)
            notes.append("estimated " + estimate.explain(gpu_mem_gb))
            for name, lim in limits:
                if nodes > lim.max_nodes or lim.gpus_per_node == 0:
                    offer = lim.gpus_per_node * lim.max_nodes
                    raise RegistryError(
                        f"the model needs {estimate.gpus} GPUs of {gpu_mem_gb:g} GB ({estimate.need_gb:.0f} GB) but "
                        f"partition {name} offers at most {offer} ({lim.gpus_per_node} per node x {lim.max_nodes} "
                        "node(s))",
                        param="resources.gpus",
                    )
            resources = resources.model_copy(update={"gpus": gpus, "nodes": nodes})
    for name, lim in limits:
        if resources.gpus > lim.gpus_per_node:
            raise RegistryError(
                f"{resources.gpus} GPUs per node exceed partition {name}'s {lim.gpus_per_node} GPUs per node",
                param="resources.gpus",
            )
        if resources.nodes > lim.max_nodes:
            raise RegistryError(
                f"{resources.nodes} nodes exceed partition {name}'s limit of {lim.max_nodes} node(s) per instance",
                param="resources.nodes",
            )
        if lim.cpus_per_node is not None and resources.cpus > lim.cpus_per_node:
            raise RegistryError(
                f"{resources.cpus} CPUs exceed partition {name}'s {lim.cpus_per_node} CPUs per node",
                param="resources.cpus",
            )
        if lim.mem_mb_per_node is not None and resources.mem_mb > lim.mem_mb_per_node:
            raise RegistryError(
                f"{resources.mem_mb} MB of memory exceed partition {name}'s {lim.mem_mb_per_node} MB per node",
                param="resources.mem_mb",
            )
    return resources, notes


def visible_to(spec: ModelSpec, tenant: str | None) -> bool:
    """Whether a tenant's keys may see and use a model (None: no tenant, only public models)."""
    if spec.visibility.public:
        return True
    if tenant is None:
        return False
    return tenant == spec.owner_tenant or tenant in spec.visibility.tenants


def validate_spec(
    spec: ModelSpec,
    settings: RegistrySettings,
    *,
    roots: Sequence[Path],
    base: ModelSpec | None = None,
    gpus_given: bool = True,
    config: Mapping[str, Any] | None = None,
    admin: bool = False,
    previous: ModelSpec | None = None,
) -> tuple[ModelSpec, list[str]]:
    """Everything but the Redis-side checks: returns the spec to store and notes for the operator.

    `admin` says whether the caller may set admin-only engine arguments; `previous` is the stored spec
    an update replaces (its admin-set arguments may stay).

    `base` is the registered base model of a LoRA adapter (the caller looks it up, so that it can
    answer 404 for a base the caller may not see). `config` is the model's config.json when the
    caller could read it; GPUs are then estimated unless `gpus_given`.
    """
    check_name(spec.name)
    check_source(spec.source, roots=roots, allow_hub_ids=settings.allow_hub_ids)
    for tenant in spec.visibility.tenants:
        check_tenant_name(tenant)
    if spec.owner_tenant is not None:
        check_tenant_name(spec.owner_tenant)
    if spec.kind is ModelKind.LORA:
        if base is None:
            raise Missing(f"base model {spec.base_model!r} does not exist", param="base_model")
        if base.kind is not ModelKind.BASE:
            raise RegistryError(f"base model {base.name!r} is itself an adapter", param="base_model")
        if spec.engine_args:
            raise RegistryError(
                "a LoRA adapter runs on its base model's instances: set engine arguments on the base",
                param="engine_args",
            )
        return spec, [f"served by instances of {base.name} (with --enable-lora)"]
    engine_args = normalize_engine_args(
        spec.engine_args,
        admin=admin,
        roots=roots,
        allow_hub_ids=settings.allow_hub_ids,
        previous=previous.engine_args if previous is not None else None,
    )
    resources, notes = check_resources(
        spec.resources, settings, config=config, gpus_given=gpus_given, engine_args=engine_args
    )
    if not gpus_given and config is None:
        notes.append(f"config.json not readable here: keeping {resources.gpus} GPU(s); pass --gpus to set")
    return spec.model_copy(update={"engine_args": engine_args, "resources": resources}), notes
