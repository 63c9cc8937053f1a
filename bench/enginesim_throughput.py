"""Streaming throughput of the engine simulator alone (the "direct" baseline's ceiling).

Starts ``python -m enginesim`` on a free loopback port with no pacing, then drives it with
httpx streaming chat completions at each concurrency level and prints requests/s and
chunks/s. The request loop is bounded by count. Client and server share the machine, so
the figures are a floor of what the simulator can do.

    python -m bench.enginesim_throughput --requests 2000 --concurrency 1 50 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import select
import statistics
import subprocess
import sys
import time

import httpx

START_TIMEOUT_S = 30.0


def start_simulator(extra_args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enginesim",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--sim-load-time-s",
            "0",
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("enginesim listening on "):
        proc.kill()
        raise RuntimeError(f"unexpected simulator output: {line!r}")
    return proc, line.removeprefix("enginesim listening on ").strip()


async def one_stream(client: httpx.AsyncClient, body: dict[str, object]) -> tuple[float, int]:
    started = time.perf_counter()
    chunks = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                chunks += 1
    return time.perf_counter() - started, chunks


async def run_level(base_url: str, concurrency: int, requests: int, max_tokens: int) -> None:
    body: dict[str, object] = {
        "model": "sim",
        "messages": [{"role": "user", "content": "benchmark prompt"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(60.0)
    remaining = requests
    latencies_s: list[float] = []
    total_chunks = 0

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        await one_stream(client, body)  # warm the connection pool

        async def worker() -> None:
            nonlocal remaining, total_chunks
            while remaining > 0:
                remaining -= 1
                latency_s, chunks = await one_stream(client, body)
                latencies_s.append(latency_s)
                total_chunks += chunks

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed_s = time.perf_counter() - started

    latencies_s.sort()
    p50_ms = statistics.median(latencies_s) * 1000
    p99_ms = latencies_s[int(len(latencies_s) * 0.99) - 1] * 1000
    print(
        f"concurrency={concurrency:3d} requests={len(latencies_s)} max_tokens={max_tokens} "
        f"req/s={len(latencies_s) / elapsed_s:8.1f} chunks/s={total_chunks / elapsed_s:9.0f} "
        f"p50_ms={p50_ms:6.2f} p99_ms={p99_ms:6.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--tokens-per-chunk", type=int, default=1)
    args = parser.parse_args()
    proc, base_url = start_simulator(
        ["--served-model-name", "sim", "--sim-tokens-per-chunk", str(args.tokens_per_chunk)]
    )
    try:
        for concurrency in args.concurrency:
            asyncio.run(run_level(base_url, concurrency, args.requests, args.max_tokens))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    main()
