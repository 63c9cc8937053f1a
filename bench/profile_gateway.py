"""Where one gateway process spends its time under warm load: py-spy, aggregated by function.

    .venv/bin/python -m bench.profile_gateway --streams 50 --duration-s 10

Starts the engine simulator and the `slurmless` target of the warm-path benchmark (same pinning),
records the gateway with `py-spy record --format raw` while the raw-socket client loads it, and
prints the functions with the most samples, by self time and inclusive. Needs py-spy
(`.venv/bin/pip install py-spy`). The raw profile is kept in bench/results/ for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from bench.report import RESULTS
from bench.targets import MODEL, Layout, start_engine, start_slurmless
from bench.warm_path import run_level


def aggregate(raw: Path, top: int) -> str:
    """Self and inclusive sample shares per function from a py-spy raw (collapsed) profile."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    out = [f"{total} samples"]
    for title, counter in (("self", own), ("inclusive", incl)):
        out.append(f"-- {title}")
        out += [f"{100 * n / max(total, 1):5.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(out)


def main() -> None:
    """Profile the gateway under load and print where its time goes."""
    p = argparse.ArgumentParser(prog="python -m bench.profile_gateway", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rate-hz", type=int, default=250)
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    os.sched_setaffinity(0, {0})
    log_dir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    layout = Layout(engine=[0], proxy=[1])
    engine = start_engine(log_dir, layout, inter_token_ms=0, tokens_per_chunk=1)
    gateway = start_slurmless(engine, log_dir, layout)
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / f"gateway-profile-{args.streams}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "profile"}],
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    try:
        recorder = subprocess.Popen(
            [
                *(spy, "record", "-p", str(gateway.children[0].proc.pid), "-d", str(int(args.duration_s) + 2)),
                *("-r", str(args.rate_hz), "-f", "raw", "-o", str(raw), "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        sample = uvloop.run(run_level(gateway, args.streams, args.duration_s, body))
        recorder.wait(timeout=60)
    finally:
        gateway.stop()
        engine.stop()
    print(
        f"streams={args.streams} req/s={sample.req_s:.1f} ttft_p50={sample.ttft_p50_ms:.2f} ms "
        f"gateway+redis CPU/request={sample.proxy_cpu_ms_per_req:.2f} ms errors={sample.errors}"
    )
    print(aggregate(raw, args.top))
    print(f"raw profile: {raw}")


if __name__ == "__main__":
    main()
