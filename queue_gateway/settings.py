"""The gateway's settings (`gateway`, `metrics` in `slurmless.settings.Settings`, `SLURMLESS_GATEWAY__*`,
`SLURMLESS_METRICS__*`), beside the code that uses them.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from queue_gateway.batch_settings import BatchSettings
from warmpool.settings import SharedConfig


class ExternalSettings(BaseModel):
    """Models an admin routes to OpenAI-compatible endpoints outside the cluster (docs/external.md)."""

    keys_dir: Path | None = None
    """Directory of the endpoints' API keys, one file per key (`external.key_name` names it), readable by the
    gateway's user only. Unset: external models that name a key are refused at registration."""
    allow_http_loopback: bool = False
    """Accept http:// endpoints on a loopback address (a local proxy, tests); otherwise https:// only."""
    connect_timeout_s: float = Field(10.0, gt=0)
    """Timeout of connecting to an external endpoint."""
    max_connections: int = Field(200, ge=1)
    """Connections to external endpoints one gateway process keeps open at most."""


class GatewaySettings(BaseModel):
    """The OpenAI-compatible front door."""

    host: str = "127.0.0.1"
    """Address the gateway listens on; 0.0.0.0 behind a load balancer."""
    port: int = 8000
    """Port of the OpenAI API (and the admin API under /admin, health and metrics)."""
    workers: int = Field(1, ge=1, le=64)
    """Gateway processes sharing the port (one listening socket, each process with its own Redis
    connections, lease and event loop); more than one uses a core each and Prometheus's multiprocess mode."""
    cold_wait_budget_s: float = 900.0
    """How long a request may wait while no instance of its model runs (Slurm queue + load)."""
    warm_wait_budget_s: float = 30.0
    """How long a request may wait while instances run but are all busy."""
    queue_max_per_model: int = 1000
    """Tickets one model's queue may hold before new requests are refused."""
    queue_max_global: int = 20000
    """Tickets all queues together may hold."""
    progress_interval_s: float = 5.0
    """Seconds between SSE comment lines sent to a held streaming client."""
    key_cache_ttl_s: float = 5.0
    """How long a verified API key is trusted in-process; a revoked key stops working after this."""
    lease_ttl_s: float = 15.0
    """A gateway process that has not renewed its lease for this long is dead; its tickets and slots are reclaimed."""
    async_result_ttl_s: float = 3600.0
    """How long async results stay fetchable."""
    upstream_connect_timeout_s: float = 5.0
    """Timeout of connecting to an engine."""
    upstream_read_timeout_s: float = 600.0
    """Longest silence tolerated from an engine while streaming."""
    upstream_max_connections: int = 2000
    """Connections to engines one gateway process keeps open at most."""
    upstream_retries: int = 1
    """Retries on another instance when an engine fails before the first byte reached the client (or, for a
    request that produced nothing yet, on the replacement of an engine that died)."""
    registration_check_s: float = Field(20.0, ge=0)
    """How long registering a model waits for the launcher's check that the cluster can run it (`sinfo`,
    `sbatch --test-only`); no answer accepts it with a warning. 0 skips the check."""
    speculative_forward: bool = True
    """Send a request to its engine while its admit is on the way to Redis when the last admit left the model's
    only ready instance at most half full; the answer is used only if the admit gives that instance the slot."""
    model_cache_ttl_s: float = 2.0
    """How long a resolved model spec is trusted in-process; registrations and changes show after this."""
    grant_check_interval_s: float = 1.0
    """Safety net: how often held tickets are looked up in case a grant message was lost."""
    async_max_running: int = 256
    """Async requests one gateway process runs (holds or proxies) at once."""
    max_body_bytes: int = Field(10_000_000, ge=1024)
    """Largest request body on the OpenAI surface (413 beyond it); async bodies (kept in Redis) share the cap."""
    max_header_bytes: int = Field(32_768, ge=1024)
    """Largest request line plus headers (431 beyond it), like NGINX's `large_client_header_buffers 4 8k`."""
    header_timeout_s: float = Field(60.0, gt=0)
    """A request's line and headers must arrive within this time (408), like NGINX's `client_header_timeout`."""
    body_timeout_s: float = Field(60.0, gt=0)
    """A request's whole body must arrive within this time (408), like NGINX's `client_body_timeout`."""
    max_connections: int = Field(10_000, ge=1)
    """Open client connections one gateway process accepts; more are answered 503 and closed."""
    async_max_result_bytes: int = Field(16_000_000, ge=1024)
    """Largest async answer kept in Redis; a longer one is stored as a 502 error saying so."""
    metrics_public: bool = False
    """Serve `/metrics` without a token; by default it needs `metrics.token` or the admin token."""
    serve_admin: bool = True
    """Mount the admin API at `/admin`. Web-facing gateways of a site that keeps admin credentials off them
    set this false and run one internal gateway with it (docs/security.md)."""
    batch: BatchSettings = Field(default_factory=BatchSettings)
    """The Files and Batches API and the batch runner."""
    external: ExternalSettings = Field(default_factory=ExternalSettings)
    """Models forwarded to external OpenAI-compatible endpoints."""


class MetricsSettings(BaseModel):
    """What Prometheus is told about engines, and the credential it scrapes them with."""

    token: str | None = None
    """Bearer token that may read the gateway's /metrics, the admin API's service discovery, pool metrics and
    engine metrics proxy, nothing else: give Prometheus this rather than an admin key. Unset: only admin
    credentials may."""
    cluster: str = "slurm"
    """Value of the `cluster` label on discovered engines (the Slurm cluster's name)."""
    gateway_url: str | None = None
    """Base URL Prometheus reaches this gateway at, for the engine targets it discovers; unset: the URL the
    discovery request itself came to."""
    engine_timeout_s: float = Field(5.0, gt=0)
    """Timeout of one proxied scrape of an engine's /metrics."""

    @field_validator("gateway_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"{value!r} is not an http(s) URL with a host and no query: http://gw.example.org:8000")
        return value


class GatewayConfig(SharedConfig):
    """What one gateway process reads from slurmless's settings (`slurmless.settings.Settings` is one)."""

    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    admin_token: str | None = None
    """Bootstrap admin bearer token; `slurmless up` generates one when unset."""
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)


__all__ = ["ExternalSettings", "GatewayConfig", "GatewaySettings", "MetricsSettings"]
