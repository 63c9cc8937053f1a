"""Prometheus metrics of one gateway app, in its own registry (so tests can build many apps).

Several gateway workers on one port (`gateway.workers`) run in prometheus-client's multiprocess mode:
the supervisor sets `PROMETHEUS_MULTIPROC_DIR` before the workers start, each worker's values live in
files there, and whichever worker answers `/metrics` reads them all (`GatewayMetrics.exposition`).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

_WAIT_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_TTFB_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600)


class GatewayMetrics:
    """The gateway's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "slurmless_gateway_requests", "Requests answered, by model, status and path.",
            ["model", "status", "path"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "slurmless_gateway_queue_depth", "Tickets in a model's queue (all gateways), at the last scrape.",
            ["model"], registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.queue_wait = Histogram(
            "slurmless_gateway_queue_wait_seconds", "Time requests waited in the queue before a grant.",
            ["model", "cold"], buckets=_WAIT_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.cold_start_wait = Histogram(
            "slurmless_gateway_cold_start_wait_seconds", "Waits of requests that arrived while their model was cold.",
            ["model"], buckets=_WAIT_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.held = Gauge(
            "slurmless_gateway_held_connections", "Requests this process holds while they wait in a queue.",
            ["model"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.in_flight = Gauge(
            "slurmless_gateway_in_flight_requests", "Requests this process is proxying to an engine.",
            ["model"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.ttfb = Histogram(
            "slurmless_gateway_time_to_first_byte_seconds", "From request arrival to the engine's first byte sent.",
            ["model"], buckets=_TTFB_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "slurmless_gateway_upstream_errors", "Engine failures, by kind (connect, broken, timeout, status, stream).",
            ["model", "kind"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "slurmless_gateway_upstream_retries", "Requests retried on another instance before the first byte.",
            ["model"], registry=r,
        )  # fmt: skip
        self.requeued = Counter(
            "slurmless_gateway_requeued",
            "Requests whose engine died before their first byte, put back at the head of the model's queue.",
            ["model"], registry=r,
        )  # fmt: skip
        self.speculation = Counter(
            "slurmless_gateway_speculative_sends",
            "Requests sent to an engine before their admit answered, by outcome (used; abandoned: the admit "
            "gave another instance or queued it, the engine's request was aborted; failed: sent anew).",
            ["model", "outcome"], registry=r,
        )  # fmt: skip
        self.disconnects = Counter(
            "slurmless_gateway_client_disconnects", "Clients that left, by where (queued, streaming).",
            ["model", "where"], registry=r,
        )  # fmt: skip
        self.async_requests = Counter(
            "slurmless_gateway_async_requests", "Async requests by outcome (submitted, done, failed, claimed).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.batch_lines = Counter(
            "slurmless_gateway_batch_lines",
            "Batch lines run by this process, by outcome (completed, failed, retried, superseded: another "
            "runner recorded the line first).",
            ["model", "outcome"], registry=r,
        )  # fmt: skip

    def exposition(self) -> bytes:
        """The text format of these metrics; with several workers, of all workers' values together."""
        path = os.environ.get(MULTIPROC_DIR_ENV)
        if not path:
            return generate_latest(self.registry)
        combined = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(combined, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(combined)
