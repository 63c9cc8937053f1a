"""A real Prometheus scrapes a running slurmless: the gateway, the launcher, the pool, and the engines it
finds through `/admin/v1/sd/engines`. The engines are engine simulators started as Slurm jobs on the
local cluster by the real launcher; the config is the example in deploy/prometheus with local addresses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import MetricsSettings, Settings
from testing.launcher import RunningLauncher, launcher_env, records, wait_for
from tests.fixtures.gateway_stack import gateway, gateway_settings
from tests.fixtures.prometheus_server import Prometheus, dashboard_exprs, deploy_config, prometheus_server, substitute
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm

METRICS_TOKEN = "prometheus-scrape-token-0123456789"
MODELS = ("alpha", "beta")


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(slurm_cluster, redis_server, tmp_path / "jobs", load_time_s=1.0) as (settings, client):
        settings.metrics = MetricsSettings(token=METRICS_TOKEN, cluster=slurm_cluster.cluster_name)
        yield settings, client


def spec(name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy(min_replicas=1, max_replicas=1),
    )


async def ready(client: aioredis.Redis, settings: Settings) -> list[InstanceRecord] | None:
    found = await records(client, settings, InstanceState.READY)
    return found if {r.model for r in found} == set(MODELS) else None


async def series(prom: Prometheus, expr: str, count: int) -> list[dict[str, Any]] | None:
    result = await prom.query(expr)
    return result if len(result) == count else None


async def test_prometheus_scrapes_gateway_launcher_pool_and_engines_found_through_sd(
    env: tuple[Settings, aioredis.Redis], tmp_path: Path, slurm_cluster: LocalCluster
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    for name in MODELS:
        await ModelStore(client, keys).put(spec(name))
    run = RunningLauncher(settings)
    try:
        async with gateway(settings.redis.url, gateway_settings(), keys=keys, root_settings=settings) as gw:
            engines = await wait_for(lambda: ready(client, settings), timeout_s=120, what="both models ready")
            token_file = tmp_path / "metrics.token"
            token_file.write_text(METRICS_TOKEN + "\n")
            config = deploy_config(
                gateway=gw.url.removeprefix("http://"),
                launcher=run.service.callback_url.removeprefix("http://"),
                token_file=token_file,
            )
            async with prometheus_server(config, tmp_path / "prometheus") as prom:
                try:
                    up = await wait_for(
                        lambda: series(prom, 'up{job="slurmless-engines"} == 1', len(MODELS)),
                        timeout_s=60,
                        what="both engine targets up",
                        poll_s=0.5,
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; Prometheus's targets: {await prom.targets()}") from None
                labels = sorted((r["metric"] for r in up), key=lambda m: m["model"])
                assert [m["model"] for m in labels] == list(MODELS)
                by_model = {r.model: r for r in engines}
                for metric in labels:
                    engine = by_model[metric["model"]]
                    assert metric["instance"] == engine.id
                    assert metric["job_id"] == engine.job_id
                    assert metric["node"] == (engine.node or engine.host)
                    assert metric["cluster"] == slurm_cluster.cluster_name
                # The engines' own metrics arrived through the gateway's proxy, with the SD labels on them.
                running = await wait_for(
                    lambda: series(prom, 'vllm:num_requests_running{job="slurmless-engines"}', len(MODELS)),
                    timeout_s=30,
                    what="engine metrics",
                    poll_s=0.5,
                )
                assert {r["metric"]["model"] for r in running} == set(MODELS)
                for job in ("slurmless-gateway", "slurmless-launcher", "slurmless-pool"):
                    await wait_for(
                        lambda job=job: series(prom, f'up{{job="{job}"}} == 1', 1),  # type: ignore[misc]
                        timeout_s=30,
                        what=f"{job} up",
                        poll_s=0.5,
                    )
                # Every dashboard expression runs against live data without an error (promtool only parses;
                # a vector matching mistake shows only here), and the engines dashboard has data.
                answered = {}
                for board, title, expr in dashboard_exprs():
                    answered[(board, title, expr)] = await prom.query(substitute(expr))
                engines_with_data = [k for k, v in answered.items() if k[0] == "engines.json" and v]
                assert len(engines_with_data) >= 3, answered
                leader = await prom.query('slurmless_launcher_leader{job="slurmless-launcher"}')
                assert [float(r["value"][1]) for r in leader] == [1.0]
                pool = await wait_for(
                    lambda: series(prom, "slurmless_pool_ready_replicas == 1", len(MODELS)),
                    timeout_s=30,
                    what="pool metrics",
                    poll_s=0.5,
                )
                assert {r["metric"]["model"] for r in pool} == set(MODELS)
                # The alert rules loaded and evaluate against live data without errors.
                rules = await wait_for(lambda: rules_evaluated(prom), timeout_s=30, what="rules evaluated", poll_s=0.5)
                assert {r["name"] for r in rules} >= {
                    "SlurmlessColdStartBudgetExceeded",
                    "SlurmlessModelBroken",
                    "SlurmlessQueueGrowing",
                    "SlurmlessSlurmUnavailable",
                }
                assert all(r["health"] == "ok" for r in rules), rules
                # A healthy stack raises none of them once every target was scraped (an alert on an absent
                # series may be pending for the evaluation before the first scrape).
                try:
                    await wait_for(lambda: quiet(prom), timeout_s=30, what="no alert pending or firing", poll_s=0.5)
                except AssertionError as exc:
                    active = [(r["name"], r["state"]) for r in await prom_rules(prom) if r["state"] != "inactive"]
                    raise AssertionError(f"{exc}: {active}") from None
    finally:
        await run.close()


async def prom_rules(prom: Prometheus) -> list[dict[str, Any]]:
    return [rule for group in await prom.rules() for rule in group["rules"]]


async def rules_evaluated(prom: Prometheus) -> list[dict[str, Any]] | None:
    """Every loaded rule, once each has been evaluated at least once."""
    rules = await prom_rules(prom)
    return rules if rules and all(r["lastEvaluation"].startswith("20") for r in rules) else None


async def quiet(prom: Prometheus) -> bool:
    return all(r["state"] == "inactive" for r in await prom_rules(prom))
