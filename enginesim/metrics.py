"""Counters of the simulated engine and their Prometheus text, named and labelled like vLLM v1's."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from enginesim.scheduler import Scheduler

FINISHED_REASONS = ("stop", "length", "abort")
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class EngineCounters:
    """Cumulative counts since start; part of the testable surface of the simulator."""

    requests_started: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISHED_REASONS, 0))
    priorities: dict[int, int] = field(default_factory=dict)
    """Completion requests started, by their ``priority`` field (0 when absent)."""

    def finish(self, reason: str, prompt_tokens: int, generation_tokens: int) -> None:
        """Count one request that ended with ``reason`` (``stop``, ``length`` or ``abort``)."""
        self.finished[reason] = self.finished.get(reason, 0) + 1
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens


def _label_value(value: str) -> str:
    # Prometheus label values escape backslash, quote and newline; JSON escaping covers them.
    return orjson.dumps(value).decode()[1:-1]


def render_metrics(model_name: str, scheduler: Scheduler, counters: EngineCounters) -> str:
    """Prometheus text exposition of the gauges and counters vLLM v1 exports.

    vLLM v1 labels every engine series with ``engine`` (the engine index) and ``model_name``
    (the first served model name); ``request_success_total`` adds ``finished_reason``.
    """
    labels = f'engine="0",model_name="{_label_value(model_name)}"'
    kv_usage = min(1.0, scheduler.running / scheduler.max_running)
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} {float(scheduler.running)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{labels}}} {float(scheduler.waiting)}",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{labels}}} {kv_usage}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{labels}}} {float(counters.prompt_tokens)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{labels}}} {float(counters.generation_tokens)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
    ]
    lines.extend(
        f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {float(count)}'
        for reason, count in counters.finished.items()
    )
    return "\n".join(lines) + "\n"
