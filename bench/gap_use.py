"""How much of a backfill gap a batch uses: GPU-seconds of the gap used / GPU-seconds available.

Through the real local Slurm cluster (4 fake GPUs, backfill every second), as the launcher's gap test:
a "blocker" holds 2 GPUs for `--blocker-min` minutes (it exits 10 s early, so the gap ends on its
exit, not on Slurm's 30 s limit check) and a 4-GPU "research" job waits behind it. The 2 free GPUs
until the research job starts are the gap. Model `gap` (1 GPU, asks 60 minutes with
`--time-min=2`, so backfill may fit it into the gap) is cold; a batch of `--lines` chat lines is
created through the gateway's Batches API when the research job's start is planned. With
`launcher.batch_cold_starts` the launcher starts batch jobs for the backlog (`launcher.batch_scaling`);
the gateway's batch runner fills them. Nothing else asks for GPUs. `--preempt-grace-s` makes the
cluster's `preempt` partition preemptible and the launcher's batch jobs go there.

Measured, over the gap [batch created, research job started]:
- available = free GPUs x gap length;
- allocated = GPU-seconds of slurmless jobs running (Slurm `starting` -> end) inside the gap;
- serving = GPU-seconds of slurmless instances ready (engine loaded, taking lines) inside the gap;
- lines completed in the gap, and whether the research job started on time (its planned start).

    .venv/bin/python -m bench.gap_use [--blocker-min 3] [--lines 3000] [--inter-token-ms 20] [--preempt-grace-s 15]
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

import openai
import orjson
import redis.asyncio as aioredis

from bench.procs import python, start, wait_http, wait_line
from bench.report import table, write_json
from launcher.service import LauncherService
from slurm.cli_backend import SlurmCLI
from slurm.localcluster import LocalCluster
from slurm.localcluster_conf import PREEMPT_PARTITION
from slurm.types import JobState, SlurmJob
from slurmless.localredis import LocalRedis
from testing.launcher import cancel_all, local_settings, records
from warmpool.apikeys import ApiKeyStore
from warmpool.events import EventLog
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

CLUSTER_GPUS = 4
BLOCKER_GPUS = 2
TIME_MIN_MIN = 2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gap_use", description=__doc__.splitlines()[0])
    p.add_argument("--blocker-min", type=int, default=3, help="the blocker's time limit (it exits 10 s before)")
    p.add_argument("--lines", type=int, default=3000, help="batch lines (more than the gap can take)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per batch line")
    p.add_argument("--inter-token-ms", type=float, default=20.0, help="the engine simulator's pacing")
    p.add_argument("--load-time-s", type=float, default=5.0, help="the engine simulator's model load time")
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument(
        "--preempt-grace-s",
        type=int,
        default=None,
        help="make the cluster's `preempt` partition preemptible (the research job's cancels its jobs after this "
        "grace) and tell the launcher: batch jobs go there",
    )
    return p.parse_args()


def batch_input(lines: int, max_tokens: int) -> bytes:
    rows = (
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gap",
                "messages": [{"role": "user", "content": f"label abstract {i}"}],
                "max_tokens": max_tokens,
                "ignore_eos": True,
            },
        }
        for i in range(lines)
    )
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def overlap_s(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def gpu_seconds(recs: list[InstanceRecord], since: InstanceState, t0: float, t1: float, gpus: int) -> float:
    """GPU-seconds of instances from their `since` stamp to their end (or now) inside [t0, t1]."""
    total = 0.0
    for r in recs:
        begin = r.timestamps.get(since.value)
        if begin is None:
            continue
        ends = [r.timestamps[s.value] for s in (InstanceState.DRAINING, InstanceState.GONE, InstanceState.FAILED)
                if s.value in r.timestamps]  # fmt: skip
        end = min(ends) if ends else t1
        total += gpus * overlap_s(begin, end, t0, t1)
    return total


async def poll(check: Any, timeout_s: float, what: str, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await check()
        if found is not None:
            return found
        await asyncio.sleep(every_s)
    raise TimeoutError(f"timed out waiting for {what}")


async def run(args: argparse.Namespace, cluster: LocalCluster, redis_url: str, workdir: Path) -> dict[str, Any]:
    settings = local_settings(
        redis_url=redis_url,
        slurm_conf=cluster.conf_path,
        output_dir=workdir / "jobs",
        load_time_s=args.load_time_s,
        tick_s=2.0,
        health_poll_s=0.5,
        batch_cold_starts=True,
        preemptible_partitions=[PREEMPT_PARTITION] if args.preempt_grace_s is not None else [],
    )
    settings.launcher.engine_command = [
        *settings.launcher.engine_command, "--sim-inter-token-ms", str(args.inter_token_ms)
    ]  # fmt: skip
    keys = Keys(settings.redis.key_prefix)
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    research = SlurmCLI(env={"SLURM_CONF": str(cluster.conf_path)}, job_name_prefix="research-")
    service = LauncherService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    gw = None
    job_ids: list[int] = []

    def sbatch(name: str, gpus: int, minutes: int, sleep_s: float) -> int:
        out = cluster.run(
            ["sbatch", "--parsable", f"--job-name=research-{name}", f"--gres=gpu:{gpus}", f"--time={minutes}",
             "--cpus-per-task=1", "--mem=64M", f"--output={workdir}/{name}-%j.out", "--wrap", f"sleep {sleep_s:.0f}"]
        )  # fmt: skip
        job_id = int(out.strip().split(";")[0])
        job_ids.append(job_id)
        return job_id

    async def job_in(job_id: int, state: JobState, planned: bool = False) -> SlurmJob | None:
        job = await research.job(job_id)
        if job is None or job.state is not state or (planned and job.start_time is None):
            return None
        return job

    try:
        key, _ = await ApiKeyStore(redis, keys).create(tenant="bench", now_s=time.time())
        spec = ModelSpec(
            name="gap",
            source="org/sim",
            resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60, time_min_min=TIME_MIN_MIN),
            policy=Policy(max_replicas=args.max_replicas),
        )
        await ModelStore(redis, keys).put(spec)
        gw = start(
            "gateway",
            [python(), "-m", "queue_gateway", "--host", "127.0.0.1", "--port", "0"],
            log_dir=workdir,
            env={
                "SLURMLESS_REDIS__URL": redis_url,
                "SLURMLESS_REDIS__KEY_PREFIX": settings.redis.key_prefix,
                "SLURMLESS_GATEWAY__BATCH__FILES_DIR": str(workdir / "files"),
                "SLURMLESS_GATEWAY__BATCH__POLL_S": "0.5",
            },
            unset_prefixes=("SLURMLESS_",),
            capture_stdout=True,
            cwd=workdir,
        )
        url = await asyncio.to_thread(wait_line, gw, "queue_gateway listening on ", 60)
        await asyncio.to_thread(wait_http, gw, url + "/v1/models", 60, {"Authorization": f"Bearer {key}"})

        blocker_sleep_s = 60 * args.blocker_min - 10
        blocker_id = sbatch("blocker", BLOCKER_GPUS, args.blocker_min, blocker_sleep_s)
        await poll(lambda: job_in(blocker_id, JobState.RUNNING), 60, "the blocker to run")
        big_id = sbatch("big", CLUSTER_GPUS, 2, 5)
        big: SlurmJob = await poll(lambda: job_in(big_id, JobState.PENDING, planned=True), 60, "a planned start")
        assert big.start_time is not None
        planned_s = big.start_time.timestamp()

        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
        f = await client.files.create(file=("gap.jsonl", batch_input(args.lines, args.max_tokens)), purpose="batch")
        t0 = time.time()
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")  # fmt: skip
        print(f"batch created; the research job is planned in {planned_s - t0:.0f} s", flush=True)
        started: SlurmJob = await poll(
            lambda: job_in(big_id, JobState.RUNNING), 60 * args.blocker_min + 120, "the research job", every_s=0.5
        )
        t1 = time.time()
        done_in_gap = (await client.batches.retrieve(batch.id)).request_counts
        assert started.start_time is not None
        recs = [r for r in await records(redis, settings) if r.model == "gap"]
        free = CLUSTER_GPUS - BLOCKER_GPUS
        available = free * (t1 - t0)
        allocated = gpu_seconds(recs, InstanceState.STARTING, t0, t1, spec.resources.gpus)
        serving = gpu_seconds(recs, InstanceState.READY, t0, t1, spec.resources.gpus)
        await client.batches.cancel(batch.id)
        return {
            "gap_s": t1 - t0,
            "free_gpus": free,
            "available_gpu_s": available,
            "allocated_gpu_s": allocated,
            "serving_gpu_s": serving,
            "allocated_ratio": allocated / available,
            "serving_ratio": serving / available,
            "lines_completed_in_gap": done_in_gap.completed if done_in_gap is not None else None,
            "instances": len(recs),
            "research_start_late_s": started.start_time.timestamp() - planned_s,
            "instance_limits_min": [round((r.time_limit_s or 0) / 60, 1) for r in recs],
            "timeline_s": [
                {s.value: round(r.timestamps[s.value] - t0, 1) for s in InstanceState if s.value in r.timestamps}
                | {"reason": r.reason}
                for r in sorted(recs, key=lambda r: r.created_s)
            ],
            "events": [
                f"{e.at_s - t0:+.0f}s {e.kind} {e.instance} {e.detail}"
                for e in reversed(await EventLog(redis, keys).recent(count=200, model="gap"))
            ],
        }
    finally:
        if gw is not None:
            gw.stop()
        stop.set()
        await task
        for job_id in job_ids:
            await research.cancel(job_id)
        await cancel_all(settings)
        await redis.aclose()


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-gap-"))
    cluster = LocalCluster(gpus=CLUSTER_GPUS, backfill_interval_s=1, preempt_grace_s=args.preempt_grace_s)
    cluster.start()
    server = LocalRedis()
    server.start()
    try:
        import uvloop

        res = uvloop.run(run(args, cluster, server.url, workdir))
    finally:
        server.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [
        ["gap (batch created -> research job started)", f"{res['gap_s']:.0f} s x {res['free_gpus']} GPUs"],
        ["GPU-seconds available", f"{res['available_gpu_s']:.0f}"],
        ["allocated to slurmless jobs (running)", f"{res['allocated_gpu_s']:.0f} ({res['allocated_ratio']:.0%})"],
        ["serving batch lines (instance ready)", f"{res['serving_gpu_s']:.0f} ({res['serving_ratio']:.0%})"],
        ["batch lines completed in the gap", res["lines_completed_in_gap"]],
        ["slurmless instances / their limits (min)", f"{res['instances']} / {res['instance_limits_min']}"],
        ["research job start vs planned", f"{res['research_start_late_s']:+.0f} s"],
    ]
    text = table(["gap use", "value"], rows)
    for i, stamps in enumerate(res["timeline_s"]):
        print(f"instance {i}: " + ", ".join(f"{k} {v:+.0f}s" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in stamps.items()))  # fmt: skip
    print("\n" + text)
    path = write_json("gap_use", {"config": vars(args), "result": res, "tables": text})
    print(f"\nJSON: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
