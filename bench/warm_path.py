"""Warm-path overhead: the engine simulator reached directly and through slurmless and its peers.

    .venv/bin/python -m bench.warm_path            # full: 1/10/50/100 streams, 3 rounds, 5 s each
    .venv/bin/python -m bench.warm_path --quick    # 1 and 50 streams, 2 rounds, 2 s each
    .venv/bin/python -m bench.warm_path --vllm-bench   # also drive every target with `vllm bench serve`

`--vllm-bench` runs vLLM's own benchmark client (`vllm bench serve --backend openai-chat
--dataset-name random`, 16 prompt tokens, `--max-tokens` out, `--max-concurrency N`, one
warm-up per stream) against every target after our own client, in one vLLM process
(`bench/peers/vllm_bench_serve.py`, which says why not the `vllm` command), pinned like our client.

One engine simulator (no token pacing by default: the engine is as fast as its core allows)
serves model `m`; every target stands in front of that same engine. The load is closed-loop:
N streams each send the next streaming chat completion as soon as the last ended, over a
keep-alive connection, for a fixed time. Targets are interleaved round by round (the order
rotates each round) and every figure is the median of the per-round values; ratios are to
`direct` at the same concurrency.

Pinning (default, `--no-pin` to turn off): the engine and the load generator share core 0,
the proxy under test (with its Redis for slurmless) gets core 1, so a target's throughput
ratio says whether the proxy keeps up with the engine on a core of its own, and its CPU
per request is measured from /proc. Results: a table on stdout, JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import select
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop

from bench.procs import REPO, cpu_seconds, start, wait_line
from bench.rawclient import Connection, StreamResult, build_request
from bench.report import median, percentile, table, write_json
from bench.targets import MODEL, STARTERS, Layout, PeerMissing, Target, start_engine
from slurmless.demo_model import build_tiny_llama

ALL_TARGETS = ["direct", "slurmless", "slurmless-w2", "nginx", "vllm-router", "litellm"]
VLLM_PYTHON = Path(os.environ.get("SLURMLESS_VLLM_PYTHON", str(REPO / ".venv-vllm" / "bin" / "python")))
REQUEST_TIMEOUT_S = 120.0


@dataclass
class Sample:
    """One target at one concurrency in one round."""

    target: str
    streams: int
    round: int
    requests: int
    errors: int
    elapsed_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    tpot_ms: float
    req_s: float
    tok_s: float
    proxy_cpu_ms_per_req: float
    first_error: str | None = None


@dataclass
class Summary:
    """Median over rounds of one target at one concurrency, and its ratios to direct."""

    target: str
    streams: int
    rounds: int
    values: dict[str, float] = field(default_factory=dict)
    vs_direct: dict[str, float] = field(default_factory=dict)


async def run_level(target: Target, streams: int, duration_s: float, body: dict[str, object]) -> Sample:
    """N closed-loop streams against `target` for `duration_s` (after one warm-up request per stream)."""
    request = build_request(target.host, target.port, "/v1/chat/completions", body, target.api_key)
    conns = [Connection(target.host, target.port, timeout_s=REQUEST_TIMEOUT_S) for _ in range(streams)]
    results: list[StreamResult] = []
    try:
        await asyncio.gather(*(c.stream(request) for c in conns))  # connect and warm up
        cpu_before = cpu_seconds(target.session_ids(), target.extra_pids) if target.name != "direct" else 0.0
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker(conn: Connection) -> None:
            while time.perf_counter() < deadline:
                results.append(await conn.stream(request))

        await asyncio.gather(*(worker(c) for c in conns))
        elapsed_s = time.perf_counter() - started
        cpu_s = cpu_seconds(target.session_ids(), target.extra_pids) - cpu_before if target.name != "direct" else 0.0
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    ok = [r for r in results if r.error is None]
    errors = [r for r in results if r.error is not None]
    ttfts = [r.ttft_s * 1000 for r in ok if r.ttft_s is not None]
    gaps = [g * 1000 for r in ok for g in r.gaps_s()]
    tpots = [
        (r.event_times_s[-1] - r.event_times_s[0]) * 1000 / (len(r.event_times_s) - 1)
        for r in ok
        if len(r.event_times_s) > 1
    ]
    tokens = sum(r.content_events for r in ok)
    return Sample(
        target=target.name,
        streams=streams,
        round=0,
        requests=len(ok),
        errors=len(errors),
        elapsed_s=elapsed_s,
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p99_ms=percentile(ttfts, 99),
        itl_p50_ms=percentile(gaps, 50),
        itl_p99_ms=percentile(gaps, 99),
        tpot_ms=median(tpots),
        req_s=len(ok) / elapsed_s,
        tok_s=tokens / elapsed_s,
        proxy_cpu_ms_per_req=cpu_s * 1000 / len(ok) if ok and target.name != "direct" else float("nan"),
        first_error=errors[0].error if errors else None,
    )


METRICS = [
    "ttft_p50_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "tpot_ms",
    "req_s",
    "tok_s",
    "proxy_cpu_ms_per_req",
]


def summarise(samples: list[Sample]) -> list[Summary]:
    keys = sorted({(s.streams, s.target) for s in samples}, key=lambda k: (k[0], _order(k[1])))
    out: list[Summary] = []
    for streams, name in keys:
        mine = [s for s in samples if s.streams == streams and s.target == name]
        summary = Summary(name, streams, len(mine))
        summary.values = {m: median([float(getattr(s, m)) for s in mine]) for m in METRICS}
        summary.values["errors"] = float(sum(s.errors for s in mine))
        summary.values["requests"] = float(sum(s.requests for s in mine))
        out.append(summary)
    for summary in out:
        direct = next((d for d in out if d.target == "direct" and d.streams == summary.streams), None)
        if direct is None:
            continue
        for m in ["ttft_p50_ms", "ttft_p99_ms", "req_s", "tok_s", "itl_p99_ms"]:
            base = direct.values[m]
            summary.vs_direct[m] = summary.values[m] / base if base else float("nan")
        summary.vs_direct["added_ttft_p50_ms"] = summary.values["ttft_p50_ms"] - direct.values["ttft_p50_ms"]
        summary.vs_direct["added_ttft_p99_ms"] = summary.values["ttft_p99_ms"] - direct.values["ttft_p99_ms"]
    return out


def _order(name: str) -> int:
    return ALL_TARGETS.index(name) if name in ALL_TARGETS else len(ALL_TARGETS)


def render(summaries: list[Summary], title: str) -> str:
    headers = [
        "streams",
        "target",
        "TTFT p50 ms",
        "+TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "req/s",
        "x direct",
        "tok/s",
        "proxy CPU ms/req",
        "errors",
    ]
    rows = [
        [
            s.streams,
            s.target,
            s.values["ttft_p50_ms"],
            s.vs_direct.get("added_ttft_p50_ms", float("nan")) if s.target != "direct" else float("nan"),
            s.values["ttft_p99_ms"],
            s.values["itl_p50_ms"],
            s.values["itl_p99_ms"],
            s.values["req_s"],
            s.vs_direct.get("req_s", float("nan")),
            s.values["tok_s"],
            s.values["proxy_cpu_ms_per_req"],
            int(s.values["errors"]),
        ]
        for s in summaries
    ]
    return f"{title}\n\n{table(headers, rows)}"


# --- vllm bench serve --------------------------------------------------------------------------

VLLM_BENCH_KEYS = [
    "completed",
    "failed",
    "duration",
    "request_throughput",
    "output_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "median_tpot_ms",
]
VLLM_BENCH_TIMEOUT_S = 600.0


class VllmBench:
    """`vllm bench serve` runs one after the other in one vLLM process (`bench/peers/vllm_bench_serve.py`)."""

    def __init__(self, log_dir: Path, cores: list[int] | None) -> None:
        self.out_dir = log_dir / "vllm-bench"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = log_dir / "tokenizer"
        build_tiny_llama(self.tokenizer)
        driver = Path(__file__).resolve().parent / "peers" / "vllm_bench_serve.py"
        env = {"VLLM_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.child = start(
            "vllm-bench",
            [str(VLLM_PYTHON), str(driver)],
            log_dir=log_dir,
            cores=cores,
            env=env,
            capture_stdout=True,
            stdin_pipe=True,
        )
        wait_line(self.child, "ready", VLLM_BENCH_TIMEOUT_S)

    def run(self, target: Target, streams: int, prompts: int, max_tokens: int) -> dict[str, float]:
        """One `vllm bench serve`: random 16-token prompts, `max_tokens` out, `streams` at a time, after
        one warm-up request per stream (which also opens the connections)."""
        name = f"{target.name}-{streams}-{time.monotonic_ns()}.json"
        argv = [
            *("--backend", "openai-chat", "--base-url", target.base_url, "--endpoint", "/v1/chat/completions"),
            *("--model", MODEL, "--tokenizer", str(self.tokenizer)),
            *("--dataset-name", "random", "--random-input-len", "16", "--random-output-len", str(max_tokens)),
            "--ignore-eos",
            *("--num-prompts", str(prompts), "--max-concurrency", str(streams), "--request-rate", "inf"),
            *("--num-warmups", str(streams)),
            *("--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99"),
            "--disable-tqdm",
            *("--save-result", "--result-dir", str(self.out_dir), "--result-filename", name),
        ]
        reply = self._ask({"argv": argv, "api_key": target.api_key})
        path = self.out_dir / name
        if not reply.get("ok") or not path.exists():
            raise RuntimeError(f"vllm bench serve failed: {reply.get('error')}\n{self.child.log_tail(10)}")
        raw = json.loads(path.read_text())
        out = {k: float(raw[k]) for k in VLLM_BENCH_KEYS if raw.get(k) is not None}
        out["prompts"] = float(prompts)
        return out

    def _ask(self, job: dict[str, object]) -> dict[str, object]:
        proc = self.child.proc
        assert proc.stdin is not None and proc.stdout is not None
        if proc.poll() is not None:
            raise RuntimeError(f"vllm bench driver exited with {proc.returncode}:\n{self.child.log_tail(20)}")
        proc.stdin.write(json.dumps(job).encode() + b"\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], VLLM_BENCH_TIMEOUT_S)
        line = proc.stdout.readline().decode(errors="replace") if ready else ""
        if not line:
            raise RuntimeError(f"vllm bench driver did not answer:\n{self.child.log_tail(20)}")
        reply: dict[str, object] = json.loads(line)
        return reply

    def stop(self) -> None:
        self.child.stop()


VLLM_SUMMARY = {
    "ttft_p50_ms": "median_ttft_ms",
    "ttft_p99_ms": "p99_ttft_ms",
    "itl_p50_ms": "median_itl_ms",
    "itl_p99_ms": "p99_itl_ms",
    "tpot_ms": "median_tpot_ms",
    "req_s": "request_throughput",
    "tok_s": "output_throughput",
}


def summarise_vllm(results: dict[str, dict[int, list[dict[str, float]]]]) -> list[Summary]:
    """Median over rounds of `vllm bench serve`'s figures, and ratios to direct (as `summarise`)."""
    out: list[Summary] = []
    for streams in sorted({lvl for per in results.values() for lvl in per}):
        for name in sorted(results, key=_order):
            runs = results[name].get(streams)
            if not runs:
                continue
            summary = Summary(name, streams, len(runs))
            summary.values = {m: median([r.get(k, float("nan")) for r in runs]) for m, k in VLLM_SUMMARY.items()}
            summary.values["failed"] = float(sum(r.get("failed", 0.0) for r in runs))
            summary.values["completed"] = float(sum(r.get("completed", 0.0) for r in runs))
            out.append(summary)
    for summary in out:
        direct = next((d for d in out if d.target == "direct" and d.streams == summary.streams), None)
        if direct is None:
            continue
        for m in ["ttft_p50_ms", "ttft_p99_ms", "req_s", "tok_s"]:
            base = direct.values[m]
            summary.vs_direct[m] = summary.values[m] / base if base else float("nan")
        summary.vs_direct["added_ttft_p50_ms"] = summary.values["ttft_p50_ms"] - direct.values["ttft_p50_ms"]
    return out


def render_vllm(summaries: list[Summary], title: str) -> str:
    headers = [
        "streams",
        "target",
        "TTFT p50 ms",
        "+TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "req/s",
        "x direct",
        "tok/s",
        "completed",
        "failed",
    ]
    rows = [
        [
            s.streams,
            s.target,
            s.values["ttft_p50_ms"],
            s.vs_direct.get("added_ttft_p50_ms", float("nan")) if s.target != "direct" else float("nan"),
            s.values["ttft_p99_ms"],
            s.values["itl_p50_ms"],
            s.values["itl_p99_ms"],
            s.values["req_s"],
            s.vs_direct.get("req_s", float("nan")),
            s.values["tok_s"],
            int(s.values["completed"]),
            int(s.values["failed"]),
        ]
        for s in summaries
    ]
    return f"{title}\n\n{table(headers, rows)}"


async def estimate_req_s(target: Target, streams: int, body: dict[str, object]) -> float:
    """Requests/s of `target` at `streams` over one second (to size a `vllm bench serve` run)."""
    return (await run_level(target, streams, 1.0, body)).req_s


def vllm_bench_all(
    targets: dict[str, Target],
    args: argparse.Namespace,
    body: dict[str, object],
    log_dir: Path,
    cores: list[int] | None,
    own: list[Summary],
) -> dict[str, dict[int, list[dict[str, float]]]]:
    """Every target at every concurrency with `vllm bench serve`, interleaved round by round.

    A run has about `--vllm-bench-duration-s` worth of prompts at the rate our own client saw
    for that target (a one-second probe when it did not run), at least one per stream.
    """
    rates = {(s.target, s.streams): s.values["req_s"] for s in own}
    bench = VllmBench(log_dir, cores)
    results: dict[str, dict[int, list[dict[str, float]]]] = {}
    names = list(targets)
    try:
        for streams in args.streams:
            for rnd in range(args.vllm_bench_rounds):
                shift = rnd % len(names)
                for name in names[shift:] + names[:shift]:
                    rate = rates.get((name, streams))
                    if rate is None or math.isnan(rate):
                        rate = rates[(name, streams)] = uvloop.run(estimate_req_s(targets[name], streams, body))
                    prompts = max(streams, round(rate * args.vllm_bench_duration_s))
                    try:
                        res = bench.run(targets[name], streams, prompts, args.max_tokens)
                    except RuntimeError as exc:
                        print(f"  vllm bench {name} streams={streams}: {exc}", file=sys.stderr, flush=True)
                        continue
                    results.setdefault(name, {}).setdefault(streams, []).append(res)
                    print(
                        f"  vllm-bench streams={streams:3d} round={rnd} {name:12s} prompts={prompts:5d} "
                        f"req/s={res.get('request_throughput', float('nan')):8.1f} "
                        f"ttft_p50={res.get('median_ttft_ms', float('nan')):7.2f}ms "
                        f"failed={int(res.get('failed', 0))}",
                        flush=True,
                    )
    finally:
        bench.stop()
    return results


# --- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.warm_path", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--targets", nargs="+", default=ALL_TARGETS, choices=ALL_TARGETS)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 10, 50, 100])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration-s", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--inter-token-ms", type=float, default=0.0, help="engine pacing per token (0: as fast as it can)")
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1 and 50 streams, 2 rounds, 2 s each")
    p.add_argument("--no-pin", action="store_true", help="do not pin engine+client to core 0 and proxies to core 1")
    p.add_argument("--vllm-bench", action="store_true", help="also run `vllm bench serve` against every target")
    p.add_argument("--vllm-bench-rounds", type=int, default=1)
    p.add_argument(
        "--vllm-bench-duration-s",
        type=float,
        default=3.0,
        help="prompts per `vllm bench serve` run: this many seconds at the rate our own client saw",
    )
    p.add_argument("--skip-own-client", action="store_true", help="only run `vllm bench serve`")
    args = p.parse_args()
    if args.quick:
        args.streams, args.rounds, args.duration_s = [1, 50], 2, 2.0
    return args


def start_targets(names: list[str], engine: Target, log_dir: Path, layout: Layout) -> dict[str, Target]:
    started: dict[str, Target] = {"direct": engine}
    for name in names:
        if name == "direct":
            continue
        try:
            started[name] = STARTERS[name](engine, log_dir, layout)
            print(f"started {name} at {started[name].base_url}", flush=True)
        except (PeerMissing, RuntimeError) as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr, flush=True)
    return started


async def own_client(targets: dict[str, Target], args: argparse.Namespace, body: dict[str, object]) -> list[Sample]:
    samples: list[Sample] = []
    names = list(targets)
    for streams in args.streams:
        for rnd in range(args.rounds):
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                sample = await run_level(targets[name], streams, args.duration_s, body)
                sample.round = rnd
                samples.append(sample)
                print(
                    f"  streams={streams:3d} round={rnd} {name:12s} req/s={sample.req_s:8.1f} "
                    f"ttft_p50={sample.ttft_p50_ms:7.2f}ms errors={sample.errors}"
                    + (f" ({sample.first_error})" if sample.first_error else ""),
                    flush=True,
                )
    return samples


def main() -> None:
    """Start every target, load them round by round, print the tables and write JSON."""
    args = parse_args()
    layout = Layout(engine=None, proxy=None) if args.no_pin else Layout(engine=[0], proxy=[1])
    client_cores = None if args.no_pin else [0]
    if client_cores is not None:
        os.sched_setaffinity(0, set(client_cores))
    log_dir = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "benchmark prompt"}],
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    engine = start_engine(log_dir, layout, inter_token_ms=args.inter_token_ms, tokens_per_chunk=args.tokens_per_chunk)
    targets = start_targets(args.targets, engine, log_dir, layout)
    payload: dict[str, object] = {
        "config": {k: v for k, v in vars(args).items()},
        "pinning": {"engine": layout.engine, "proxy": layout.proxy, "client": client_cores},
        "logs": str(log_dir),
    }
    tables: list[str] = []
    summaries: list[Summary] = []
    try:
        if not args.skip_own_client:
            samples = uvloop.run(own_client(targets, args, body))
            summaries = summarise(samples)
            payload["own_client"] = {"samples": [asdict(s) for s in samples], "summary": [asdict(s) for s in summaries]}
            tables.append(
                render(
                    summaries,
                    f"Own raw-socket client: {args.max_tokens} tokens/request, "
                    f"engine pacing {args.inter_token_ms} ms/token, "
                    f"{args.rounds} rounds x {args.duration_s} s, median of rounds",
                )
            )
        if args.vllm_bench:
            if not VLLM_PYTHON.exists():
                print(f"skipping vllm bench serve: {VLLM_PYTHON} not found", file=sys.stderr)
            else:
                results = vllm_bench_all(targets, args, body, log_dir, client_cores, summaries)
                vsummaries = summarise_vllm(results)
                payload["vllm_bench"] = {"runs": results, "summary": [asdict(s) for s in vsummaries]}
                tables.append(
                    render_vllm(
                        vsummaries,
                        f"vllm bench serve (third-party client): {args.max_tokens} tokens/request, "
                        f"{args.vllm_bench_rounds} round(s) of ~{args.vllm_bench_duration_s} s, median of rounds",
                    )
                )
    finally:
        for target in reversed(list(targets.values())):
            target.stop()
    out = "\n\n".join(tables)
    print("\n" + out)
    path = write_json("warm_path", {**payload, "tables": out})
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
