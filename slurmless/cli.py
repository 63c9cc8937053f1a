"""The `slurmless` command line.

Sub-commands live next to what they drive and are mounted here, so this module stays wiring:
`up` (slurmless/up.py), `dev-cluster` (slurmless/cli_cluster.py), `simulate` (tracesim),
`gateway` and `launcher` (run one process), and the admin commands (slurmless/cli_admin.py).
Errors are one line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="slurmless",
    help="Serverless, scale-to-zero LLM serving on Slurm clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (module, attribute, name): each a typer app or command function; a missing module is skipped so a
# partial checkout still has a working CLI.
_SUBAPPS: list[tuple[str, str, str]] = [
    ("slurmless.cli_cluster", "app", "dev-cluster"),
    ("slurmless.cli_admin", "models_app", "models"),
    ("slurmless.cli_admin", "keys_app", "keys"),
    ("slurmless.cli_admin", "tenants_app", "tenants"),
    ("slurmless.cli_admin", "schedules_app", "schedules"),
]
_COMMANDS: list[tuple[str, str, str]] = [
    ("slurmless.up", "up_command", "up"),
    ("slurmless.cli_run", "gateway_command", "gateway"),
    ("slurmless.cli_run", "launcher_command", "launcher"),
    ("slurmless.cli_status", "status_command", "status"),
    ("slurmless.cli_status", "events_command", "events"),
    ("tracesim.cli", "simulate_command", "simulate"),
]


def _mount() -> None:
    for module_name, attr, name in _SUBAPPS:
        obj = _load(module_name, attr)
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=name)
    for module_name, attr, name in _COMMANDS:
        obj = _load(module_name, attr)
        if callable(obj):
            app.command(name)(obj)


def _load(module_name: str, attr: str) -> object:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    return getattr(module, attr, None)


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


_mount()


if __name__ == "__main__":
    main()
