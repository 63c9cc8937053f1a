"""A large batch in the gaps: interactive warm-path TTFT with and without a batch running, and the batch's integrity.

One engine simulator (model `m`, instance cap `--cap`), started by the launcher as a job of the real
local Slurm cluster (`--engine slurm`, the default: `bench.slurm_target`; `direct`: started here and
registered as a ready instance), Redis and one `python -m queue_gateway` (its
batch runner on, `--max-in-flight` lines at once, `--headroom` of the cap, at most `--beside` lines on
an instance that also serves interactive requests; `off`: only the headroom, as before that limit).
The interactive load is the warm-path benchmark's closed loop (`bench.warm_path.run_level`, our raw-socket client) at
`--streams` streams. Windows alternate: without a batch (before it is created), with the batch
running, and without again once it finished; the ratio is TTFT with / TTFT without, medians of the
windows, in the same run. Then the batch's output is checked: every `custom_id` exactly once.
`--priority on off`: engines started with vLLM's `--scheduling-policy priority` and batch lines sent
with `gateway.batch.line_priority` 10 (`on`), or first-come-first-served and no priority (`off`);
`--max-num-seqs`: the engine's own running cap (below the instance cap, the engine queues, and its
scheduling policy decides who waits).

    .venv/bin/python -m bench.batch_gaps [--lines 10000] [--streams 10] [--runner gateway] [--beside 2 off] \
        [--priority on off] [--max-num-seqs 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop

from bench.procs import Child, python, start, wait_line
from bench.report import median, table, write_json
from bench.slurm_target import start_slurm_slurmless
from bench.targets import MODEL, Layout, Target, start_engine, start_slurmless
from bench.warm_path import Sample, run_level
from slurm.localcluster import LocalCluster

FINAL = ("completed", "failed", "expired", "cancelled")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.batch_gaps", description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=10_000)
    p.add_argument("--streams", type=int, default=10)
    p.add_argument("--windows", type=int, default=20, help="at most this many interactive windows while the batch runs")
    p.add_argument("--baseline-windows", type=int, default=3, help="windows without the batch, before and after it")
    p.add_argument("--duration-s", type=float, default=4.0)
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per interactive request")
    p.add_argument("--batch-max-tokens", type=int, default=32, help="tokens per batch line")
    p.add_argument("--inter-token-ms", type=float, default=2.0, help="engine pacing per token")
    p.add_argument("--cap", type=int, default=64, help="the instance's concurrency cap")
    p.add_argument("--max-in-flight", type=int, default=8, help="batch lines the gateway runs at once")
    p.add_argument("--headroom", type=float, default=0.5, help="batch lines only below this fraction of the cap")
    p.add_argument(
        "--runner",
        nargs="+",
        default=["gateway", "worker"],
        choices=["gateway", "worker"],
        help="who runs the batch lines: the gateway process, or a niced `queue_gateway.batch_worker` (one run each)",
    )
    p.add_argument(
        "--beside",
        nargs="+",
        default=["2"],
        help="gateway.batch.beside_interactive for each mode (`off`: no limit but the headroom); modes alternate",
    )
    p.add_argument(
        "--priority",
        nargs="+",
        default=["on"],
        choices=["on", "off"],
        help="engine priority scheduling with batch lines at line_priority 10 (on), or FCFS (off); slurm engine only",
    )
    p.add_argument("--engine", choices=["slurm", "direct"], default="slurm", help="how the engine simulator starts")
    p.add_argument("--max-num-seqs", type=int, default=None, help="the engine's running cap (default: 4096)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each mode, modes alternating")
    p.add_argument(
        "--paired",
        action="store_true",
        help="with --runner worker: alternate windows with the worker paused (SIGSTOP) and running, so that "
        "the machine's drift over minutes cancels out; the ratio is then running / paused",
    )
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args()
    if args.engine == "direct" and args.priority != ["off"]:
        p.error("--engine direct starts a first-come-first-served engine: use --priority off")
    return args


def batch_input(lines: int, max_tokens: int) -> bytes:
    rows = (
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"label abstract number {i}"}],
                "max_tokens": max_tokens,
                "ignore_eos": True,
            },
        }
        for i in range(lines)
    )
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


async def until(h: httpx.AsyncClient, bid: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the batch until `done` holds for it; returns its last state."""
    while True:
        doc: dict[str, Any] = (await h.get(f"/v1/batches/{bid}")).json()
        if done(doc):
            return doc
        await asyncio.sleep(0.05)


async def window(target: Target, args: argparse.Namespace, body: dict[str, object], label: str) -> Sample:
    sample = await run_level(target, args.streams, args.duration_s, body)
    print(
        f"  {label:14s} ttft_p50={sample.ttft_p50_ms:7.2f} ms ttft_p99={sample.ttft_p99_ms:7.2f} ms "
        f"req/s={sample.req_s:7.1f} errors={sample.errors}",
        flush=True,
    )
    return sample


async def run(target: Target, args: argparse.Namespace, pause: Callable[[bool], None] | None = None) -> dict[str, Any]:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "interactive prompt"}],
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {target.api_key}"}
    async with httpx.AsyncClient(base_url=target.base_url, headers=headers, timeout=120) as h:
        up = await h.post(
            "/v1/files",
            files={"file": ("batch.jsonl", batch_input(args.lines, args.batch_max_tokens))},
            data={"purpose": "batch"},
        )
        up.raise_for_status()
        before = [await window(target, args, body, "without batch") for _ in range(args.baseline_windows)]
        created = await h.post(
            "/v1/batches",
            json={"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )
        created.raise_for_status()
        bid = created.json()["id"]
        t0 = time.perf_counter()
        await until(h, bid, lambda d: d["request_counts"]["completed"] >= args.max_in_flight)
        during: list[Sample] = []
        overlapped: list[bool] = []
        paused: list[Sample] = []
        for i in range(args.windows):
            if pause is not None:
                # The worker stopped: its lines in flight end on the engine within a line's time, and
                # nothing else of the batch runs; its leases (30 s) outlast the window.
                pause(True)
                await asyncio.sleep(0.5)
                paused.append(await window(target, args, body, f"paused {i}"))
                pause(False)
                await asyncio.sleep(0.5)
            during.append(await window(target, args, body, f"with batch {i}"))
            overlapped.append((await h.get(f"/v1/batches/{bid}")).json()["status"] == "in_progress")
            if not overlapped[-1]:
                break
        doc = await until(h, bid, lambda d: d["status"] in FINAL)
        batch_s = time.perf_counter() - t0
        after = [await window(target, args, body, "without batch") for _ in range(args.baseline_windows)]
        out = (await h.get(f"/v1/files/{doc['output_file_id']}/content")).content if doc["output_file_id"] else b""
    ids = [orjson.loads(x)["custom_id"] for x in out.splitlines() if x.strip()]
    return {
        "batch_id": bid,
        "batch": doc,
        "batch_s": batch_s,
        "lines_per_s": args.lines / batch_s,
        "results": len(ids),
        "duplicates": len(ids) - len(set(ids)),
        "lost": len({f"line-{i}" for i in range(args.lines)} - set(ids)),
        "windows_inside_batch": overlapped,
        "without": [asdict(s) for s in before + after],
        "with": [asdict(s) for s, inside in zip(during, overlapped, strict=True) if inside],
        "paused": [asdict(s) for s, inside in zip(paused, overlapped, strict=False) if inside],
    }


def start_target(
    priority: str,
    args: argparse.Namespace,
    layout: Layout,
    log_dir: Path,
    env: dict[str, str],
    cluster: LocalCluster | None,
) -> Target:
    """The gateway in front of a warm engine simulator: a Slurm job of the launcher, or started here."""
    seqs = args.max_num_seqs or 4096
    if cluster is None:
        engine = start_engine(
            log_dir, layout, inter_token_ms=args.inter_token_ms, tokens_per_chunk=1, max_num_seqs=seqs
        )
        target = start_slurmless(engine, log_dir, layout, cap=args.cap, env=env)
        target.children[:0] = engine.children
        return target
    engine_argv = ["--max-num-seqs", str(seqs), "--sim-inter-token-ms", str(args.inter_token_ms)]
    return start_slurm_slurmless(
        cluster,
        log_dir,
        layout,
        engine_argv=engine_argv,
        cap=args.cap,
        env=env,
        launcher={"engine_priority_scheduling": priority == "on", "tick_s": 1.0},
    )


def run_mode(
    runner: str,
    beside: str,
    priority: str,
    args: argparse.Namespace,
    layout: Layout,
    log_dir: Path,
    cluster: LocalCluster | None,
) -> dict[str, Any]:
    """A fresh engine, Redis and gateway (and worker), one measurement."""
    files_dir = Path(tempfile.mkdtemp(prefix="bench-batch-files-"))
    env = {
        # `off`: a limit the headroom always reaches first, which is the runner without the limit.
        "SLURMLESS_GATEWAY__BATCH__BESIDE_INTERACTIVE": str(args.cap) if beside == "off" else str(int(beside)),
        "SLURMLESS_GATEWAY__BATCH__FILES_DIR": str(files_dir),
        "SLURMLESS_GATEWAY__BATCH__MAX_IN_FLIGHT": str(args.max_in_flight),
        "SLURMLESS_GATEWAY__BATCH__HEADROOM_FRACTION": str(args.headroom),
        "SLURMLESS_GATEWAY__BATCH__FILE_MAX_LINES": str(max(args.lines, 50_000)),
        "SLURMLESS_GATEWAY__BATCH__RUNNER": "true" if runner == "gateway" else "false",
        "SLURMLESS_GATEWAY__BATCH__LINE_PRIORITY": "10" if priority == "on" else "0",
    }
    target: Target | None = None
    worker: Child | None = None
    try:
        target = start_target(priority, args, layout, log_dir, env, cluster)
        if runner == "worker":
            assert target.redis_url is not None
            prefix = {} if target.redis_key_prefix is None else {"SLURMLESS_REDIS__KEY_PREFIX": target.redis_key_prefix}
            worker = start(
                "batch-worker",
                [python(), "-m", "queue_gateway.batch_worker"],
                log_dir=log_dir,
                cores=layout.proxy,
                env={"SLURMLESS_REDIS__URL": target.redis_url, **env, **prefix},
                unset_prefixes=("SLURMLESS_",),
                capture_stdout=True,
                cwd=files_dir,
            )
            wait_line(worker, "batch worker ", 60)
        pause = None
        if worker is not None and args.paired:
            pid = worker.proc.pid

            def pause(stop: bool) -> None:
                os.killpg(pid, signal.SIGSTOP if stop else signal.SIGCONT)

        return uvloop.run(run(target, args, pause))
    finally:
        if worker is not None:
            worker.stop()
        if target is not None:
            target.stop()
        shutil.rmtree(files_dir, ignore_errors=True)


def run_modes(
    args: argparse.Namespace, layout: Layout, log_dir: Path, cluster: LocalCluster | None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    results: dict[str, dict[str, Any]] = {}
    tables: list[str] = []
    modes = [(r, b, p, i) for i in range(args.repeat) for r in args.runner for b in args.beside for p in args.priority]
    for runner, beside, priority, rnd in modes:
        print(
            f"batch lines run by: {runner}, beside interactive: {beside}, priority {priority} (run {rnd})", flush=True
        )
        result = results[f"{runner}-{beside}-{priority}-{rnd}"] = run_mode(
            runner, beside, priority, args, layout, log_dir, cluster
        )
        result["load_avg"] = os.getloadavg()
        result["priority"] = priority
        without, with_ = result["paused"] or result["without"], result["with"]
        baseline = "paused (interleaved)" if result["paused"] else "without batch"
        rows = []
        for metric in ("ttft_p50_ms", "ttft_p99_ms", "req_s"):
            a = median([s[metric] for s in without])
            b = median([s[metric] for s in with_])
            rows.append([metric, a, b, b / a if a else float("nan")])
        result["table"] = rows
        tables.append(
            f"Run {rnd}, batch lines run by the {runner}, beside interactive {beside}, priority {priority}, "
            f"load average {result['load_avg'][0]:.1f}: {result['batch']['status']} in {result['batch_s']:.1f} s "
            f"({result['lines_per_s']:.0f} lines/s), {result['results']} results, {result['lost']} lost, "
            f"{result['duplicates']} duplicated; interactive windows inside the batch: "
            f"{result['windows_inside_batch']}\n" + table(["metric", baseline, "with batch", "ratio"], rows)
        )
    return results, tables


def main() -> None:
    args = parse_args()
    layout = Layout(engine=None, proxy=None) if args.no_pin else Layout(engine=[0], proxy=[1])
    if not args.no_pin:
        os.sched_setaffinity(0, {0})
    log_dir = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    cluster = None
    if args.engine == "slurm":
        cluster = LocalCluster(gpus=4)
        cluster.start()
    try:
        results, tables = run_modes(args, layout, log_dir, cluster)
    finally:
        if cluster is not None:
            cluster.stop()
    print()
    print(
        f"Interactive warm path at {args.streams} streams ({args.max_tokens} tokens, "
        f"engine {args.inter_token_ms} ms/token, cap {args.cap}, engine {args.engine}, max-num-seqs "
        f"{args.max_num_seqs or 4096}), median of windows; batch of {args.lines} lines ({args.batch_max_tokens} "
        f"tokens each), at most {args.max_in_flight} in flight, below {args.headroom:g} of the cap; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print("\n\n".join(tables))
    path = write_json("batch_gaps", {"config": vars(args), "logs": str(log_dir), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
