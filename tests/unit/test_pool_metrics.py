"""The warm pool's metrics as a pure function of observed facts, and the metrics settings' validation."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from queue_gateway.pool_metrics import ModelFacts, PoolFacts, _policy_replicas, render
from slurmless.settings import MetricsSettings
from warmpool.phase import ModelPhase, Phase


def facts(**overrides: object) -> ModelFacts:
    base: dict[str, object] = {
        "model": "m",
        "phase": ModelPhase(phase=Phase.READY, coming_instances=0),
        "desired": 3,
        "policy_replicas": {"reactive": 1, "forecast": 3},
        "ready": 3,
        "inflight": {"a": 0, "b": 2, "c": 0},
        "gpus_per_instance": 4,
        "queue_depth": 0,
        "oldest_wait_s": 0.0,
        "cold_wait_budget_s": 900.0,
        "last_cold_start_s": None,
    }
    return ModelFacts(**(base | overrides))  # type: ignore[arg-type]


def samples(pool: PoolFacts) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = render(pool).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_idle_gpus_count_only_instances_without_requests() -> None:
    got = samples(PoolFacts(models=[facts()], leader_present=True))
    assert got[("slurmless_pool_idle_gpus", (("model", "m"),))] == 8  # a and c, 4 GPUs each
    assert got[("slurmless_pool_ready_gpus", (("model", "m"),))] == 12
    assert got[("slurmless_pool_inflight_requests", (("model", "m"),))] == 2
    assert got[("slurmless_pool_launcher_leader_present", ())] == 1


def test_exactly_one_phase_is_set_and_absent_facts_make_no_series() -> None:
    got = samples(PoolFacts(models=[facts(phase=ModelPhase(phase=Phase.PENDING), desired=None)], leader_present=False))
    phases = {dict(labels)["phase"]: v for (name, labels), v in got.items() if name == "slurmless_pool_phase"}
    assert phases == {p.value: (1.0 if p is Phase.PENDING else 0.0) for p in Phase}
    assert not any(name == "slurmless_pool_desired_replicas" for name, _ in got)
    assert not any(name == "slurmless_pool_last_cold_start_seconds" for name, _ in got)


def test_label_values_are_escaped() -> None:
    got = samples(PoolFacts(models=[facts(model='we"ird\\name')], leader_present=True))
    assert got[("slurmless_pool_ready_replicas", (("model", 'we"ird\\name'),))] == 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"replicas": 2, "reasons": [{"policy": "schedule", "replicas": 1}, {"policy": "schedule", "replicas": 2}]}',
         (2, {"schedule": 2})),
        (b"not json", (None, {})),
        (b"[1, 2]", (None, {})),
        (b'{"replicas": true, "reasons": [{"policy": 1, "replicas": 2}, "x"]}', (None, {})),
        (None, (None, {})),
    ],
)  # fmt: skip
def test_desired_records_are_read_defensively(raw: bytes | None, expected: tuple[int | None, dict[str, int]]) -> None:
    assert _policy_replicas(raw) == expected


@pytest.mark.parametrize("url", ["ftp://gw:21", "gw.example.org:8000", "http://", "http://gw/x?y=1"])
def test_gateway_url_must_be_http_with_a_host(url: str) -> None:
    with pytest.raises(ValidationError, match="gateway_url"):
        MetricsSettings(gateway_url=url)


def test_gateway_url_accepts_a_path_prefix() -> None:
    assert MetricsSettings(gateway_url="https://llm.example.org/slurmless").gateway_url is not None
