"""`slurmless up`: the whole stack on one machine, in the foreground, on embedded defaults.

Starts a Redis server of its own, the local Slurm cluster (unless `slurm.local_cluster` is false),
the launcher and the gateway as child processes, registers a demo model and prints the API URL and a
fresh key. Ctrl-C (or SIGTERM, or SIGHUP when the terminal closes) stops everything it started, in
reverse order, and nothing is left: not even when the terminal goes away during the clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time

import httpx
import redis.asyncio as aioredis
import typer
from rich.console import Console

from slurm.confine import ensure_private_dir
from slurmless.demo_model import VLLM_ENGINE_ARGS, VLLM_ENGINE_ENV, build_tiny_llama, vllm_python
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings, load_settings
from warmpool.acl import ROLES, role_users, url_for
from warmpool.apikeys import ApiKeyStore
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

console = Console()

DEMO_MODEL = "demo"
VLLM_LABEL = "vLLM (CPU build)"
SIM_LOAD_TIME_S = 5.0
"""The simulated engine's load time: long enough to see the cold start, short enough to wait for."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SAY_TIMEOUT_S = 1.0
"""How long a clean-up message may wait for a terminal or pipe that takes no output (Ctrl-S, a stuck reader)."""


def engine_choice(engine: str = "auto") -> tuple[str, list[str]]:
    """Real vLLM when installed (opt-in, .venv-vllm), else the simulator; returns (label, argv)."""
    if engine not in {"auto", "sim", "vllm"}:
        raise ValueError(f"--engine must be auto, sim or vllm, not {engine!r}")
    python = vllm_python() if engine != "sim" else None
    if engine == "vllm" and python is None:
        raise RuntimeError("--engine vllm: the CPU build of vLLM is not installed; run SLURMLESS_WITH_VLLM=1 make up")
    if python is not None:
        return VLLM_LABEL, [str(python), "-m", "vllm.entrypoints.openai.api_server"]
    return "engine simulator", [sys.executable, "-m", "enginesim", "--sim-load-time-s", str(SIM_LOAD_TIME_S)]


class Stack:
    """The processes `up` owns, stopped in reverse order of start."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: LocalRedis | None = None
        self.cluster: object | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env: dict[str, str] = {}
        self.role_urls: dict[str, str] = {}
        self.role_envs: dict[str, dict[str, str]] = {}
        """The environment each kind of child starts with (`launcher`, `gateway`): its own Redis user."""

    def start_redis(self) -> dict[str, str]:
        """Redis with one ACL user per role (warmpool.acl), fresh passwords per run; the URL of each role."""
        passwords = {role: secrets.token_urlsafe(24) for role in ROLES}
        users = role_users(self.settings.redis.key_prefix, passwords)
        self.redis = LocalRedis(
            self.settings.state_dir / "redis",
            appendonly=True,
            users=[u.acl_line() for u in users],
            password=secrets.token_urlsafe(24),
        )
        self.redis.start()
        self.role_urls = {u.name: url_for(self.redis.url, u.name, u.password) for u in users}
        return self.role_urls

    def start_cluster(self) -> dict[str, str]:
        from slurm.localcluster import LocalCluster

        base = self.settings.dev_cluster.base_dir
        if (base / "localcluster.json").exists():
            with contextlib.suppress(Exception):
                LocalCluster.load(base).stop()
        cluster = LocalCluster(base, gpus=self.settings.dev_cluster.gpus)
        cluster.start()
        self.cluster = cluster
        return cluster.env

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.settings.state_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.children.append((name, proc))

    def start(self, engine_argv: list[str], *, extra_env: dict[str, str] | None = None, timeout_s: float = 60) -> str:
        """Redis, the cluster (if local), launcher and gateway; returns the gateway's base URL once it answers."""
        settings = self.settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        settings.launcher.job_output_dir = ensure_private_dir(settings.launcher.job_output_dir)
        role_urls = self.start_redis()
        # The children read the same settings as this process (environment and config file), with
        # what `up` decided on top.
        env = dict(os.environ)
        if settings.slurm.local_cluster:
            # A single machine: registered paths can be checked here, and the simulator ignores sources.
            dev_defaults = {
                "SLURMLESS_MODEL_ROOTS": json.dumps([str(settings.state_dir)]),
                "SLURMLESS_REGISTRY__ALLOW_HUB_IDS": "true",
                "SLURMLESS_REGISTRY__CHECK_PATHS_LOCALLY": "true",
                # Its one node is this machine (NodeAddr 127.0.0.1): engines register a loopback address.
                "SLURMLESS_LAUNCHER__ALLOW_LOOPBACK_ENGINES": "true",
                "SLURMLESS_REGISTRY__DEFAULT_LIMITS__GPUS_PER_NODE": str(settings.dev_cluster.gpus),
            }
            env.update({k: v for k, v in dev_defaults.items() if k not in os.environ})
        env.update(
            {
                "SLURMLESS_REDIS__KEY_PREFIX": settings.redis.key_prefix,
                "SLURMLESS_GATEWAY__HOST": settings.gateway.host,
                "SLURMLESS_GATEWAY__PORT": str(settings.gateway.port),
                "SLURMLESS_LAUNCHER__CALLBACK_PORT": str(settings.launcher.callback_port),
                "SLURMLESS_LAUNCHER__ENGINE_COMMAND": json.dumps(engine_argv),
                "SLURMLESS_LAUNCHER__JOB_OUTPUT_DIR": str(settings.launcher.job_output_dir),
            }
        )
        if settings.slurm.local_cluster:
            cluster_env = self.start_cluster()
            env.update(cluster_env)
            env["SLURMLESS_SLURM__CONF"] = cluster_env["SLURM_CONF"]
        env.update(extra_env or {})
        # Each process connects as its role: the gateway cannot write instances or the registry (its admin
        # API has a connection of its own), the launcher cannot read async prompts.
        launcher_env = env | {"SLURMLESS_REDIS__URL": role_urls["launcher"]}
        gateway_env = env | {
            "SLURMLESS_REDIS__URL": role_urls["gateway"],
            "SLURMLESS_REDIS__ADMIN_URL": role_urls["admin"],
        }
        self.env = env | {"SLURMLESS_REDIS__URL": role_urls["admin"]}
        self.role_envs = {"launcher": launcher_env, "gateway": gateway_env}
        self.spawn("launcher", [sys.executable, "-m", "launcher"], launcher_env)
        self.spawn("gateway", [sys.executable, "-m", "queue_gateway"], gateway_env)
        base_url = f"http://{settings.gateway.host}:{settings.gateway.port}"
        if not _wait_http(base_url + "/healthz", timeout_s):
            raise RuntimeError(self.check_children() or f"gateway did not answer on {base_url} within {timeout_s} s")
        return base_url

    def check_children(self) -> str | None:
        for name, proc in self.children:
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}: see {self.settings.state_dir / (name + '.log')}"
        return None

    def stop(self) -> list[str]:
        """Stop everything, in reverse order of start; a step that fails does not skip the later ones.

        Returns what could not be stopped (empty when nothing is left).
        """
        problems: list[str] = []
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.children):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    problems.append(f"{name} (pid {proc.pid}) did not exit after SIGKILL")
        self.children.clear()
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            from slurm.localcluster import LocalCluster

            assert isinstance(cluster, LocalCluster)
            try:
                cluster.stop()
            except Exception as exc:
                problems.append(f"local cluster in {cluster.base_dir}: {exc}")
        local_redis, self.redis = self.redis, None
        if local_redis is not None:
            try:
                local_redis.stop(remove=False)
            except Exception as exc:
                problems.append(f"redis-server (pid {local_redis.pid}): {exc}")
        return problems


async def _bootstrap(settings: Settings, redis_url: str, engine_label: str) -> tuple[str, str]:
    """Register the demo model (idempotently) and make fresh user and admin keys for this session."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = Keys(settings.redis.key_prefix)
        store = ModelStore(client, keys)
        if engine_label == VLLM_LABEL:
            source = str(build_tiny_llama(settings.state_dir / "tiny-llama"))
            engine_args, resources = VLLM_ENGINE_ARGS, Resources(gpus=1, cpus=2, mem_mb=4000, time_limit_min=60)
        else:
            source, engine_args = "slurmless/demo", {}
            resources = Resources(gpus=1, cpus=1, mem_mb=1000, time_limit_min=60, time_min_min=10)
        spec = ModelSpec(
            name=DEMO_MODEL,
            source=source,
            engine_args=engine_args,
            resources=resources,
            policy=Policy(min_replicas=0, max_replicas=1, keepalive_min_s=120, keepalive_max_s=300),
            created_s=time.time(),
        )
        await store.put(spec, replace=await store.get(DEMO_MODEL) is not None)
        store_keys = ApiKeyStore(client, keys)
        user_key, _ = await store_keys.create(tenant="demo", name="slurmless-up", now_s=time.time())
        admin_key, _ = await store_keys.create(tenant="admin", name="slurmless-up admin", admin=True, now_s=time.time())
        return user_key, admin_key
    finally:
        await client.aclose()


def _wait_http(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return True
        time.sleep(0.2)
    return False


def up_command(
    gateway_port: int = typer.Option(None, "--port", help="Gateway port (default: settings gateway.port, 8000)."),
    engine: str = typer.Option("auto", help="auto (vLLM when installed, else the simulator), sim or vllm."),
) -> None:
    """Run the whole stack locally in the foreground: Redis, Slurm, launcher, gateway, a demo model."""
    settings = load_settings()
    if gateway_port is not None:
        settings.gateway.port = gateway_port
    try:
        engine_label, engine_argv = engine_choice(engine)
    except (ValueError, RuntimeError) as exc:
        typer.secho(f"slurmless: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    stack = Stack(settings)
    signals = StopSignals()
    signals.install()
    interrupted = False
    try:
        extra = {"SLURMLESS_LAUNCHER__ENGINE_ENV": json.dumps(VLLM_ENGINE_ENV)} if engine_label == VLLM_LABEL else {}
        base_url = stack.start(engine_argv, extra_env=extra)
        assert stack.redis is not None
        console.print(
            f"[green]redis[/green]     127.0.0.1:{stack.redis.port} (AOF in {settings.state_dir / 'redis'}; "
            "ACL users gateway, launcher, admin)"
        )
        where = f"local cluster in {settings.dev_cluster.base_dir}" if settings.slurm.local_cluster else "as configured"
        console.print(f"[green]slurm[/green]     {where}")
        key, admin_key = asyncio.run(_bootstrap(settings, stack.role_urls["admin"], engine_label))
        console.print(f"[green]gateway[/green]   {base_url}/v1  (model '{DEMO_MODEL}' on the {engine_label})")
        # Keys are long (128-bit ids): never wrapped, so that a copy or a script gets them whole.
        console.print(f"[bold]API key[/bold]   {key}", soft_wrap=True)
        console.print(f"[bold]admin key[/bold] {admin_key}  (for `slurmless models|keys|status ...`)", soft_wrap=True)
        console.print(
            f"\nexport SLURMLESS_KEY={key} SLURMLESS_URL={base_url} SLURMLESS_ADMIN_TOKEN={admin_key}"
            f"\ncurl -N {base_url}/v1/chat/completions "
            '-H "Authorization: Bearer $SLURMLESS_KEY" -H "Content-Type: application/json" '
            f'-d \'{{"model": "{DEMO_MODEL}", "stream": true, '
            '"messages": [{"role": "user", "content": "Hello"}]}\'\n',
            soft_wrap=True,
        )
        console.print("Ctrl-C stops everything.")
        while True:
            problem = stack.check_children()
            if problem:
                raise RuntimeError(problem)
            time.sleep(1)
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:
        console.print(f"[red]slurmless: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}[/red]")
        raise typer.Exit(1) from None
    finally:
        # Nothing may interrupt the clean-up: not a second Ctrl-C, not the terminal closing (SIGHUP),
        # not a reader that went away (`make up | tee` stopped by the same Ctrl-C). An assignment
        # first, so that no signal handler can run between entering this block and it.
        signals.stopping = True
        _say("stopping ..." if interrupted else "cleaning up ...")
        problems = stack.stop()
        for problem in problems:
            _say(f"slurmless: could not stop {problem}")
        _say("stopped; nothing left running" if not problems else "stopped, with the problems above")


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP stop `up`: the first raises KeyboardInterrupt, every later one is ignored.

    The handler ignores them itself, rather than SIG_IGN or a signal mask set when the clean-up starts:
    a signal that arrived just before (Ctrl-C, then the terminal closing) has its Python handler run
    from inside `signal.signal()` or `signal.pthread_sigmask()`, which would raise KeyboardInterrupt
    in the clean-up; and unlike SIG_IGN and a mask, a Python handler is not inherited by children.
    """

    def __init__(self) -> None:
        self.stopping = False  # set by the first signal, or by the clean-up when it starts for another reason

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt


def _say(message: str) -> None:
    """Print a line if anyone still reads it; never raises, never blocks for more than `SAY_TIMEOUT_S`.

    Not through rich: its console answers a broken pipe with SystemExit, which would end the clean-up.
    A reader that went away (EPIPE), a hung-up terminal (EIO) or one that takes nothing (Ctrl-S) mean
    nobody reads any more: stdout goes to /dev/null, so no later write, nor Python's flush at exit, fails.
    """
    stdout = 1
    try:
        _, writable, _ = select.select([], [stdout], [], SAY_TIMEOUT_S)
        if writable:
            os.write(stdout, f"{message}\n".encode())
            return
    except OSError:
        pass
    _silence_stdout()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, and stderr too when it is the same pipe or terminal."""
    stdout, stderr = 1, 2
    try:
        out, err = os.fstat(stdout), os.fstat(stderr)
        same = (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)
    except OSError:
        same = False
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout)
        if same:
            os.dup2(devnull, stderr)
        os.close(devnull)
