"""`slurmless up` as a newcomer runs it: the stack comes up, one curl streams an answer after a
visible cold start, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from slurmless.ports import free_port


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def mentions(path: Path) -> set[int]:
    """Processes whose command line or environment names `path` (how we recognise ours)."""
    hits = set()
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in blob and int(entry.name) != os.getpid():
            hits.add(int(entry.name))
    return hits


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_streams_after_cold_start_and_ctrl_c_cleans_up() -> None:
    base = Path(tempfile.mkdtemp(prefix="sl-up-", dir="/tmp"))
    base.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURMLESS_")}
    env.update(
        {
            "SLURMLESS_STATE_DIR": str(base / "state"),
            "SLURMLESS_DEV_CLUSTER__BASE_DIR": str(base / "cluster"),
            "SLURMLESS_LAUNCHER__JOB_OUTPUT_DIR": str(base / "jobs"),
            "SLURMLESS_LAUNCHER__CALLBACK_PORT": str(free_port()),
        }
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "slurmless.cli", "up", "--port", str(port), "--engine", "sim"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert up.stdout is not None
        key = None
        deadline = time.monotonic() + 90
        while key is None:
            assert time.monotonic() < deadline, "".join(output)
            line = up.stdout.readline()
            assert line or up.poll() is None, "".join(output)
            output.append(line)
            if match := re.search(r"API key\s+(sk-sl-\S+)", line):
                key = match.group(1)
        assert any("engine simulator" in line for line in output), "".join(output)
        while not any("admin key" in line for line in output):
            output.append(up.stdout.readline())
        admin = re.search(r"admin key\s+(sk-sl-\S+)", "".join(output))
        assert admin is not None
        ours = descendants(up.pid) | mentions(base)
        assert len(ours) >= 5, f"expected redis, munged, slurmctld, slurmd, launcher, gateway: {ours}"

        comments, content = [], []
        with httpx.stream(
            "POST",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "demo", "stream": True, "messages": [{"role": "user", "content": "Hello"}]},
            timeout=120,
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["x-slurmless-held"] == "true"
            for line in resp.iter_lines():
                if line.startswith(":"):
                    comments.append(line)
                elif line.startswith("data: {"):
                    content.append(line)
        assert comments, "the cold start was not visible"
        assert content, "no answer streamed"

        status = subprocess.run(
            [sys.executable, "-m", "slurmless.cli", "status", "--json"],
            env={**env, "SLURMLESS_URL": f"http://127.0.0.1:{port}", "SLURMLESS_ADMIN_TOKEN": admin.group(1)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert "demo" in status.stdout

        # The admin CLI against the real launcher and Slurm: register a model, warm it and wait.
        cli_env = {**env, "SLURMLESS_URL": f"http://127.0.0.1:{port}", "SLURMLESS_ADMIN_TOKEN": admin.group(1)}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "slurmless.cli", *args],
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        registered = cli("models", "register", "second", "--source", "org/second", "--cpus", "1", "--mem-mb", "500")
        assert registered.returncode == 0, registered.stdout + registered.stderr
        warmed = cli("models", "warm", "second", "--wait")
        assert warmed.returncode == 0, warmed.stdout + warmed.stderr
        jobs = subprocess.run(
            ["squeue", "-h", "-o", "%j"],
            env={**os.environ, "SLURM_CONF": str(base / "cluster" / "slurm.conf")},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert "second" in jobs, jobs
        bad = cli("models", "register", "x;rm", "--source", "org/x")
        assert bad.returncode == 1 and bad.stderr.startswith("slurmless: "), bad.stderr

        ours |= descendants(up.pid) | mentions(base)  # now including the job's engine
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
        time.sleep(1)
        left = {pid for pid in ours if alive(pid)}
        assert not left, f"left running after Ctrl-C: {left}"
    finally:
        if up.poll() is None:
            up.kill()
        for pid in mentions(base):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
