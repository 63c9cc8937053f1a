"""Accounting for the local Slurm cluster: a private MariaDB and a slurmdbd, run as plain processes.

With `LocalCluster(accounting=True)` the cluster gets a MariaDB server of its own (data directory,
unix socket and TCP port inside the cluster directory and on a free port; no systemd, nothing of the
system's MariaDB is touched) and a slurmdbd storing into it, so `sacctmgr` accounts, QOS and limits
are enforced by slurmctld (`AccountingStorageEnforce=associations,limits,qos`) as on a site's cluster.

Order matters: munged, MariaDB, slurmdbd, then the cluster is registered (`sacctmgr add cluster`)
before slurmctld starts. slurmdbd reads `slurmdbd.conf` from the directory of `slurm.conf` and
refuses to start unless the file is mode 600 and owned by its `SlurmUser` (root here).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slurm.localcluster_files import port_open, write_secret
from slurm.localdaemons import Daemons, LocalClusterError

__all__ = ["AccountingSpec", "accounting_missing", "render_slurmdbd_conf", "start_accounting"]

DATABASE = "slurm_acct_db"
DB_USER = "slurm"
# Small buffers: a test database holds a few hundred rows.
_MARIADB_TUNING = ("--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M")
_INSTALL_TIMEOUT_S = 60.0
_SQL_TIMEOUT_S = 15.0
_BINARIES = ("mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "sacctmgr")

Spawn = Callable[[str, list[str]], None]


def accounting_missing() -> list[str]:
    """The programs accounting needs that are not installed (Debian: mariadb-server, slurmdbd)."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [name for name in _BINARIES if shutil.which(name, path=path) is None]


@dataclass(frozen=True)
class AccountingSpec:
    """Where the cluster's accounting lives: everything under `base_dir/dbd`, on two ports."""

    base_dir: Path
    hostname: str
    mariadb_port: int
    slurmdbd_port: int
    munge_socket: Path
    db_password: str

    @classmethod
    def new(
        cls, base_dir: Path, hostname: str, mariadb_port: int, slurmdbd_port: int, munge_socket: Path
    ) -> AccountingSpec:
        return cls(base_dir, hostname, mariadb_port, slurmdbd_port, munge_socket, secrets.token_hex(16))

    @property
    def dir(self) -> Path:
        return self.base_dir / "dbd"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def mariadb_socket(self) -> Path:
        return self.dir / "mariadb.sock"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "log"

    @property
    def conf_path(self) -> Path:
        # slurmdbd looks for it beside slurm.conf.
        return self.base_dir / "slurmdbd.conf"


def render_slurmdbd_conf(spec: AccountingSpec) -> str:
    """The text of slurmdbd.conf for `spec` (it holds the database password: written mode 600)."""
    lines = [
        "# Written by slurmless (slurm/localdbd.py): the accounting of a throwaway local cluster.",
        "AuthType=auth/munge",
        f"AuthInfo=socket={spec.munge_socket}",
        f"DbdHost={spec.hostname}",
        "DbdAddr=127.0.0.1",
        f"DbdPort={spec.slurmdbd_port}",
        "SlurmUser=root",
        "DebugLevel=info",
        f"LogFile={spec.log_dir / 'slurmdbd.log'}",
        f"PidFile={spec.dir / 'slurmdbd.pid'}",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={spec.mariadb_port}",
        f"StorageUser={DB_USER}",
        f"StoragePass={spec.db_password}",
        f"StorageLoc={DATABASE}",
    ]
    return "\n".join(lines) + "\n"


def mariadb_argv(spec: AccountingSpec) -> list[str]:
    """mariadbd in the foreground on its own data directory, socket and loopback port."""
    return [
        "mariadbd",
        "--no-defaults",
        f"--datadir={spec.data_dir}",
        f"--socket={spec.mariadb_socket}",
        f"--port={spec.mariadb_port}",
        "--bind-address=127.0.0.1",
        "--skip-name-resolve",
        "--skip-log-bin",
        "--user=root",
        f"--pid-file={spec.dir / 'mariadb.pid'}",
        f"--log-error={spec.log_dir / 'mariadb.log'}",
        *_MARIADB_TUNING,
    ]


def bootstrap_sql(spec: AccountingSpec) -> str:
    """The database and the one user slurmdbd connects as (over TCP from 127.0.0.1 only)."""
    user = f"'{DB_USER}'@'127.0.0.1'"
    return (
        f"CREATE DATABASE IF NOT EXISTS {DATABASE}; "
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY '{spec.db_password}'; "
        f"GRANT ALL ON {DATABASE}.* TO {user};"
    )


def start_accounting(spec: AccountingSpec, daemons: Daemons, spawn: Spawn, deadline: float) -> None:
    """Create the database, start MariaDB and slurmdbd, and wait until slurmdbd listens."""
    missing = accounting_missing()
    if missing:
        raise LocalClusterError(
            f"accounting needs {', '.join(missing)} (Debian packages mariadb-server and slurmdbd; scripts/setup.sh)"
        )
    spec.dir.mkdir(mode=0o700)
    _run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={spec.data_dir}",
            "--user=root",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            *_MARIADB_TUNING,
        ],
        _INSTALL_TIMEOUT_S,
        spec.log_dir / "mariadb-install.log",
    )
    spawn("mariadb", mariadb_argv(spec))
    daemons.wait_for(spec.mariadb_socket.exists, deadline, "mariadbd did not create its socket")
    _run(
        ["mariadb", "--no-defaults", f"--socket={spec.mariadb_socket}", "-u", "root", "-e", bootstrap_sql(spec)],
        _SQL_TIMEOUT_S,
        spec.log_dir / "mariadb-install.log",
    )
    write_secret(spec.conf_path, render_slurmdbd_conf(spec).encode(), mode=0o600)
    spawn("slurmdbd", ["slurmdbd", "-D"])
    daemons.wait_for(lambda: port_open(spec.slurmdbd_port), deadline, "slurmdbd did not listen")


def _run(argv: list[str], timeout_s: float, log_path: Path) -> None:
    with open(log_path, "ab") as log:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise LocalClusterError(f"{argv[0]} exited {proc.returncode}\n" + "\n".join(tail))
