"""The admin CLI end to end: typer's CliRunner against a real uvicorn server and a real Redis."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
from rich.console import Console
from typer.testing import CliRunner

from slurmless import cli_admin
from slurmless.cli import app
from slurmless.localredis import LocalRedis
from tests.integration.test_admin_api import (
    ADMIN_TOKEN,
    LECTURES_ICS,
    AdminServer,
    Clock,
    make_model_roots,
    make_settings,
)
from warmpool.events import EventLog
from warmpool.keys import Keys
from warmpool.phase import ModelPhase, Phase

runner = CliRunner()


@pytest.fixture(scope="module")
def server(redis_server: LocalRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminServer]:
    root = make_model_roots(tmp_path_factory.mktemp("cli"))
    srv = AdminServer(make_settings(redis_server.url, root), Clock())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def db(server: AdminServer, redis_server: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def root(server: AdminServer) -> Path:
    return server.settings.model_roots[0]


def stored_spec(db: redis.Redis, name: str) -> dict[str, Any]:
    raw = cast(bytes | None, db.hget(Keys().models, name))
    assert raw is not None
    spec: dict[str, Any] = json.loads(raw)
    return spec


def cli(server: AdminServer, *args: str, token: str = ADMIN_TOKEN) -> tuple[int, str, str]:
    env = {"SLURMLESS_URL": server.url, "SLURMLESS_ADMIN_TOKEN": token, "COLUMNS": "200"}
    result = runner.invoke(app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def ok(server: AdminServer, *args: str, token: str = ADMIN_TOKEN) -> str:
    code, out, err = cli(server, *args, token=token)
    assert code == 0, (args, out, err)
    return out


def refused(server: AdminServer, *args: str, token: str = ADMIN_TOKEN) -> str:
    code, out, err = cli(server, *args, token=token)
    assert code == 1, (args, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slurmless: "), err
    assert "Traceback" not in out + err
    return lines[0]


def test_tenants_and_keys(server: AdminServer, db: redis.Redis) -> None:
    assert "created tenant physics" in ok(server, "tenants", "create", "physics", "--max-models", "1")
    assert "exists already" in refused(server, "tenants", "create", "physics")
    out = ok(server, "tenants", "set-quota", "physics", "--max-concurrent", "20")
    assert "max concurrent 20, max models 1" in out
    assert "idle budget 4.5 GPU-h/day" in ok(
        server, "tenants", "set-quota", "physics", "--idle-gpu-hours-per-day", "4.5"
    )
    before = db.hget(Keys().tenants, "physics")
    for bad in ("0", "-1", "1e9"):
        assert "--idle-gpu-hours-per-day" in refused(
            server, "tenants", "set-quota", "physics", "--idle-gpu-hours-per-day", bad
        )
    assert db.hget(Keys().tenants, "physics") == before
    assert "idle budget the site's" in ok(server, "tenants", "set-quota", "physics", "--site-idle-budget")
    listed = json.loads(ok(server, "tenants", "list", "--json"))
    assert [(t["name"], t["max_concurrent_requests"], t["max_models"]) for t in listed] == [("physics", 20, 1)]
    assert "physics" in ok(server, "tenants", "list")

    code, out, err = cli(server, "keys", "create", "--tenant", "physics", "--can-register", "--rpm", "60")
    assert code == 0 and "not shown again" in err
    key = out.strip()
    assert key.startswith("sk-sl-") and key.encode() not in b"".join(cast(list[bytes], db.hvals(Keys().api_keys)))
    table = ok(server, "keys", "list")
    key_id = key.split("-")[2]
    assert key_id in table and "register" in table and key not in table
    assert "revoked" in ok(server, "keys", "revoke", key_id)
    assert json.loads(ok(server, "keys", "list", "--json"))[0]["revoked"] is True
    assert refused(server, "keys", "revoke", "nokey") == "slurmless: key 'nokey' does not exist"
    assert "create it first" in refused(server, "keys", "create", "--tenant", "nobody")


def test_models_lifecycle(server: AdminServer, db: redis.Redis, root: Path) -> None:
    ok(server, "tenants", "create", "physics")
    out = ok(
        server,
        "models",
        "register",
        "llama-8b",
        "--source",
        f"{root}/llama-8b",
        "--alias",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--engine-arg",
        "max_model_len=8192",
        "--engine-arg",
        "enforce-eager",
        "--partition",
        "gpu",
        "--qos",
        "normal",
        "--time-limit-min",
        "120",
        "--time-min-min",
        "30",
        "--max-replicas",
        "2",
        "--keepalive-min-s",
        "300",
        "--cold-wait-budget-s",
        "600",
    )
    assert "registered llama-8b (1 GPU(s) x 1 node(s))" in out and "estimated ~8.0B parameters" in out
    stored = stored_spec(db, "llama-8b")
    assert stored["engine_args"] == {"--max-model-len": 8192, "--enforce-eager": True}
    assert stored["resources"]["partitions"] == ["gpu"] and stored["resources"]["time_min_min"] == 30
    assert stored["policy"]["keepalive_min_s"] == 300 and stored["policy"]["cold_wait_budget_s"] == 600

    ok(server, "models", "register", "tutor", "--source", f"{root}/tutor", "--lora-of", "llama-8b")
    listed = ok(server, "models", "list")
    assert "llama-8b" in listed and "lora of llama-8b" in listed
    shown = ok(server, "models", "show", "llama-8b")
    assert "adapters" in shown and "tutor" in shown and "cold" in shown

    assert "updated llama-8b" in ok(
        server,
        "models",
        "update",
        "llama-8b",
        "--gpus",
        "2",
        "--drop-engine-arg",
        "enforce-eager",
        "--private",
        "--tenant",
        "physics",
    )
    stored = stored_spec(db, "llama-8b")
    assert stored["resources"]["gpus"] == 2 and stored["engine_args"] == {"--max-model-len": 8192}
    assert stored["visibility"] == {"public": False, "tenants": ["physics"]}
    assert stored["policy"]["max_replicas"] == 2
    assert "nothing to update" in refused(server, "models", "update", "llama-8b")

    assert "is the base of adapter(s) tutor" in refused(server, "models", "remove", "llama-8b")
    ok(server, "models", "remove", "tutor")
    ok(server, "models", "remove", "llama-8b")
    assert db.hlen(Keys().models) == 0
    assert refused(server, "models", "show", "llama-8b") == "slurmless: model 'llama-8b' does not exist"


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["bad;name", "--source", "{root}/llama-8b"], "DNS label"),
        (["ok", "--source", "{root}/../outside"], "'..'"),
        (["ok", "--source", "{root}/escape"], "symlink escape"),
        (["ok", "--source", "/etc/passwd"], "outside the model roots"),
        (["ok", "--source", "{root}/llama-8b", "--engine-arg", "trust-remote-code=true"], "not in the allow-list"),
        (["ok", "--source", "{root}/llama-8b", "--engine-arg", "dtype=$(reboot)"], "expected one of"),
        (["ok", "--source", "{root}/llama-8b", "--engine-arg", "=1"], "expected KEY=VALUE"),
        (["ok", "--source", "{root}/llama-8b", "--gpus", "16"], "GPUs per node"),
        (["ok", "--source", "{root}/llama-405b"], "offers at most 4"),
        (["ok", "--source", "{root}/llama-8b", "--partition", "x;y"], "invalid partition"),
        (["ok"], "needs --source"),
    ],
)
def test_hostile_registrations(server: AdminServer, db: redis.Redis, root: Path, args: list[str], why: str) -> None:
    line = refused(server, "models", "register", *(a.replace("{root}", str(root)) for a in args))
    assert why in line, line
    assert db.dbsize() == 0


def test_errors_are_one_line(server: AdminServer, db: redis.Redis) -> None:
    assert "invalid or revoked token" in refused(server, "models", "list", token="sk-sl-wrong-key")
    assert "missing bearer token" in refused(server, "status", token="")
    code, _, err = cli(server, "models", "list", "--url", "http://127.0.0.1:1")
    assert code == 1 and err.startswith("slurmless: cannot reach http://127.0.0.1:1/admin") and "Traceback" not in err


def test_self_service_from_the_cli(server: AdminServer, db: redis.Redis, root: Path) -> None:
    ok(server, "tenants", "create", "physics", "--max-models", "1")
    ok(server, "tenants", "create", "chem")
    physics = ok(server, "keys", "create", "--tenant", "physics", "--can-register").strip()
    chem = ok(server, "keys", "create", "--tenant", "chem", "--can-register").strip()
    ok(server, "models", "register", "phys-llama", "--source", f"{root}/llama-8b", token=physics)
    assert "quota exceeded" in refused(
        server, "models", "register", "phys-two", "--source", f"{root}/llama-8b", token=physics
    )
    assert "phys-llama" not in ok(server, "models", "list", token=chem)
    assert "does not exist" in refused(server, "models", "show", "phys-llama", token=chem)
    assert "does not exist" in refused(server, "models", "warm", "phys-llama", token=chem)
    assert "needs an admin key" in refused(server, "keys", "list", token=physics)
    assert "private: physics" in ok(server, "models", "list", token=physics)


def test_schedules(server: AdminServer, db: redis.Redis, root: Path, tmp_path: Path) -> None:
    ok(server, "models", "register", "llama-8b", "--source", f"{root}/llama-8b", "--max-replicas", "2")
    out = ok(
        server,
        "schedules",
        "add",
        "llama-8b",
        "--cron",
        "0 8 * * 1-5",
        "--duration-s",
        "3600",
        "--tz",
        "Europe/Berlin",
        "--replicas",
        "2",
    )
    assert "cron '0 8 * * 1-5' for 3600s" in out
    feed = tmp_path / "lectures.ics"
    feed.write_text(LECTURES_ICS)
    assert "ics feed with 1 event(s)" in ok(server, "schedules", "add", "llama-8b", "--ics", str(feed))
    data = json.loads(ok(server, "schedules", "list", "llama-8b", "--json"))
    assert sorted(s["kind"] for s in data) == ["cron", "ics"]
    assert "Europe/Berlin" in ok(server, "schedules", "list")
    assert "exactly one of --cron or --ics" in refused(server, "schedules", "add", "llama-8b")
    assert "needs --duration-s" in refused(server, "schedules", "add", "llama-8b", "--cron", "0 8 * * *")
    assert "invalid cron expression" in refused(
        server, "schedules", "add", "llama-8b", "--cron", "0 8 * *; id", "--duration-s", "60"
    )
    assert "cannot read" in refused(server, "schedules", "add", "llama-8b", "--ics", str(tmp_path / "missing.ics"))
    cron_id = next(s["id"] for s in data if s["kind"] == "cron")
    assert "removed schedule" in ok(server, "schedules", "remove", "llama-8b", cron_id)
    assert db.hlen(Keys().schedules("llama-8b")) == 1


def test_status_and_events(server: AdminServer, db: redis.Redis, root: Path) -> None:
    keys = Keys()
    ok(server, "models", "register", "llama-8b", "--source", f"{root}/llama-8b")
    db.set(keys.phase("llama-8b"), ModelPhase(phase=Phase.PENDING, slurm_reason="Priority").model_dump_json())
    db.hset(keys.desired, "llama-8b", json.dumps({"replicas": 1}))
    db.zadd(keys.queue("llama-8b"), {"t1": 1, "t2": 2, "t3": 3})
    db.hset(
        keys.model_stats("llama-8b"),
        mapping={"last_cold_start_s": "95", "last_cold_start_at_s": str(server.clock.now_s - 180)},
    )
    rows = json.loads(ok(server, "status", "--json"))
    assert [
        (r["model"], r["phase"], r["desired"], r["actual"], r["queue_depth"], r["last_cold_start_s"]) for r in rows
    ] == [("llama-8b", "pending", 1, 0, 3, 95.0)]
    table = ok(server, "status")
    assert "pending, reason Priority, ready: unknown" in table and "1/0" in table
    assert "95s, 3m ago" in table, "the last cold start: how long it took and when"
    events = ok(server, "events", "--model", "llama-8b")
    assert "model_registered" in events


def test_warm_wait_follows_phases_until_ready(server: AdminServer, db: redis.Redis, root: Path) -> None:
    """`models warm --wait` against a stand-in for the launcher: it reacts to the demand signal and
    moves the phase on each time the CLI has looked, so every phase is seen without sleeps."""
    keys = Keys()
    ok(server, "models", "register", "llama-8b", "--source", f"{root}/llama-8b")
    path = "/admin/v1/models/llama-8b"
    pubsub = db.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(keys.demand_channel)
    assert pubsub.get_message(timeout=5) is not None  # the subscribe confirmation
    failures: list[BaseException] = []

    def launcher_stand_in() -> None:
        try:
            message = None
            while message is None:
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=30)
            assert message["data"] == b"llama-8b"
            seen = server.counter.counts.get(path, 0)
            for phase in (
                ModelPhase(phase=Phase.PENDING, slurm_reason="Resources", est_start_s=2e9, coming_instances=1),
                ModelPhase(phase=Phase.LOADING, coming_instances=1),
                ModelPhase(phase=Phase.READY, ready_instances=1),
            ):
                db.set(keys.phase("llama-8b"), phase.model_dump_json())
                seen = server.counter.wait_beyond(path, seen)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=launcher_stand_in)
    thread.start()
    try:
        out = ok(server, "models", "warm", "llama-8b", "--wait", "--poll-s", "0.02", "--duration-s", "600")
    finally:
        thread.join(30)
        pubsub.close()
    assert not failures, failures
    assert "warming llama-8b: 1 replica(s) for 10m" in out
    assert "pending -> loading -> ready" in out
    assert "done pending in" in out and "done loading in" in out, "each phase is shown as it ends"
    assert "llama-8b is ready after" in out
    assert json.loads(cast(bytes, db.get(keys.warm("llama-8b"))))["replicas"] == 1


def test_warm_wait_reports_failure(server: AdminServer, db: redis.Redis, root: Path) -> None:
    ok(server, "models", "register", "llama-8b", "--source", f"{root}/llama-8b")
    db.set(Keys().phase("llama-8b"), ModelPhase(phase=Phase.FAILED, detail="engine exited 1").model_dump_json())
    line = refused(server, "models", "warm", "llama-8b", "--wait", "--poll-s", "0.01")
    assert line == "slurmless: llama-8b failed to start: engine exited 1"


def test_events_fit_an_80_column_terminal_one_line_each(
    server: AdminServer, db: redis.Redis, root: Path, redis_server: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("llama-8b", "mistral-7b-instruct-v0-3"):
        ok(server, "models", "register", name, "--source", f"{root}/llama-8b")
    asyncio.run(_decision_events(redis_server.url))
    narrow = Console(width=80, file=io.StringIO(), color_system=None)
    monkeypatch.setattr(cli_admin, "console", narrow)
    ok(server, "events")
    lines = cast(io.StringIO, narrow.file).getvalue().splitlines()
    assert len(lines) == 4, lines  # two registrations, two decisions: one line each
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[2].split()[2:5] == ["scale.decision", "llama-8b", "why=reactive=1"]
    assert lines[3].endswith("\u2026"), "a long line is cut at the terminal's width"


async def _decision_events(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        events = EventLog(client)
        for model in ("llama-8b", "mistral-7b-instruct-v0-3"):
            await events.record(
                "scale.decision",
                now_s=time.time(),
                model=model,
                replicas=1,
                previous=0,
                why="reactive=1 (cold: 1 waiting, oldest 0s); idle-to-zero=1 (1 waiting, 0 in flight: never drain)",
                reasons=["reactive=1 (cold: 1 waiting)", "idle-to-zero=1", "forecast=0 (no demand history yet)"],
            )
    finally:
        await client.aclose()


def test_status_watch_refreshes(
    server: AdminServer, db: redis.Redis, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys()
    ok(server, "models", "register", "llama-8b", "--source", f"{root}/llama-8b")
    db.set(keys.phase("llama-8b"), ModelPhase(phase=Phase.PENDING, slurm_reason="Priority").model_dump_json())
    terminal = Console(width=100, file=io.StringIO(), force_terminal=True, color_system=None)
    monkeypatch.setattr(cli_admin, "console", terminal)
    path = "/admin/v1/status"
    failures: list[BaseException] = []

    def launcher_stand_in() -> None:
        try:
            seen = server.counter.wait_beyond(path, server.counter.counts.get(path, 0))
            db.set(keys.phase("llama-8b"), ModelPhase(phase=Phase.READY, ready_instances=1).model_dump_json())
            server.counter.wait_beyond(path, seen)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=launcher_stand_in)
    thread.start()
    try:
        ok(server, "status", "--watch", "--interval-s", "0.05", "--count", "3")
    finally:
        thread.join(30)
    assert not failures, failures
    screen = cast(io.StringIO, terminal.file).getvalue()
    assert "pending, reason Priority" in screen and "ready" in screen.split("pending, reason Priority", 1)[1]
    assert screen.count("every 0.05s, Ctrl-C to stop") >= 3


def test_external_route_from_the_cli(server: AdminServer, db: redis.Redis) -> None:
    out = ok(server, "models", "register", "ext", "--external-url", "https://api.example.org/v1",
             "--external-model", "gpt-x")  # fmt: skip
    assert "external route to https://api.example.org/v1" in out
    assert stored_spec(db, "ext")["external"]["model"] == "gpt-x"
    assert "external: https://api.example.org/v1" in ok(server, "models", "list")
    line = refused(server, "models", "register", "ext2", "--external-url", "https://api.example.org/v1",
                   "--external-key-name", "prov")  # fmt: skip
    assert "keys_dir" in line
    assert "--source" in refused(server, "models", "register", "ext3")
