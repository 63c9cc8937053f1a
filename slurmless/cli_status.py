"""What the operator watches from a terminal: `slurmless status [--watch]`, `slurmless events`, and the
phases `slurmless models warm --wait` shows as they happen.

Made for an 80-column terminal: the status table folds long cells, and every event is one line
(cut with an ellipsis at the terminal's width; `--json` has everything).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from slurmless import cli_admin
from slurmless.cli_admin import DEFAULT_URL, AdminClient, AsJson, Token, Url, _ago, _dur, _opt, _print_json, _seg

PHASE_STYLE = {"ready": "green", "loading": "yellow", "starting": "yellow", "pending": "cyan", "failed": "red"}
COMING = ("pending", "starting", "loading")
_FIRST_DETAIL = ("why", "reason", "replicas", "previous", "error", "job_id", "host", "port")


def phase_text(status: dict[str, Any], now_s: float) -> str:
    """`pending, reason Resources, est. start in 2m, ready in 3m` (the ETA says when it is unknown)."""
    phase = str(status["phase"])
    parts = [phase]
    if status.get("slurm_reason"):
        parts.append(f"reason {status['slurm_reason']}")
    if status.get("est_start_s"):
        parts.append(f"est. start {_ago(status['est_start_s'], now_s)}")
    if phase in COMING:
        eta = status.get("eta_s")
        parts.append(f"ready {_ago(eta, now_s)}" if eta and eta > now_s else "ready: unknown")
    if status.get("detail"):
        parts.append(str(status["detail"]))
    return ", ".join(parts)


def cold_start_text(row: dict[str, Any], now_s: float) -> str:
    """`1m05s, 3m ago`: how long the last cold start took, and when it ended."""
    took = row.get("last_cold_start_s")
    if took is None:
        return "-"
    at = row.get("last_cold_start_at_s")
    return f"{_dur(took)}, {_ago(at, now_s)}" if at else _dur(took)


def status_table(result: dict[str, Any]) -> Table:
    now_s = float(result.get("now_s") or time.time())
    budgets = [
        f"idle budget {b['budget']}: rate {b['exchange_rate']:.3g}, "
        f"{b['idle_gpu_hours_last_day']:g}/{b['budget_gpu_hours_per_day']:g} GPU-h over the last day"
        for b in result.get("idle_budgets") or []
    ]
    caption = "; ".join(["replicas: desired/ready", *budgets])
    table = Table("model", "phase", "replicas", "queue", "last cold start", "warm until", caption=caption)
    for column in table.columns:
        column.overflow = "fold"
    for row in result["data"]:
        phase = str(row["phase"])
        name = row["model"] if row["kind"] == "base" else f"{row['model']} (on {row['instance_model']})"
        table.add_row(
            name,
            Text(phase_text(row, now_s), style=PHASE_STYLE.get(phase, "")),
            f"{_opt(row['desired'])}/{row['actual']}",
            str(row["queue_depth"]),
            cold_start_text(row, now_s),
            _ago(row["warm_until_s"], now_s) if row["warm_until_s"] else "-",
        )
    return table


def status_command(
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval_s: Annotated[float, typer.Option("--interval-s", help="Seconds between refreshes.", min=0.01)] = 2.0,
    count: Annotated[int, typer.Option("--count", help="With --watch: stop after this many refreshes.", min=0)] = 0,
) -> None:
    """Models with their phase, desired/ready replicas, queue depth and last cold start."""
    client = AdminClient(url, token)
    if not watch:
        result = client.call("GET", "/v1/status")
        if as_json:
            _print_json(result["data"])
        else:
            cli_admin.console.print(status_table(result))
        return
    shown = 0
    try:
        with Live(console=cli_admin.console, refresh_per_second=4, auto_refresh=False) as live:
            while True:
                result = client.call("GET", "/v1/status")
                stamp = time.strftime("%H:%M:%S", time.localtime(float(result.get("now_s") or time.time())))
                footer = Text(f"as of {stamp}; every {interval_s:g}s, Ctrl-C to stop", style="dim")
                view: RenderableType = Group(status_table(result), footer)
                live.update(view, refresh=True)
                shown += 1
                if count and shown >= count:
                    break
                time.sleep(interval_s)
    except KeyboardInterrupt:
        pass


def event_line(event: dict[str, Any]) -> Text:
    """One event on one line: time, kind, model[/instance], then its details, the telling ones first."""
    at = time.strftime("%m-%d %H:%M:%S", time.localtime(event["at_s"]))
    detail: dict[str, Any] = dict(event["detail"])
    if "why" in detail:
        detail.pop("reasons", None)  # the summary says it; --json has every policy's reason
    keys = [k for k in _FIRST_DETAIL if k in detail] + [k for k in detail if k not in _FIRST_DETAIL]
    words = " ".join(f"{k}={detail[k]}" for k in keys)
    who = event["model"] + (f"/{event['instance']}" if event["instance"] else "")
    kind = str(event["kind"])
    style = "red" if "fail" in kind or "broken" in kind or "unavailable" in kind else "cyan"
    return Text.assemble((at, "dim"), " ", (kind, style), " ", (who, "bold"), " ", words)


def events_command(
    url: Url = DEFAULT_URL,
    token: Token = None,
    model: Annotated[str | None, typer.Option(help="Only this model's events.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only events of this kind.")] = None,
    count: Annotated[int, typer.Option(help="How many (newest).")] = 50,
    as_json: AsJson = False,
) -> None:
    """The events stream, newest last, one line each: why a model is warm, cold, pending or failed."""
    params = {"model": model, "kind": kind, "count": count}
    data = AdminClient(url, token).call("GET", "/v1/events", params=params)["data"]
    if as_json:
        _print_json(data)
        return
    out = cli_admin.console
    for event in data:
        out.print(event_line(event), no_wrap=True, overflow="ellipsis", crop=True, highlight=False)


def follow_phases(client: AdminClient, name: str, *, timeout_s: float, poll_s: float) -> dict[str, Any]:
    """Show a starting model's phases as they happen (a spinner on a terminal, a line per finished phase).

    Returns the last status read: ready, failed, or whatever it was when `timeout_s` ran out.
    """
    out = cli_admin.console
    started = time.monotonic()
    since = started
    seen: list[str] = []
    status: dict[str, Any] = {}
    with out.status(f"{name}: asking the launcher", spinner="dots") as spinner:
        while True:
            status = client.call("GET", f"/v1/models/{_seg(name)}")["status"]
            phase = str(status["phase"])
            now = time.monotonic()
            if not seen or seen[-1] != phase:
                if seen:
                    out.print(
                        Text.assemble("  done ", (seen[-1], PHASE_STYLE.get(seen[-1], "")), f" in {_dur(now - since)}")
                    )
                seen.append(phase)
                since = now
            spinner.update(
                Text.assemble(
                    (f"{name} ", "bold"),
                    (phase_text(status, time.time()), PHASE_STYLE.get(phase, "")),
                    f"  ({_dur(now - since)} in {phase}, {_dur(now - started)} in all)",
                )
            )
            if phase in ("ready", "failed") or now - started >= timeout_s:
                break
            time.sleep(poll_s)
    out.print("phases: " + " -> ".join(seen), markup=False, highlight=False)
    return status
