"""`slurmless dev-cluster up|down|status`: the throwaway local Slurm cluster from the shell."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from slurm.localcluster import LocalCluster, LocalClusterError
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
) -> None:
    """Start the cluster in the background; it keeps running until `down`."""
    base = _dir(directory)
    try:
        if (base / "localcluster.json").exists():
            existing = LocalCluster.load(base)
            if existing.status().running:
                console.print(f"cluster already running in {base}")
                _print_env(existing)
                return
        cluster = LocalCluster(base, gpus=gpus)
        cluster.start()
    except (LocalClusterError, ValueError, OSError) as exc:
        _fail(str(exc).splitlines()[0])
        return
    console.print(f"[green]cluster up[/green] in {base}: node {cluster.node_name}, {gpus} GPUs")
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


def _print_env(cluster: LocalCluster) -> None:
    console.print(f"export SLURM_CONF={cluster.conf_path}")
