"""Scale: a 10,000-ticket backlog, 10,000 held streams on one gateway process, the launcher's tick.

    .venv/bin/python -m bench.scale                 # all parts
    .venv/bin/python -m bench.scale grants          # Routing only: grant rate with a 10,000-ticket backlog
    .venv/bin/python -m bench.scale held            # 10,000 held streaming requests on one gateway process
    .venv/bin/python -m bench.scale --quick         # 2,000 tickets / streams, shorter hold

`grants` drives `warmpool.routing.Routing` against a real Redis: enqueue the backlog (admit
with no ready instance), then `activate` an instance with a cap of C slots and time the one
Lua call and the arrival of every grant message on the gateway's channel; then hand slots
back one by one (`cancel` of a granted ticket grants the next) and time that steady state.

`held` starts Redis, one `python -m queue_gateway` and an engine simulator that is not yet
routed to, opens N streaming requests for the cold model, holds them (they receive SSE
keep-alive comments), samples the gateway's RSS and CPU, then activates the engine and times
how fast the backlog drains. Results: a table on stdout, JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop

from bench.procs import cpu_seconds, pin_threads, python, start, wait_http, wait_line
from bench.rawclient import Connection, StreamResult, build_request
from bench.report import median, percentile, table, write_json
from bench.targets import MODEL, Layout, start_engine
from slurmless.localredis import LocalRedis
from warmpool.apikeys import ApiKeyStore
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.routing import AdmitOutcome, Routing
from warmpool.specs import ModelSpec

GW_ID = "bench-gw"


# --- grants: Routing alone ----------------------------------------------------------------------


async def _enqueue(routing: Routing, n: int, *, batch: int = 500) -> tuple[list[str], float]:
    tids = [f"t{i:06d}-{secrets.token_hex(4)}" for i in range(n)]
    started = time.perf_counter()
    now_s = time.time()
    for i in range(0, n, batch):
        adms = await asyncio.gather(
            *(
                routing.admit(MODEL, GW_ID, tid, now_s=now_s, queue_max=n + 1, global_max=n + 1, signal_demand=False)
                for tid in tids[i : i + batch]
            )
        )
        assert all(a.outcome is AdmitOutcome.QUEUED for a in adms), adms[0]
    return tids, time.perf_counter() - started


async def grant_round(redis_url: str, backlog: int, cap: int, handbacks: int) -> dict[str, float]:
    """One backlog, one activation with `cap` slots, then `handbacks` slot hand-backs."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await redis.flushdb()
        routing = Routing(redis)
        keys = Keys()
        await routing.heartbeat(GW_ID, now_s=time.time(), ttl_s=3600)
        tids, enqueue_s = await _enqueue(routing, backlog)
        pubsub = redis.pubsub()
        await pubsub.subscribe(keys.gw_channel(GW_ID))
        received: list[tuple[float, str]] = []
        done = asyncio.Event()
        expected = min(cap, backlog)

        async def listen() -> None:
            async for msg in pubsub.listen():
                if msg.get("type") == "message":
                    received.append((time.perf_counter(), str(msg["data"])))
                    if len(received) >= expected:
                        done.set()

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.1)
        t0 = time.perf_counter()
        granted = await routing.activate(MODEL, "inst-0", cap=cap)
        t_call = time.perf_counter() - t0
        await asyncio.wait_for(done.wait(), timeout=120)
        t_all = received[expected - 1][0] - t0
        # Steady state: each finished request hands its slot to the head of the queue.
        # FIFO: ticket i is granted by the time the i-th hand-back is made.
        n_back = min(handbacks, backlog - granted)
        t1 = time.perf_counter()
        outcomes = [await routing.cancel(MODEL, GW_ID, tid) for tid in tids[:n_back]]
        t_back = time.perf_counter() - t1
        assert all(o == "released" for o in outcomes), set(outcomes)
        listener.cancel()
        await pubsub.aclose()
        return {
            "backlog": float(backlog),
            "cap": float(cap),
            "enqueue_per_s": backlog / enqueue_s,
            "granted_at_activate": float(granted),
            "activate_call_ms": t_call * 1000,
            "all_grant_messages_ms": t_all * 1000,
            "grants_per_s_at_activate": granted / t_all if t_all > 0 else float("nan"),
            "handbacks": float(n_back),
            "handback_grants_per_s": n_back / t_back if n_back and t_back > 0 else float("nan"),
            "queue_left": float(await routing.queue_depth(MODEL)),
        }
    finally:
        await redis.aclose()


def run_grants(backlog: int, caps: list[int]) -> tuple[list[dict[str, float]], str]:
    server = LocalRedis()
    server.start()
    try:
        rows = [uvloop.run(grant_round(server.url, backlog, cap, handbacks=2000)) for cap in caps]
    finally:
        server.stop()
    headers = [
        "backlog",
        "cap",
        "enqueue/s",
        "activate call ms",
        "granted",
        "all grant msgs ms",
        "grants/s (activate)",
        "grants/s (hand-back)",
    ]
    body = [
        [
            int(r["backlog"]),
            int(r["cap"]),
            r["enqueue_per_s"],
            r["activate_call_ms"],
            int(r["granted_at_activate"]),
            r["all_grant_messages_ms"],
            r["grants_per_s_at_activate"],
            r["handback_grants_per_s"],
        ]
        for r in rows
    ]
    return rows, "Grant rate with a backlog (warmpool.routing on a real Redis, one client)\n\n" + table(headers, body)


# --- held: one gateway process ------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def _setup_cold(redis_url: str) -> str:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await ModelStore(redis).put(ModelSpec(name=MODEL, source=f"/models/{MODEL}", served_name=MODEL))
        plain, _ = await ApiKeyStore(redis).create(tenant="bench", now_s=time.time())
        return plain
    finally:
        await redis.aclose()


async def _activate(redis_url: str, host: str, port: int, api_key: str, cap: int) -> int:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        record = InstanceRecord(
            id="inst-0", model=MODEL, state=InstanceState.READY, host=host, port=port, api_key=api_key
        )
        await InstanceStore(redis).put(record)
        return await Routing(redis).activate(MODEL, record.id, cap=cap)
    finally:
        await redis.aclose()


async def held_run(
    n: int, hold_s: float, interval_s: float, cap: int, gw_host: str, gw_port: int, gw_pid: int, key: str, activate: Any
) -> dict[str, Any]:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "held"}],
        "max_tokens": 8,
        "ignore_eos": True,
        "stream": True,
    }
    request = build_request(gw_host, gw_port, "/v1/chat/completions", body, key)
    connect_gate = asyncio.Semaphore(1000)
    results: list[StreamResult] = []
    headers_seen = 0
    all_headers = asyncio.Event()

    async def one() -> None:
        nonlocal headers_seen
        conn = Connection(gw_host, gw_port, timeout_s=hold_s + 600)
        got_headers = asyncio.Event()
        async with connect_gate:
            # Let the next connection start once this one is held (its response head came back).
            task = asyncio.create_task(conn.stream(request, on_headers=got_headers.set))
            waiter = asyncio.create_task(got_headers.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        headers_seen += 1
        if headers_seen >= n:
            all_headers.set()
        res = await task
        results.append(res)
        await conn.close()

    cpu0 = cpu_seconds([gw_pid])
    t_open = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    samples: list[tuple[float, float, float]] = []  # (t, rss_mb, cpu_s)

    async def sampler() -> None:
        while True:
            samples.append((time.perf_counter() - t_open, rss_mb(gw_pid), cpu_seconds([gw_pid]) - cpu0))
            await asyncio.sleep(1.0)

    sampling = asyncio.create_task(sampler())
    await asyncio.wait_for(all_headers.wait(), timeout=600)
    opened_s = time.perf_counter() - t_open
    cpu_hold0 = cpu_seconds([gw_pid])
    t_hold0 = time.perf_counter()
    await asyncio.sleep(hold_s)
    hold_cpu_s = cpu_seconds([gw_pid]) - cpu_hold0
    hold_elapsed_s = time.perf_counter() - t_hold0
    rss_held = rss_mb(gw_pid)
    t_act = time.perf_counter()
    granted = await activate()
    await asyncio.gather(*tasks)
    drain_s = time.perf_counter() - t_act
    sampling.cancel()
    errors = [r for r in results if r.error is not None]
    # Keep-alive comments while held: gaps between consecutive comments before the first data event.
    gaps: list[float] = []
    # The same, split by whether the gap ended before the instance came (all streams only held)
    # or while the first 256 were served (the gateway busy streaming as well).
    gaps_holding: list[float] = []
    gaps_draining: list[float] = []
    late = 0
    for r in results:
        held = [t for t in r.comment_times_s if not r.event_times_s or t < r.event_times_s[0]]
        mine = [b - a for a, b in itertools.pairwise(held)]
        gaps += mine
        for a, b in itertools.pairwise(held):
            (gaps_holding if b < t_act else gaps_draining).append(b - a)
        if any(g > interval_s * 1.5 for g in mine):
            late += 1
    waits = [r.event_times_s[0] - t_act for r in results if r.event_times_s]
    return {
        "streams": n,
        "errors": len(errors),
        "first_error": errors[0].error if errors else None,
        "open_all_s": opened_s,
        "rss_mb_held": rss_held,
        "rss_mb_peak": max((s[1] for s in samples), default=float("nan")),
        "hold_s": hold_elapsed_s,
        "hold_cpu_core_share": hold_cpu_s / hold_elapsed_s,
        "comment_interval_s": interval_s,
        "comment_gaps": len(gaps),
        "comment_gap_p50_s": percentile(gaps, 50),
        "comment_gap_p99_s": percentile(gaps, 99),
        "comment_gap_max_s": max(gaps, default=float("nan")),
        "comment_gap_p99_holding_s": percentile(gaps_holding, 99),
        "comment_gap_max_holding_s": max(gaps_holding, default=float("nan")),
        "comment_gap_p99_draining_s": percentile(gaps_draining, 99),
        "streams_with_late_comment": late,
        "cap": cap,
        "granted_at_activate": granted,
        "drain_s": drain_s,
        "drain_req_per_s": n / drain_s,
        "first_token_after_activate_p50_s": median(waits),
        "first_token_after_activate_max_s": max(waits, default=float("nan")),
        "samples": samples,
    }


def run_held(n: int, hold_s: float, interval_s: float, cap: int, pin: bool) -> tuple[dict[str, Any], str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n * 3 + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    log_dir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    layout = Layout(engine=[0], proxy=[1]) if pin else Layout(None, None)
    server = LocalRedis()
    server.start()
    if pin and server.pid is not None:
        pin_threads(server.pid, [1])
    engine = start_engine(log_dir, layout, inter_token_ms=0, tokens_per_chunk=1)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-gw-"))
    gw = None
    try:
        key = uvloop.run(_setup_cold(server.url))
        gw = start(
            "gateway",
            [python(), "-m", "queue_gateway", "--host", "127.0.0.1", "--port", "0"],
            log_dir=log_dir,
            cores=layout.proxy,
            env={
                "SLURMLESS_REDIS__URL": server.url,
                "SLURMLESS_GATEWAY__QUEUE_MAX_PER_MODEL": str(n + 1000),
                "SLURMLESS_GATEWAY__QUEUE_MAX_GLOBAL": str(n + 1000),
                "SLURMLESS_GATEWAY__PROGRESS_INTERVAL_S": str(interval_s),
                "SLURMLESS_GATEWAY__COLD_WAIT_BUDGET_S": "3600",
            },
            unset_prefixes=("SLURMLESS_",),
            capture_stdout=True,
            cwd=workdir,
        )
        url = wait_line(gw, "queue_gateway listening on ", 60)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        # The address is printed when the socket is bound, before uvicorn listens: wait until it serves.
        wait_http(gw, url + "/v1/models", 60, {"Authorization": f"Bearer {key}"})

        async def activate() -> int:
            return await _activate(server.url, engine.host, engine.port, engine.api_key, cap)

        if pin:
            import os

            os.sched_setaffinity(0, {0})
        res = uvloop.run(held_run(n, hold_s, interval_s, cap, host, int(port), gw.proc.pid, key, activate))
        res["gateway_log_tail"] = gw.log_tail(10)
    finally:
        if gw is not None:
            gw.stop()
        engine.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    headers = [
        "streams",
        "errors",
        "RSS MB (held)",
        "CPU (held, core share)",
        "comment gap p99 s",
        "max s",
        "gap p99 held s",
        "max held s",
        "gap p99 draining s",
        "late",
        "drain s",
        "req/s drained",
    ]
    row = [
        res["streams"],
        res["errors"],
        res["rss_mb_held"],
        res["hold_cpu_core_share"],
        res["comment_gap_p99_s"],
        res["comment_gap_max_s"],
        res["comment_gap_p99_holding_s"],
        res["comment_gap_max_holding_s"],
        res["comment_gap_p99_draining_s"],
        res["streams_with_late_comment"],
        res["drain_s"],
        res["drain_req_per_s"],
    ]
    title = f"Held streams on one gateway process (comments every {interval_s} s, then an instance with cap {cap})"
    return res, title + "\n\n" + table(headers, [row])


def main() -> None:
    """Run the chosen parts, print their tables and write JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("parts", nargs="*", default=["grants", "held"], choices=["grants", "held"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--backlog", type=int, default=10_000)
    p.add_argument("--caps", type=int, nargs="+", default=[64, 256, 1024, 10_000])
    p.add_argument("--held", type=int, default=10_000)
    p.add_argument("--hold-s", type=float, default=30.0)
    p.add_argument("--interval-s", type=float, default=5.0)
    p.add_argument("--cap", type=int, default=256)
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.backlog, args.held, args.hold_s = 2000, 2000, 12.0
    payload: dict[str, object] = {"config": vars(args)}
    tables: list[str] = []
    if "grants" in args.parts:
        rows, text = run_grants(args.backlog, args.caps)
        payload["grants"] = rows
        tables.append(text)
        print(text + "\n", flush=True)
    if "held" in args.parts:
        res, text = run_held(args.held, args.hold_s, args.interval_s, args.cap, not args.no_pin)
        payload["held"] = res
        tables.append(text)
        print(text + "\n", flush=True)
    path = write_json("scale", {**payload, "tables": "\n\n".join(tables)})
    print(f"JSON: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
