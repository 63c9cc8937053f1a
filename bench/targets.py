"""The warm-path benchmark's targets: one engine simulator reached directly or through a proxy.

Every target is an OpenAI-compatible endpoint serving model `m` in front of the same engine:
`direct` (the engine itself), `slurmless` (redis + `python -m queue_gateway`, the engine
registered as a ready instance the way the launcher would; `slurmless-w2` the same with
`--workers 2`), `nginx` (plain streaming reverse proxy), `vllm-router` (Rust) and `litellm`
(LiteLLM's proxy). Peers are installed by `bench/peers/install.sh`; a target whose peer is
missing is skipped with a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import string
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from bench.procs import VENVS, Child, free_port, pin_threads, python, start, wait_http, wait_line
from slurmless.localredis import LocalRedis
from warmpool.apikeys import ApiKeyStore
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.models import ModelStore
from warmpool.routing import Routing
from warmpool.specs import ModelSpec

MODEL = "m"
PEERS = Path(__file__).resolve().parent / "peers"
START_TIMEOUT_S = 60.0
LITELLM_START_TIMEOUT_S = 180.0


class PeerMissing(RuntimeError):
    """A peer proxy is not installed (run bench/peers/install.sh)."""


@dataclass
class Target:
    """An endpoint to load, and what to stop afterwards."""

    name: str
    host: str
    port: int
    api_key: str
    children: list[Child] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    extra_pids: list[int] = field(default_factory=list)
    """Processes outside the children's sessions whose CPU counts for this target (slurmless's Redis)."""
    redis_url: str | None = None
    """slurmless's Redis."""
    redis_key_prefix: str | None = None
    """Its key prefix, when not the default."""

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def session_ids(self) -> list[int]:
        """Session ids of the children (each started its own), to find all their processes."""
        return [c.proc.pid for c in self.children]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()


@dataclass(frozen=True)
class Layout:
    """Which cores each part runs on (None: let the kernel decide)."""

    engine: Sequence[int] | None
    proxy: Sequence[int] | None


def start_engine(
    log_dir: Path, layout: Layout, *, inter_token_ms: float, tokens_per_chunk: int, max_num_seqs: int = 4096
) -> Target:
    """The engine simulator: the `direct` target, and the upstream of every other."""
    key = "engine-" + secrets.token_hex(8)
    child = start(
        "enginesim",
        [
            python(),
            "-m",
            "enginesim",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--served-model-name",
            MODEL,
            "--api-key",
            key,
            "--max-num-seqs",
            str(max_num_seqs),
            "--sim-load-time-s",
            "0",
            "--sim-inter-token-ms",
            str(inter_token_ms),
            "--sim-tokens-per-chunk",
            str(tokens_per_chunk),
        ],
        log_dir=log_dir,
        cores=layout.engine,
        capture_stdout=True,
    )
    url = wait_line(child, "enginesim listening on ", START_TIMEOUT_S)
    host, port = url.removeprefix("http://").split(":")
    return Target("direct", host, int(port), key, [child])


def start_nginx(engine: Target, log_dir: Path, layout: Layout) -> Target:
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        raise PeerMissing("nginx not installed: bash bench/peers/install.sh nginx")
    prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    port = free_port()
    conf = string.Template((PEERS / "nginx.conf.template").read_text()).substitute(
        prefix=prefix, listen_port=port, upstream=f"{engine.host}:{engine.port}"
    )
    (prefix / "nginx.conf").write_text(conf)
    child = start(
        "nginx", [exe, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], log_dir=log_dir, cores=layout.proxy
    )
    target = Target("nginx", "127.0.0.1", port, engine.api_key, [child], [lambda: shutil.rmtree(prefix, True)])
    _wait_models(target, child)
    return target


def start_vllm_router(engine: Target, log_dir: Path, layout: Layout) -> Target:
    exe = VENVS / "vllm-router" / "bin" / "vllm-router"
    if not exe.exists():
        raise PeerMissing("vllm-router not installed: bash bench/peers/install.sh vllm-router")
    port = free_port()
    child = start(
        "vllm-router",
        [
            str(exe),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--worker-urls",
            engine.base_url,
            "--policy",
            "round_robin",
            "--api-key",
            engine.api_key,
            "--log-level",
            "warning",
        ],
        log_dir=log_dir,
        cores=layout.proxy,
    )
    target = Target("vllm-router", "127.0.0.1", port, engine.api_key, [child])
    _wait_models(target, child)
    return target


def start_litellm(engine: Target, log_dir: Path, layout: Layout) -> Target:
    exe = VENVS / "litellm" / "bin" / "litellm"
    if not exe.exists():
        raise PeerMissing("litellm not installed: bash bench/peers/install.sh litellm")
    workdir = Path(tempfile.mkdtemp(prefix="bench-litellm-"))
    conf = string.Template((PEERS / "litellm.yaml.template").read_text()).substitute(
        model=MODEL, api_base=engine.base_url + "/v1", api_key=engine.api_key
    )
    (workdir / "config.yaml").write_text(conf)
    master = "sk-bench-" + secrets.token_hex(8)
    port = free_port()
    child = start(
        "litellm",
        [
            str(exe),
            "--config",
            str(workdir / "config.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        log_dir=log_dir,
        cores=layout.proxy,
        cwd=workdir,
        env={
            "LITELLM_MASTER_KEY": master,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_OFFLINE_MODE": "true",
            "LITELLM_LOG": "ERROR",
            "DISABLE_SCHEMA_UPDATE": "true",
        },
    )
    target = Target("litellm", "127.0.0.1", port, master, [child], [lambda: shutil.rmtree(workdir, True)])
    _wait_models(target, child, LITELLM_START_TIMEOUT_S)
    return target


async def _register(redis_url: str, engine: Target, cap: int) -> str:
    """Play the launcher: register model `m`, an API key, and the engine as a ready instance."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await ModelStore(redis).put(ModelSpec(name=MODEL, source=f"/models/{MODEL}", served_name=MODEL))
        plain, _ = await ApiKeyStore(redis).create(tenant="bench", now_s=time.time())
        record = InstanceRecord(
            id="bench-0",
            model=MODEL,
            state=InstanceState.READY,
            host=engine.host,
            port=engine.port,
            api_key=engine.api_key,
        )
        await InstanceStore(redis).put(record)
        await Routing(redis).activate(MODEL, record.id, cap=cap)
        return plain
    finally:
        await redis.aclose()


def start_slurmless(
    engine: Target,
    log_dir: Path,
    layout: Layout,
    *,
    cap: int = 4096,
    env: dict[str, str] | None = None,
    workers: int = 1,
) -> Target:
    """Redis + the gateway (`workers` processes on one port, with `env` on top of its defaults), the engine
    registered as a ready instance."""
    redis = LocalRedis()
    redis.start()
    if redis.pid is not None and layout.proxy is not None:
        pin_threads(redis.pid, layout.proxy)
    try:
        key = asyncio.run(_register(redis.url, engine, cap))
        workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
        child = start(
            "slurmless",
            [python(), "-m", "queue_gateway", "--host", "127.0.0.1", "--port", "0", "--workers", str(workers)],
            log_dir=log_dir,
            cores=layout.proxy,
            env={"SLURMLESS_REDIS__URL": redis.url, **(env or {})},
            unset_prefixes=("SLURMLESS_",),
            capture_stdout=True,
            cwd=workdir,
        )
    except BaseException:
        redis.stop()
        raise
    name = "slurmless" if workers == 1 else f"slurmless-w{workers}"
    target = Target(name, "127.0.0.1", 0, key, [child], [redis.stop, lambda: shutil.rmtree(workdir, True)])
    target.redis_url = redis.url
    if redis.pid is not None:
        target.extra_pids.append(redis.pid)
    try:
        url = wait_line(child, "queue_gateway listening on ", START_TIMEOUT_S)
        target.port = int(url.rsplit(":", 1)[1])
        _wait_models(target, child)
    except BaseException:
        target.stop()
        raise
    return target


STARTERS: dict[str, Callable[[Target, Path, Layout], Target]] = {
    "slurmless": start_slurmless,
    "slurmless-w2": lambda engine, log_dir, layout: start_slurmless(engine, log_dir, layout, workers=2),
    "nginx": start_nginx,
    "vllm-router": start_vllm_router,
    "litellm": start_litellm,
}


def _wait_models(target: Target, child: Child, timeout_s: float = START_TIMEOUT_S) -> None:
    wait_http(child, target.base_url + "/v1/models", timeout_s, {"Authorization": f"Bearer {target.api_key}"})
