"""The launcher's tick at scale: wall time per tick and Slurm calls, with many models and instances.

    .venv/bin/python -m bench.launcher_tick                       # 100/20, then 1,000 models / 200 instances
    .venv/bin/python -m bench.launcher_tick --models 1000 --instances 200 --ticks 30 --no-small
    .venv/bin/python -m bench.launcher_tick --models 10000 --no-small --baseline main   # ratios against main

Each size gets its own real Redis (`LocalRedis`) and real local Slurm cluster (`LocalCluster`,
declared with enough CPUs and memory for every job at once: 1 CPU, 256 MB and no GPU per job).
M `ModelSpec`s are registered; the first I have `min_replicas=1`, so the launcher's own first
tick submits one job each (`sbatch`, as in production). Every job runs the real job script
(callbacks to the launcher, signal traps) around a stub engine: a stdlib HTTP server answering
`/health`, `/v1/models` (with its served name) and `/metrics`, so the launcher's readiness and
health probes are real HTTP round trips at a fraction of an engine simulator's memory. The jobs
register through the launcher's real callback app (uvicorn in this process); ticks run until
every instance is `ready`.

Then N ticks are measured back to back (`Launcher.tick(now_s=...)`); before each, `--busy` models
with an instance get one request (admitted on their instance and released, as a gateway does), so
their demand, last request and load change and the tick has to look at them again. With
`--baseline REF`, REF's launcher/controller.py (run against this tree's other modules) ticks in
turn with this tree's, on the same cluster and Redis, and the table gives the ratios. Per tick:
wall time, Slurm commands by name (`SlurmCLI.calls`), Redis commands per tick
(`INFO stats` total_commands_processed, less the INFO calls themselves; commands run inside the
snapshot's Lua count one by one), HTTP probes per tick, and the wall time of each step of the tick
(`TickReport.steps_ms`). Then the health check of every ready instance (`Launcher.check_ready`, its
own loop in production) is measured apart: wall time, this process's CPU time, probes. Slurm calls
per minute are given at the default `tick_s`. `--profile` prints cProfile's top functions over the
measured ticks. Results: a table on stdout, JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvicorn

from bench.report import median, percentile, table, write_json
from launcher.callbacks import callback_app
from launcher.controller import Launcher
from launcher.health import Probe, Prober
from launcher.settings import LauncherSettings
from slurm.cli_backend import SlurmCLI
from slurm.localcluster import LocalCluster
from slurm.parse import parse_squeue
from slurmless.localredis import LocalRedis
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceState
from warmpool.models import ModelStore
from warmpool.routing import AdmitOutcome, Routing
from warmpool.specs import ModelSpec, Policy, Resources

JOB_MEM_MB = 256
DEFAULT_TICK_S = LauncherSettings().tick_s

# A stand-in engine: stdlib only (started with `python -S`), ~10 MB, answers what the launcher asks.
STUB_ENGINE = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
models = json.dumps({"object": "list", "data": [{"id": opt["--served-model-name"], "object": "model"}]}).encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = {"/health": b"", "/v1/models": models, "/metrics": b"vllm:num_requests_running 0\\n"}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")
    def log_message(self, *a):
        pass
ThreadingHTTPServer((opt["--host"], int(opt["--port"])), H).serve_forever()
"""


class CountingProber(Prober):
    """The launcher's prober, counting probes: readiness (two HTTP requests) and liveness (one)."""

    def __init__(self, *, timeout_s: float) -> None:
        super().__init__(timeout_s=timeout_s)
        self.probes = 0

    async def probe(self, url: str, api_key: str | None, served_name: str) -> Probe:
        self.probes += 1
        return await super().probe(url, api_key, served_name)

    async def alive(self, url: str, api_key: str | None) -> Probe:
        self.probes += 1
        return await super().alive(url, api_key)


async def _redis_commands(client: aioredis.Redis) -> int:
    info = await client.info("stats")
    return int(info["total_commands_processed"])


@dataclass
class Variant:
    """One launcher under measurement and what each of its ticks cost."""

    name: str
    launcher: Any
    slurm: SlurmCLI
    prober: CountingProber
    walls_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)
    slurm_per_tick: list[Counter[str]] = field(default_factory=list)
    redis_per_tick: list[int] = field(default_factory=list)
    probes_per_tick: list[int] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    async def measure(self, redis: aioredis.Redis, profiler: cProfile.Profile | None) -> None:
        calls0, probes0 = Counter(self.slurm.calls), self.prober.probes
        cmds0 = await _redis_commands(redis)
        started, cpu0 = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        report = await self.launcher.tick(now_s=time.time())
        if profiler is not None:
            profiler.disable()
        self.walls_ms.append((time.perf_counter() - started) * 1000)
        self.cpu_ms.append((time.process_time() - cpu0) * 1000)
        for name, ms in report.steps_ms.items():
            self.steps.setdefault(name, []).append(ms)
        # Less the INFO that read cmds0 (counted once it ran): one command.
        self.redis_per_tick.append(await _redis_commands(redis) - cmds0 - 1)
        self.slurm_per_tick.append(Counter(self.slurm.calls) - calls0)
        self.probes_per_tick.append(self.prober.probes - probes0)
        if report.submitted or report.failed or report.draining or report.cancelled or report.slurm_error:
            self.anomalies.append(
                f"submitted={len(report.submitted)} failed={len(report.failed)} "
                f"draining={len(report.draining)} slurm_error={report.slurm_error}"
            )

    def summary(self) -> dict[str, Any]:
        return {
            "tick_ms_p50": median(self.walls_ms),
            "tick_ms_p95": percentile(self.walls_ms, 95),
            "tick_ms_max": max(self.walls_ms),
            "tick_cpu_ms_p50": median(self.cpu_ms),
            "tick_cpu_ms_p95": percentile(self.cpu_ms, 95),
            "redis_commands_per_tick_p50": median([float(x) for x in self.redis_per_tick]),
            "steps_ms_p50": {name: median(v) for name, v in self.steps.items()},
            "tick_ms": self.walls_ms,
            "anomalies": self.anomalies,
        }


def load_baseline(ref: str) -> Any:
    """The `Launcher` class of `ref`'s launcher/controller.py, run against this tree's other modules."""
    repo = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{ref}:launcher/controller.py"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType("bench_baseline_controller")
    module.__file__ = f"<{ref}:launcher/controller.py>"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module.Launcher


async def run_size(
    n_models: int,
    n_instances: int,
    n_ticks: int,
    workdir: Path,
    *,
    profile: bool = False,
    baseline: Any = None,
    busy: int = 0,
) -> dict[str, Any]:
    """One size: set up, bring `n_instances` to ready, measure `n_ticks` ticks, tear down."""
    stub = workdir / "stub_engine.py"
    stub.write_text(STUB_ENGINE)
    cluster = LocalCluster(cpus=max(8, n_instances + 8), memory_mb=JOB_MEM_MB * (n_instances + 8), gpus=0)
    server = LocalRedis()
    uv_server: uvicorn.Server | None = None
    serve_task: asyncio.Task[None] | None = None
    slurm: SlurmCLI | None = None
    launcher: Launcher | None = None
    redis: aioredis.Redis | None = None
    try:
        await asyncio.to_thread(cluster.start)
        server.start()
        redis = aioredis.Redis.from_url(server.url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        callback_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = LauncherSettings(
            engine_command=[sys.executable, "-S", str(stub)],
            helper_python=sys.executable,
            job_name_prefix="bt-",
            job_output_dir=workdir / "jobs",
            callback_port=0,
            allow_loopback_engines=True,  # the local cluster's node is this machine
        )
        slurm = SlurmCLI(env=cluster.env, job_name_prefix="bt-", command_timeout_s=60.0)
        prober = CountingProber(timeout_s=settings.health_timeout_s)
        launcher = Launcher(
            redis, slurm, settings, callback_url=callback_url, prober=prober, model_roots=[Path("/models")]
        )
        uv_server = uvicorn.Server(
            uvicorn.Config(callback_app(launcher), lifespan="off", access_log=False, log_level="warning")
        )
        serve_task = asyncio.create_task(uv_server.serve(sockets=[sock]))

        store = ModelStore(redis)
        res = Resources(gpus=0, cpus=1, mem_mb=JOB_MEM_MB, time_limit_min=240)
        for i in range(n_models):
            policy = Policy(min_replicas=1 if i < n_instances else 0, max_replicas=1)
            await store.put(ModelSpec(name=f"m{i:04d}", source=f"/models/m{i:04d}", resources=res, policy=policy))

        # Ramp up: the launcher submits the standing replicas itself and ticks them to ready.
        t0 = time.perf_counter()
        instances = InstanceStore(redis)
        submitted = 0
        ready = 0
        while True:
            report = await launcher.tick(now_s=time.time())
            submitted += len(report.submitted)
            if report.failed:
                raise RuntimeError(f"instances failed during ramp-up: {dict(list(report.failed.items())[:3])}")
            records = await instances.all()
            ready = sum(r.state is InstanceState.READY for r in records)
            print(f"  ramp-up {time.perf_counter() - t0:6.1f}s: {submitted} submitted, {ready} ready", flush=True)
            if ready >= n_instances:
                break
            if time.perf_counter() - t0 > 900:
                raise RuntimeError(f"only {ready} of {n_instances} instances ready after 900 s")
            await asyncio.sleep(2.0)
        ramp_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # let the last callbacks and probes settle

        # Measure: ticks back to back, counting what each one asked of Slurm, Redis and the engines.
        # With a baseline, its launcher and this one tick in turn on the same cluster and Redis.
        variants = [Variant("new", launcher, slurm, prober)]
        if baseline is not None:
            base_slurm = SlurmCLI(env=cluster.env, job_name_prefix="bt-", command_timeout_s=60.0)
            base_prober = CountingProber(timeout_s=settings.health_timeout_s)
            base = baseline(redis, base_slurm, settings, callback_url=callback_url, prober=base_prober)
            variants.insert(0, Variant("baseline", base, base_slurm, base_prober))
        for variant in variants:  # first sight of every model, excluded
            for _ in range(2):
                await variant.launcher.tick(now_s=time.time())
        profiler = cProfile.Profile() if profile else None
        busy0 = _cpu_busy()
        routing = Routing(redis)
        served = [f"m{i:04d}" for i in range(n_instances)]
        for i in range(n_ticks):
            for variant in variants if i % 2 == 0 else variants[::-1]:
                await _traffic(routing, served[(i * busy) % len(served) :][:busy], i)
                await variant.measure(redis, profiler if variant.name == "new" else None)
        machine_busy = _cpu_busy_since(busy0)
        for variant in variants[:-1]:
            await variant.launcher.aclose()
        walls_ms, cpu_ms, steps = variants[-1].walls_ms, variants[-1].cpu_ms, variants[-1].steps
        slurm_per_tick, redis_per_tick = variants[-1].slurm_per_tick, variants[-1].redis_per_tick
        probes_per_tick, anomalies = variants[-1].probes_per_tick, variants[-1].anomalies
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
            print(out.getvalue(), flush=True)
        # The health check of every ready instance, which runs in its own loop (`health_check_s`).
        health_ms: list[float] = []
        health_cpu_ms: list[float] = []
        health_probes: list[int] = []
        for _ in range(max(3, n_ticks // 4)):
            probes0 = prober.probes
            started, cpu0 = time.perf_counter(), time.process_time()
            failed = await launcher.check_ready(now_s=time.time())
            health_ms.append((time.perf_counter() - started) * 1000)
            health_cpu_ms.append((time.process_time() - cpu0) * 1000)
            health_probes.append(prober.probes - probes0)
            if failed:
                anomalies.append(f"health check failed {len(failed)}: {list(failed.values())[:2]}")
        # The Slurm call itself: what `jobs()` runs against the `squeue --json` it replaced, interleaved.
        lines_ms: list[float] = []
        json_ms: list[float] = []
        json_bytes = 0
        for _ in range(10):
            started = time.perf_counter()
            await slurm.jobs()
            lines_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            json_bytes = len(await _squeue_json(cluster.env))
            json_ms.append((time.perf_counter() - started) * 1000)
        commands = sorted({name for c in slurm_per_tick for name in c})
        per_cmd = {name: [c[name] for c in slurm_per_tick] for name in commands}
        squeue = per_cmd.get("squeue", [0])
        other = sum(sum(v) for k, v in per_cmd.items() if k != "squeue")
        total_calls = sum(sum(v) for v in per_cmd.values())
        return {
            "variants": {v.name: v.summary() for v in variants},
            "models": n_models,
            "instances": n_instances,
            "ready": ready,
            "ticks": n_ticks,
            "ramp_up_s": ramp_s,
            "tick_ms_p50": median(walls_ms),
            "tick_ms_p95": percentile(walls_ms, 95),
            "tick_ms_max": max(walls_ms),
            "tick_ms": walls_ms,
            "steps_ms_p50": {name: median(v) for name, v in steps.items()},
            "tick_cpu_ms_p50": median(cpu_ms),
            "machine_busy_during_ticks": machine_busy,
            "slurm_calls_per_tick": {k: sum(v) / n_ticks for k, v in per_cmd.items()},
            "squeue_per_tick_min": min(squeue),
            "squeue_per_tick_max": max(squeue),
            "other_slurm_calls": other,
            "slurm_calls_per_min_at_default_tick": total_calls / n_ticks * 60 / DEFAULT_TICK_S,
            "redis_commands_per_tick_p50": median([float(x) for x in redis_per_tick]),
            "redis_commands_per_tick": redis_per_tick,
            "probes_per_tick_p50": median([float(x) for x in probes_per_tick]),
            "squeue_lines_ms_p50": median(lines_ms),
            "squeue_json_ms_p50": median(json_ms),
            "squeue_json_bytes": json_bytes,
            "decision_memo_hits": launcher.decisions.hits,
            "decision_memo_misses": launcher.decisions.misses,
            "plans_reused": launcher.planner.reused,
            "health_check_ms_p50": median(health_ms),
            "health_check_cpu_ms_p50": median(health_cpu_ms),
            "health_check_probes_p50": median([float(x) for x in health_probes]),
            "anomalies": anomalies,
        }
    finally:
        if slurm is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_cancel_all(slurm), timeout=120)
        if uv_server is not None:
            uv_server.should_exit = True
        if serve_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serve_task, timeout=10)
        if launcher is not None:
            await launcher.aclose()
        if redis is not None:
            await redis.aclose()
        server.stop()
        await asyncio.to_thread(cluster.stop)


async def _traffic(routing: Routing, models: list[str], round_no: int) -> None:
    """One request through each of `models` (admitted on its ready instance, then released), as a gateway
    would: their demand, last request and load change, so the next tick has to look at them again."""
    for model in models:
        rid = f"bench-{round_no}-{model}"
        got = await routing.admit(model, "bench-gw", rid, now_s=time.time(), queue_max=100, global_max=10_000)
        if got.outcome is not AdmitOutcome.SLOT:
            raise RuntimeError(f"{model}: {got.outcome} instead of a slot on its ready instance")
        await routing.release("bench-gw", rid)


def _cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _cpu_busy_since(start: tuple[int, int]) -> float:
    """Share of the machine's CPU time busy since `start` (every process, ours included)."""
    busy, total = _cpu_busy()
    return (busy - start[0]) / max(1, total - start[1])


async def _squeue_json(env: dict[str, str]) -> bytes:
    """`squeue --json --states=all` as the launcher ran it before (parsed too, as it was)."""
    proc = await asyncio.create_subprocess_exec(
        "squeue", "--json", "--states=all", stdout=asyncio.subprocess.PIPE, env={**os.environ, **env}
    )
    out, _ = await proc.communicate()
    parse_squeue(out)
    return out


async def _cancel_all(slurm: SlurmCLI) -> None:
    for job in await slurm.jobs():
        if job.state.is_active:
            await slurm.cancel(job.job_id)


def compare_table(rows: list[dict[str, Any]], ref: str) -> str:
    """Baseline against this tree, ticking in turn in the same run: p50, p95, CPU and their ratios."""
    headers = ["models", "instances", "variant", "tick ms p50", "p95", "max", "CPU ms p50", "CPU p95", "Redis cmds"]
    body: list[list[object]] = []
    for r in rows:
        got = r["variants"]
        for name, v in got.items():
            label = f"{ref} (baseline)" if name == "baseline" else "this tree"
            body.append(
                [r["models"], r["instances"], label, v["tick_ms_p50"], v["tick_ms_p95"], v["tick_ms_max"],
                 v["tick_cpu_ms_p50"], v["tick_cpu_ms_p95"], int(v["redis_commands_per_tick_p50"])]
            )  # fmt: skip
        if "baseline" in got:
            b, n = got["baseline"], got["new"]
            body.append(
                [r["models"], r["instances"], "ratio new/baseline", n["tick_ms_p50"] / b["tick_ms_p50"],
                 n["tick_ms_p95"] / b["tick_ms_p95"], n["tick_ms_max"] / b["tick_ms_max"],
                 n["tick_cpu_ms_p50"] / b["tick_cpu_ms_p50"], n["tick_cpu_ms_p95"] / b["tick_cpu_ms_p95"], ""]
            )  # fmt: skip
    return "Ticking in turn in the same run\n\n" + table(headers, body)


def main() -> None:
    """Measure each size, print the table and write JSON."""
    p = argparse.ArgumentParser(
        prog="python -m bench.launcher_tick", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--instances", type=int, default=200)
    p.add_argument("--ticks", type=int, default=30)
    p.add_argument("--no-small", action="store_true", help="skip the 1/10 size (100 models / 20 instances)")
    p.add_argument("--profile", action="store_true", help="cProfile the measured ticks and print the top functions")
    p.add_argument(
        "--busy", type=int, default=20, help="models that get a request before every tick (of those with an instance)"
    )
    p.add_argument(
        "--baseline",
        metavar="REF",
        help="also tick REF's launcher/controller.py (e.g. main), in turn with this one, and give the ratios",
    )
    args = p.parse_args()
    sizes = [(args.models, args.instances)]
    if not args.no_small:
        sizes.insert(0, (max(1, args.models // 10), max(1, args.instances // 10)))
    rows: list[dict[str, Any]] = []
    for n_models, n_instances in sizes:
        print(f"{n_models} models, {n_instances} instances:", flush=True)
        workdir = Path(tempfile.mkdtemp(prefix="bench-launcher-tick-"))
        try:
            baseline = load_baseline(args.baseline) if args.baseline else None
            rows.append(
                asyncio.run(
                    run_size(
                        n_models,
                        n_instances,
                        args.ticks,
                        workdir,
                        profile=args.profile,
                        baseline=baseline,
                        busy=min(args.busy, n_instances),
                    )
                )
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    headers = [
        "models",
        "instances",
        "ticks",
        "tick ms p50",
        "p95",
        "max",
        "its CPU ms p50",
        "machine busy",
        "squeue/tick",
        "other Slurm calls",
        f"Slurm calls/min (tick_s={DEFAULT_TICK_S:g})",
        "Redis cmds/tick",
        "probes/tick",
        "health check ms p50",
        "its CPU ms",
        "its probes",
    ]
    body = [
        [
            r["models"],
            r["instances"],
            r["ticks"],
            r["tick_ms_p50"],
            r["tick_ms_p95"],
            r["tick_ms_max"],
            r["tick_cpu_ms_p50"],
            f"{100 * r['machine_busy_during_ticks']:.0f} %",
            f"{r['squeue_per_tick_min']}-{r['squeue_per_tick_max']}",
            r["other_slurm_calls"],
            r["slurm_calls_per_min_at_default_tick"],
            int(r["redis_commands_per_tick_p50"]),
            int(r["probes_per_tick_p50"]),
            r["health_check_ms_p50"],
            r["health_check_cpu_ms_p50"],
            int(r["health_check_probes_p50"]),
        ]
        for r in rows
    ]
    text = "The launcher's tick in steady state (every instance ready)\n\n" + table(headers, body)
    for r in rows:
        text += (
            f"\n{r['models']} models: plans reused {r['plans_reused']}, decisions reused {r['decision_memo_hits']}, "
            f"computed {r['decision_memo_misses']}"
        )
        text += "; step ms p50: " + ", ".join(f"{k} {v:.1f}" for k, v in r["steps_ms_p50"].items())
        text += (
            f"; jobs() {r['squeue_lines_ms_p50']:.1f} ms vs squeue --json {r['squeue_json_ms_p50']:.1f} ms"
            f" ({r['squeue_json_bytes'] / 1000:.0f} kB) for {r['instances']} jobs"
        )
    if args.baseline:
        text += "\n\n" + compare_table(rows, args.baseline)
    print("\n" + text + "\n", flush=True)
    for r in rows:
        if r["anomalies"]:
            print(f"{r['models']} models: ticks that changed something: {r['anomalies'][:3]}", flush=True)
    path = write_json("launcher_tick", {"config": vars(args), "sizes": rows, "tables": text})
    print(f"JSON: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
