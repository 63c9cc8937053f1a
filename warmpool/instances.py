"""Instance records: one per Slurm job that serves (or will serve) a model."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from warmpool.keys import DEFAULT_CLUSTER


class InstanceState(StrEnum):
    """The life of an instance (docs/architecture.md, "An instance's life")."""

    REQUESTED = "requested"
    PENDING = "pending"
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    GONE = "gone"
    FAILED = "failed"


LIVE_STATES = frozenset(
    {
        InstanceState.REQUESTED,
        InstanceState.PENDING,
        InstanceState.STARTING,
        InstanceState.LOADING,
        InstanceState.READY,
        InstanceState.DRAINING,
    }
)
"""States that hold (or will hold) a Slurm job."""
COMING_STATES = frozenset(
    {InstanceState.REQUESTED, InstanceState.PENDING, InstanceState.STARTING, InstanceState.LOADING}
)
"""States on the way to ready: capacity that is coming."""


class InstanceRecord(BaseModel):
    """Everything known about one instance; stored as a Redis hash of JSON-encoded fields."""

    model_config = ConfigDict(extra="ignore")

    id: str
    model: str
    cluster: str = DEFAULT_CLUSTER
    """The cluster whose launcher submitted the job and owns it (records from before clusters: "default")."""
    state: InstanceState = InstanceState.REQUESTED
    job_id: str | None = None
    host: str | None = None
    port: int | None = None
    api_key: str | None = None
    """The engine's per-instance key: only slurmless can call it."""
    token_sha256: str | None = None
    """Hash of the job's callback token."""
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    """The Slurm account the job was submitted under (None: the submitting user's default)."""
    node: str | None = None
    reason: str | None = None
    """Why it failed or drains."""
    slurm_reason: str | None = None
    """Slurm's pending reason (Priority, Resources, ...)."""
    est_start_s: float | None = None
    time_limit_s: float | None = None
    end_time_s: float | None = None
    created_s: float = 0.0
    state_since_s: float = 0.0
    timestamps: dict[str, float] = Field(default_factory=dict)
    """When each state was entered (epoch seconds), for cold-start phase durations."""
    successor_of: str | None = None
    successor: str | None = None
    loaded_loras: list[str] = Field(default_factory=list)
    batch: bool = False
    """Started for a batch backlog: a preemptible, backfill-fitted job that serves until its walltime and
    is never renewed (the lines it runs when it ends are retried)."""

    @property
    def url(self) -> str | None:
        if self.host is None or self.port is None:
            return None
        return f"http://{self.host}:{self.port}"

    def to_redis(self) -> dict[str, str]:
        return {k: v for k, v in _encode(self).items()}

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes] | dict[str, str]) -> InstanceRecord:
        import orjson

        data: dict[str, object] = {}
        for k, v in raw.items():
            key = k.decode() if isinstance(k, bytes) else k
            data[key] = orjson.loads(v)
        return cls.model_validate(data)


def _encode(record: InstanceRecord) -> dict[str, str]:
    import orjson

    return {k: orjson.dumps(v).decode() for k, v in record.model_dump(mode="json").items()}
