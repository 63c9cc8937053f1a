"""Cold start, phase by phase: one streaming request for a model with no instance, through real Slurm.

    .venv/bin/python -m bench.cold_start                 # 3 rounds, engine simulator, no load time
    .venv/bin/python -m bench.cold_start --rounds 5 --load-time-s 2

Starts a throwaway local Slurm cluster (munged + slurmctld + slurmd, fake GPUs), Redis, the
launcher (in this process, as its integration tests run it) and one gateway process. Each round
registers a fresh model and sends one streaming chat completion through the gateway; the
launcher submits a job whose script starts the engine simulator and calls back. The phases come
from the instance record's per-state timestamps (wall clock) and the client's own clock:

  request -> sbatch      client sent -> record `requested` (gateway + demand signal + launcher)
                         + `requested` -> `pending` (the sbatch call itself)
  sbatch -> running      `pending` -> `starting` (Slurm schedules and launches the job)
  running -> registered  `starting` -> `loading` (job script: free port, engine spawn, callback)
  registered -> ready    `loading` -> `ready` (engine load + the launcher's readiness probe)
  ready -> first byte    `ready` -> first data event at the client (grant, pub/sub, proxy)

The part slurmless controls: its reaction to the request (request -> requested), the readiness
probe's delay beyond the engine's load time, and ready -> first byte. Table on stdout, JSON in
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.procs import python, start, wait_http, wait_line
from bench.rawclient import Connection, build_request
from bench.report import median, table, write_json
from launcher.service import LauncherService
from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import cancel_all, local_settings
from warmpool.apikeys import ApiKeyStore
from warmpool.instance_store import InstanceStore
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

PHASES = [
    ("request -> requested", "slurmless"),
    ("requested -> sbatch done", "slurm (sbatch call)"),
    ("sbatch -> running", "slurm"),
    ("running -> registered", "job script + engine spawn"),
    ("registered -> ready", "engine load + slurmless probe"),
    ("ready -> first byte", "slurmless"),
]


def slurm_calls(service: LauncherService) -> dict[str, tuple[float, float]]:
    """(count, total seconds) of each Slurm command the launcher ran so far, from its metrics."""
    out: dict[str, tuple[float, float]] = {}
    for metric in service.metrics.registry.collect():
        if metric.name != "slurmless_slurm_command_seconds":
            continue
        for sample in metric.samples:
            command = sample.labels.get("command", "?")
            count, total = out.get(command, (0.0, 0.0))
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            out[command] = (count, total)
    return out


async def one_round(
    settings: Settings,
    service: LauncherService,
    redis: aioredis.Redis,
    gw: tuple[str, int],
    key: str,
    model: str,
    load_time_s: float,
) -> dict[str, Any]:
    keys = Keys(settings.redis.key_prefix)
    spec = ModelSpec(
        name=model,
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=30),
        policy=Policy.model_validate({"max_replicas": 1}),
    )
    await ModelStore(redis, keys).put(spec)
    body: dict[str, object] = {
        "model": spec.client_name,
        "messages": [{"role": "user", "content": "cold"}],
        "max_tokens": 8,
        "stream": True,
    }
    request = build_request(gw[0], gw[1], "/v1/chat/completions", body, key)
    conn = Connection(gw[0], gw[1], timeout_s=300)
    # Convert the client's perf_counter readings to the wall clock the launcher's timestamps use.
    offset_s = time.time() - time.perf_counter()
    calls_before = slurm_calls(service)
    result = await conn.stream(request)
    await conn.close()
    if result.error is not None or not result.event_times_s:
        raise RuntimeError(f"cold request failed: {result.error}")
    sent_s = result.started_s + offset_s
    first_s = result.event_times_s[0] + offset_s
    records = await InstanceStore(redis, keys).all(model)
    ts = records[0].timestamps
    # The launcher stamps `requested` and `pending` with one clock reading: the sbatch call's own
    # duration comes from its metrics instead.
    calls = slurm_calls(service)
    sbatch_s = calls.get("sbatch", (0.0, 0.0))[1] - calls_before.get("sbatch", (0.0, 0.0))[1]
    job_id = int(records[0].job_id or 0)
    job = next((j for j in await service.slurm.jobs() if j.job_id == job_id), None)
    phases = {
        "request -> requested": ts["requested"] - sent_s,
        "requested -> sbatch done": sbatch_s,
        "sbatch -> running": ts["starting"] - ts["pending"] - sbatch_s,
        "running -> registered": ts["loading"] - ts["starting"],
        "registered -> ready": ts["ready"] - ts["loading"],
        "ready -> first byte": first_s - ts["ready"],
    }
    controlled = (
        phases["request -> requested"]
        + max(0.0, phases["registered -> ready"] - load_time_s)
        + phases["ready -> first byte"]
    )
    return {
        "model": model,
        "total_s": first_s - sent_s,
        "phases_s": phases,
        "slurmless_controlled_s": controlled,
        "keepalive_comments": len(result.comment_times_s),
        "timestamps": ts,
        "slurm_job_start_time": job.start_time.timestamp() if job and job.start_time else None,
        "slurm_calls_during_round": {k: v[0] - calls_before.get(k, (0.0, 0.0))[0] for k, v in calls.items()},
    }


async def run(args: argparse.Namespace, cluster: LocalCluster, redis_url: str, workdir: Path) -> list[dict[str, Any]]:
    settings = local_settings(
        redis_url=redis_url,
        slurm_conf=cluster.conf_path,
        output_dir=workdir / "jobs",
        load_time_s=args.load_time_s,
        tick_s=args.tick_s,
        health_poll_s=args.health_poll_s,
    )
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    service = LauncherService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    gw = None
    try:
        key, _ = await ApiKeyStore(redis, Keys(settings.redis.key_prefix)).create(tenant="bench", now_s=time.time())
        gw = start(
            "gateway",
            [python(), "-m", "queue_gateway", "--host", "127.0.0.1", "--port", "0"],
            log_dir=workdir,
            env={
                "SLURMLESS_REDIS__URL": redis_url,
                "SLURMLESS_REDIS__KEY_PREFIX": settings.redis.key_prefix,
                "SLURMLESS_GATEWAY__PROGRESS_INTERVAL_S": "1",
            },
            unset_prefixes=("SLURMLESS_",),
            capture_stdout=True,
            cwd=workdir,
        )
        url = await asyncio.to_thread(wait_line, gw, "queue_gateway listening on ", 60)
        await asyncio.to_thread(wait_http, gw, url + "/v1/models", 60, {"Authorization": f"Bearer {key}"})
        host, port = url.removeprefix("http://").rsplit(":", 1)
        if not service.is_leader:
            await asyncio.wait_for(service.leader_changed.wait(), timeout=30)
        rounds = []
        for i in range(args.rounds):
            res = await one_round(settings, service, redis, (host, int(port)), key, f"cold{i}", args.load_time_s)
            print(
                f"  round {i}: total {res['total_s']:.2f}s, slurmless {res['slurmless_controlled_s'] * 1000:.0f} ms",
                flush=True,
            )
            rounds.append(res)
        return rounds
    finally:
        if gw is not None:
            gw.stop()
        stop.set()
        await task
        await cancel_all(settings)
        await redis.aclose()


def render(rounds: list[dict[str, Any]], load_time_s: float) -> str:
    rows: list[list[object]] = []
    for name, owner in PHASES:
        vals = [r["phases_s"][name] * 1000 for r in rounds]
        rows.append([name, owner, median(vals), min(vals), max(vals)])
    totals = [r["total_s"] * 1000 for r in rounds]
    ctrl = [r["slurmless_controlled_s"] * 1000 for r in rounds]
    rows.append(["total (request -> first byte)", "", median(totals), min(totals), max(totals)])
    rows.append(["slurmless-controlled share", "target <= 500 ms", median(ctrl), min(ctrl), max(ctrl)])
    title = (
        f"Cold start through real Slurm, engine simulator (load time {load_time_s} s), {len(rounds)} rounds, "
        "median/min/max. `starting` and `registered` are stamped together when the job's callback arrives, "
        "so the job script's share shows inside `sbatch -> running`."
    )
    return title + "\n\n" + table(["phase", "owner", "median ms", "min ms", "max ms"], rows)


def main() -> None:
    """Start the cluster, Redis, launcher and gateway; run cold requests; print the table, write JSON."""
    p = argparse.ArgumentParser(
        prog="python -m bench.cold_start", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--load-time-s", type=float, default=0.0, help="the simulator's model load time")
    p.add_argument("--tick-s", type=float, default=5.0, help="launcher reconciliation period")
    p.add_argument(
        "--health-poll-s", type=float, default=1.0, help="launcher readiness probe period (production default 1.0)"
    )
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    cluster = LocalCluster(gpus=4)
    cluster.start()
    server = LocalRedis()
    server.start()
    try:
        import uvloop

        rounds = uvloop.run(run(args, cluster, server.url, workdir))
    finally:
        server.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    text = render(rounds, args.load_time_s)
    print("\n" + text)
    path = write_json("cold_start", {"config": vars(args), "rounds": rounds, "tables": text})
    print(f"\nJSON: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
