"""What a registered model is: its source, resources, engine arguments and policy knobs.

These are validated once, here, on the way in; the launcher validates again (and quotes) what it
renders into a job script.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from warmpool.external import External

MODEL_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
"""Model names are DNS labels: they end up in job names, Redis keys and URLs."""
SERVED_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
"""Served names and aliases may look like hub ids (`meta-llama/Llama-3.1-8B-Instruct`)."""

ModelName = Annotated[str, Field(pattern=MODEL_NAME_RE.pattern)]
CLUSTER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
"""Cluster names (`launcher.cluster`) end up in Redis keys, events and instance records."""
ClusterName = Annotated[str, Field(pattern=CLUSTER_NAME_RE.pattern)]


class ModelKind(StrEnum):
    BASE = "base"
    LORA = "lora"


class Resources(BaseModel):
    """What one instance asks Slurm for.

    The field docstrings are the descriptions of the API's schema and the help of the CLI's options.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    gpus: int = Field(1, ge=0, le=64)
    """GPUs per node (default: estimated from config.json)."""
    nodes: int = Field(1, ge=1, le=64)
    """Nodes per instance."""
    cpus: int = Field(4, ge=1, le=1024)
    """CPUs per instance."""
    mem_mb: int = Field(16000, ge=256, le=8_000_000)
    """Memory per node in MB."""
    partitions: list[str] = Field(default_factory=list)
    """Allowed partitions, tried in order of estimated start; empty means the cluster default."""
    clusters: list[str] = Field(default_factory=list)
    """Clusters the model may run on (their launchers' `launcher.cluster`); empty means any."""
    qos: list[str] = Field(default_factory=list)
    """Allowed QOS."""
    account: str | None = None
    """Slurm account."""
    constraint: str | None = None
    """Slurm feature constraint."""
    time_limit_min: int = Field(240, ge=2, le=60 * 24 * 14)
    """Job time limit in minutes."""
    time_min_min: int | None = Field(None, ge=1)
    """`--time-min` in minutes: lets backfill start the job early with a shorter limit."""

    @field_validator("clusters")
    @classmethod
    def _cluster_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not CLUSTER_NAME_RE.match(name):
                raise ValueError(f"cluster name {name!r} must match {CLUSTER_NAME_RE.pattern}")
        return value

    @model_validator(mode="after")
    def _time_min_below_limit(self) -> Resources:
        if self.time_min_min is not None and self.time_min_min > self.time_limit_min:
            raise ValueError("time_min_min must not exceed time_limit_min")
        return self


class Policy(BaseModel):
    """Per-model scaling and queueing knobs; None falls back to the deployment default."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    min_replicas: int = Field(0, ge=0, le=64)
    """Instances kept running even when idle."""
    max_replicas: int = Field(1, ge=0, le=64)
    """Most instances at once."""
    keepalive_min_s: float | None = Field(None, ge=0)
    """Shortest idle time before scaling to zero."""
    keepalive_max_s: float | None = Field(None, ge=0)
    """Longest idle time before scaling to zero."""
    cold_wait_budget_s: float | None = Field(None, gt=0)
    """Wait budget while no instance runs."""
    warm_wait_budget_s: float | None = Field(None, gt=0)
    """Wait budget while instances are busy."""
    queue_max: int | None = Field(None, ge=1)
    """Requests the gateway queues for the model before refusing more."""
    max_concurrency: int = Field(64, ge=1, le=4096)
    """Requests one instance serves at once; more wait in the gateway's queue, not in vLLM."""

    @model_validator(mode="after")
    def _bounds(self) -> Policy:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if (
            self.keepalive_min_s is not None
            and self.keepalive_max_s is not None
            and self.keepalive_min_s > self.keepalive_max_s
        ):
            raise ValueError("keepalive_min_s must not exceed keepalive_max_s")
        return self


class Visibility(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public: bool = True
    tenants: list[str] = Field(default_factory=list)


class ModelSpec(BaseModel):
    """One registered model (or LoRA adapter on a base model)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: ModelName
    source: str = ""
    """An absolute path on the cluster's shared filesystem, or a hub id for sites whose nodes reach one
    (empty, and only empty, for an external model)."""
    kind: ModelKind = ModelKind.BASE
    base_model: ModelName | None = None
    """For LoRA adapters: the registered base model whose instances serve this adapter."""
    served_name: str | None = None
    """The name clients use; defaults to `name`."""
    aliases: list[str] = Field(default_factory=list)
    """Other names clients may use."""
    engine_args: dict[str, str | int | float | bool] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    policy: Policy = Field(default_factory=Policy)
    visibility: Visibility = Field(default_factory=Visibility)
    owner_tenant: str | None = None
    """The tenant that owns the model (admins choose; a self-service key registers for its own)."""
    created_s: float = 0.0
    external: External | None = None
    """Forwarded to an OpenAI-compatible endpoint outside the cluster: no instances, no jobs."""

    @field_validator("served_name")
    @classmethod
    def _served_name(cls, value: str | None) -> str | None:
        if value is not None and (not SERVED_NAME_RE.match(value) or ".." in value):
            raise ValueError(f"served name {value!r} must match {SERVED_NAME_RE.pattern} without '..'")
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        for alias in value:
            if not SERVED_NAME_RE.match(alias) or ".." in alias:
                raise ValueError(f"alias {alias!r} must match {SERVED_NAME_RE.pattern} without '..'")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if not value:
            return value  # only external models have none (checked below)
        if any(ord(c) < 32 or c == "\x7f" for c in value):
            raise ValueError("source must not contain control characters")
        if value.startswith("/"):
            if "/../" in value + "/" or value.endswith("/..") or "//" in value:
                raise ValueError(f"source path {value!r} must be normalised (no '..' or '//')")
        elif not SERVED_NAME_RE.match(value) or ".." in value:
            raise ValueError(f"source {value!r} must be an absolute path or a hub id like org/name")
        return value

    @model_validator(mode="after")
    def _lora_has_base(self) -> ModelSpec:
        if self.kind is ModelKind.LORA and self.base_model is None:
            raise ValueError("a LoRA adapter needs base_model")
        if self.kind is ModelKind.BASE and self.base_model is not None:
            raise ValueError("base_model is only for LoRA adapters (kind=lora)")
        if self.external is None and not self.source:
            raise ValueError("source is required (an absolute path or a hub id), unless the model is external")
        if self.external is not None:
            if self.source or self.kind is not ModelKind.BASE or self.engine_args:
                raise ValueError("an external model has no source, engine arguments or base model")
            if self.policy.min_replicas:
                raise ValueError("an external model runs no instances: min_replicas must be 0")
        return self

    @property
    def is_external(self) -> bool:
        return self.external is not None

    @property
    def client_name(self) -> str:
        """The model name clients send in requests."""
        return self.served_name or self.name

    @property
    def instance_model(self) -> str:
        """The model whose instances serve this one and whose queue holds its requests (the base for an
        adapter): the one LoRA-to-base mapping; everything keyed by instance uses it."""
        return self.base_model if self.kind is ModelKind.LORA and self.base_model else self.name


def adapters_of(base: str, specs: Iterable[ModelSpec]) -> list[ModelSpec]:
    """The LoRA adapters among `specs` that the instances of `base` serve."""
    return [s for s in specs if s.instance_model == base and s.name != base]
