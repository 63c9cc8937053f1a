"""Record each Slurm version's real output as parser fixtures in tests/data/slurm/<version>/.

    .venv/bin/python -m tests.matrix.record_fixtures [22.05 24.11 26.05]

Starts a throwaway cluster per version (with slurmrestd), leaves one job running, one pending on
resources, one failed (exit 3) and one cancelled, then writes what `squeue`, `sinfo`, `sbatch
--test-only` and slurmrestd print. Times and ids differ per run; the parser tests assert only what
holds for any run (states, names, comments, GPU counts, exit codes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from slurm.localcluster import LocalCluster
from slurm.parse import SQUEUE_ENV, SQUEUE_FORMAT
from slurm.rootfs import SlurmRuntime

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
#: The slurmrestd API versions recorded per Slurm version (the rest backend speaks the newest it knows).
REST_VERSIONS = {"22.05": ("v0.0.38",), "24.11": ("v0.0.41", "v0.0.42"), "26.05": ("v0.0.42", "v0.0.45")}


def _job(name: str, body: str, *extra: str) -> str:
    lines = ["#!/bin/bash", f"#SBATCH --job-name=slurmless-{name}", f"#SBATCH --comment=slurmless:{name}"]
    lines += [f"#SBATCH {e}" for e in extra]
    lines += ["#SBATCH --output=/dev/null", "#SBATCH --time=30", "#SBATCH --mem=100M", body, ""]
    return "\n".join(lines)


def _run(cluster: LocalCluster, args: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        cluster.runtime.argv(args),
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **cluster.env, **(env or {})},
        timeout=30,
        check=False,
    )
    return proc.stdout + proc.stderr


def record(version: str) -> None:
    out = DATA / version
    out.mkdir(parents=True, exist_ok=True)
    base = Path(f"/tmp/slurmless-record-{version}")
    with LocalCluster(base, runtime=SlurmRuntime.for_version(version), gpus=4, rest=True) as cluster:
        _run(cluster, ["sbatch"], _job("failed-f1", "exit 3"))
        _run(cluster, ["sbatch"], _job("cancelled-c1", "sleep 300", "--begin=now+1hour"))
        _run(cluster, ["sbatch"], _job("running-r1", "sleep 300", "--gres=gpu:1", "--time-min=10"))
        _run(cluster, ["sbatch"], _job("pending-p1", "sleep 300", "--gres=gpu:4", "--partition=preempt"))
        time.sleep(3)
        cancelled = _run(cluster, ["squeue", "-h", "-n", "slurmless-cancelled-c1", "-o", "%i"]).strip()
        _run(cluster, ["scancel", cancelled])
        time.sleep(2)
        fmt = ["squeue", "--noheader", "--states=all", f"--Format={SQUEUE_FORMAT}"]
        (out / "squeue.txt").write_text(_run(cluster, fmt, env=SQUEUE_ENV))
        (out / "squeue.json").write_text(_pretty(_run(cluster, ["squeue", "--json"])))
        (out / "sinfo.json").write_text(_pretty(_run(cluster, ["sinfo", "-N", "--json"])))
        probe = _job("probe-t1", "true", "--gres=gpu:1")
        (out / "sbatch_test_only.txt").write_text(_run(cluster, ["sbatch", "--test-only"], probe))
        too_big = _job("probe-t2", "true", "--gres=gpu:9")
        (out / "sbatch_test_only_rejected.txt").write_text(_run(cluster, ["sbatch", "--test-only"], too_big))
        headers = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": cluster.token()}
        with httpx.Client(base_url=cluster.rest_url, headers=headers, timeout=30) as client:
            for api in REST_VERSIONS[version]:
                slash = "" if api == "v0.0.38" else "/"
                for what in ("jobs", "nodes"):
                    resp = client.get(f"/slurm/{api}/{what}{slash}")
                    (out / f"rest_{api}_{what}.json").write_text(_pretty(resp.text))
    print(f"recorded Slurm {version} into {out}")


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n"
    except ValueError:
        return text


if __name__ == "__main__":
    for v in sys.argv[1:] or ["22.05", "24.11", "26.05"]:
        record(v)
