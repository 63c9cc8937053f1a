"""The `slurmless` command line.

Sub-commands live next to what they drive and are mounted here, so this module stays wiring:
`up` (slurmless/up.py), `dev-cluster` (slurmless/cli_cluster.py), `simulate` (tracesim),
`gateway` and `launcher` (run one process), and the admin commands (slurmless/cli_admin.py).
Errors are one line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from slurmless.cli_admin import keys_app, models_app, schedules_app, tenants_app
from slurmless.cli_cluster import app as cluster_app
from slurmless.cli_run import gateway_command, launcher_command
from slurmless.cli_status import events_command, status_command
from slurmless.up import up_command
from tracesim.cli import simulate_command

app = typer.Typer(
    name="slurmless",
    help="Serverless, scale-to-zero LLM serving on Slurm clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.add_typer(cluster_app, name="dev-cluster")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(schedules_app, name="schedules")
app.command("up")(up_command)
app.command("gateway")(gateway_command)
app.command("launcher")(launcher_command)
app.command("status")(status_command)
app.command("events")(events_command)
app.command("simulate")(simulate_command)


@app.callback()
def _root() -> None:
    """Serverless, scale-to-zero LLM serving on Slurm clusters."""


def main() -> None:
    """Entry point with one-line errors."""
    try:
        app()
    except (ValueError, FileNotFoundError, RuntimeError, ConnectionError) as exc:
        typer.secho(f"slurmless: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(1)


if __name__ == "__main__":
    main()
