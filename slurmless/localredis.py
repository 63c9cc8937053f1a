"""A redis-server of our own: for tests and `slurmless up`, never the system's."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

from slurmless.ports import free_port


class RedisServerError(RuntimeError):
    """redis-server could not be started or stopped."""


class LocalRedis:
    """Start `redis-server` on a free loopback port in its own directory, and stop exactly it.

    `appendonly=True` turns on AOF persistence, so a restart (`restart()`) keeps the data, which
    the fault tests use. `users` are ACL users (`warmpool.acl.RoleUser.acl_line()`), and `password`
    protects the default user (full access); `url` then carries it.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
        binary: str = "redis-server",
        start_timeout_s: float = 10.0,
        users: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        self._owns_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix="slurmless-redis-")) if base_dir is None else base_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.users = list(users)
        self.password = password
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        exe = shutil.which(self.binary)
        if exe is None:
            raise RedisServerError(f"{self.binary} not found: install Debian's redis-server package")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.base_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.base_dir / "redis.log"),
            "--maxclients",
            "20000",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        for line in self.users:
            args += ["--user", *line.split()]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1.0)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RedisServerError(f"redis-server exited with {self._proc.returncode}: {self._log_tail()}")
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerError(f"redis-server did not answer within {self.start_timeout_s}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server we started (and only it); remove its directory if we created it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if remove and self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, for fault tests: the data survives only through AOF."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=5)
        self._proc = None

    def restart(self) -> None:
        """Stop (keeping the directory) and start again on the same port."""
        self.stop(remove=False)
        self.start()

    def _log_tail(self) -> str:
        log = self.base_dir / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"

    def __enter__(self) -> LocalRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
