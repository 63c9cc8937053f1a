"""`slurmless dev-cluster up|down|status`: the throwaway local Slurm cluster from the shell."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from slurm.localcluster import LocalCluster, LocalClusterError
from slurm.rootfs import RootfsMissing, SlurmRuntime
from slurmless.settings import load_settings

app = typer.Typer(help="The throwaway single-node Slurm cluster (fake GPUs) for demos and tests.", no_args_is_help=True)
console = Console()

DirOption = typer.Option(None, "--dir", help="Cluster directory (default: settings dev_cluster.base_dir).")


def _dir(path: Path | None) -> Path:
    return path if path is not None else load_settings().dev_cluster.base_dir


def _fail(message: str) -> None:
    typer.secho(f"slurmless: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


@app.command("up")
def up(
    directory: Path | None = DirOption,
    gpus: int = typer.Option(4, help="Fake GPUs on the node."),
    slurm: str | None = typer.Option(
        None, "--slurm", help="Slurm release: 22.05 (the host's), 24.11 or 26.05 (scripts/slurm-rootfs.sh builds them)."
    ),
    rest: bool = typer.Option(False, "--rest", help="Also run slurmrestd (JWT auth) for the rest backend."),
    accounting: bool = typer.Option(
        False, "--accounting", help="Also run slurmdbd with a private MariaDB: accounts, QOS and limits enforced."
    ),
) -> None:
    """Start the cluster in the background; it keeps running until `down`."""
    base = _dir(directory)
    version = slurm or load_settings().dev_cluster.slurm_version
    try:
        if (base / "localcluster.json").exists():
            existing = LocalCluster.load(base)
            if existing.status().running:
                console.print(f"cluster already running in {base}")
                _print_env(existing)
                return
        runtime = SlurmRuntime.for_version(version)
        cluster = LocalCluster(base, gpus=gpus, runtime=runtime, rest=rest, accounting=accounting)
        cluster.start()
    except (LocalClusterError, RootfsMissing, ValueError, OSError) as exc:
        _fail(str(exc).splitlines()[0])
        return
    console.print(
        f"[green]cluster up[/green] in {base}: Slurm {cluster.slurm_version}, node {cluster.node_name}, {gpus} GPUs"
    )
    _print_env(cluster)


@app.command("down")
def down(directory: Path | None = DirOption) -> None:
    """Stop exactly the daemons `up` started and remove the directory."""
    base = _dir(directory)
    try:
        LocalCluster.load(base).stop()
    except LocalClusterError as exc:
        _fail(f"{exc} (nothing to stop?)")
    console.print(f"cluster in {base} stopped and removed")


@app.command("status")
def status(directory: Path | None = DirOption) -> None:
    """Show the daemons and the node's state."""
    base = _dir(directory)
    try:
        cluster = LocalCluster.load(base)
        st = cluster.status()
    except LocalClusterError as exc:
        _fail(f"{exc}: start one with `slurmless dev-cluster up`")
        return
    table = Table("daemon", "pid", "alive")
    for name, pid in cluster.pids.items():
        table.add_row(name, str(pid), "yes" if st.daemons_alive.get(name) else "[red]no[/red]")
    console.print(table)
    console.print(f"node {cluster.node_name}: {st.node_state or 'unknown'}")
    _print_env(cluster)


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(ctx: typer.Context, directory: Path | None = DirOption) -> None:
    """Run a Slurm command against the cluster, inside its root for 24.11/26.05: `exec -- squeue -l`."""
    base = _dir(directory)
    if not ctx.args:
        _fail("name a command: slurmless dev-cluster exec -- squeue")
    try:
        cluster = LocalCluster.load(base)
    except LocalClusterError as exc:
        _fail(f"{exc}: start one with `slurmless dev-cluster up`")
        return
    env = {**os.environ, **cluster.env}
    raise typer.Exit(subprocess.run(cluster.runtime.argv(ctx.args), env=env, check=False).returncode)


def _print_env(cluster: LocalCluster) -> None:
    console.print(f"export SLURM_CONF={cluster.conf_path}", soft_wrap=True)
    if cluster.command_prefix:
        # The newer releases' commands run inside their root (slurm.command_prefix for the cli backend).
        console.print(
            f"# Slurm {cluster.slurm_version} commands: slurmless dev-cluster exec --dir {cluster.base_dir} -- squeue",
            soft_wrap=True,
            markup=False,
        )
    if cluster.accounting:
        console.print(
            f"# accounting: slurmdbd on port {cluster.slurmdbd_port}; accounts and QOS with "
            f"slurmless dev-cluster exec --dir {cluster.base_dir} -- sacctmgr ...",
            soft_wrap=True,
            markup=False,
        )
    if cluster.rest:
        console.print(f"# slurmrestd: {cluster.rest_url} (token: scontrol token)", soft_wrap=True, markup=False)
