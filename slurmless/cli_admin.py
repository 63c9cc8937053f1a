"""The admin commands (`slurmless models|keys|tenants|schedules`), over the admin API (`status` and
`events` are in slurmless/cli_status.py).

Every command talks HTTP to a running gateway (`--url`, `SLURMLESS_URL`) with an admin or
self-service token (`--token`, `SLURMLESS_ADMIN_TOKEN`); nothing here touches Redis or Slurm.
Failures print one line, `slurmless: <message>`, and exit 1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from slurmless.cli_spec import spec_fields, with_spec_options

DEFAULT_URL = "http://127.0.0.1:8000"
REQUEST_TIMEOUT_S = 30.0
ICS_MAX_BYTES = 1_000_000

console = Console()
err_console = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="SLURMLESS_URL", help="Gateway URL (the admin API is at /admin).")]
Token = Annotated[
    str | None, typer.Option("--token", envvar="SLURMLESS_ADMIN_TOKEN", help="Admin or self-service token.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]

models_app = typer.Typer(help="Register and manage models and LoRA adapters.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants and their quotas.", no_args_is_help=True)
schedules_app = typer.Typer(help="Keep models warm on a cron expression or an .ics timetable.", no_args_is_help=True)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 1."""
    err_console.print(f"slurmless: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


class AdminClient:
    """A thin, synchronous client of the admin API; every error becomes `fail(...)`."""

    def __init__(self, url: str, token: str | None) -> None:
        self.base = url.rstrip("/") + "/admin"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(
        self, method: str, path: str, *, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            response = httpx.request(
                method,
                self.base + path,
                json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers=self.headers,
                timeout=REQUEST_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            fail(f"cannot reach {self.base}: {exc or type(exc).__name__}")
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            message = None
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                message = data["error"].get("message")
            fail(str(message or f"HTTP {response.status_code} from {self.base + path}"))
        if not isinstance(data, dict):
            fail(f"unexpected answer from {self.base + path}")
        return data


def _print_json(data: object) -> None:
    console.print_json(json.dumps(data))


def _ago(at_s: float | None, now_s: float) -> str:
    if at_s is None:
        return "-"
    delta = at_s - now_s
    return f"in {_dur(delta)}" if delta >= 0 else f"{_dur(-delta)} ago"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _engine_args(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key.strip():
            fail(f"--engine-arg {pair!r}: expected KEY=VALUE")
        # A bare KEY switches a flag on (`--engine-arg enforce-eager`).
        out[key.strip()] = value if sep else "true"
    return out


def _spec_body(
    spec: dict[str, Any],
    *,
    engine_arg: list[str] | None,
    drop_engine_arg: list[str] | None,
    tenant: list[str] | None,
    private: bool | None,
    lora_of: str | None,
) -> dict[str, Any]:
    """The JSON of the options that were given (update merges it into the stored spec)."""
    body = spec_fields(spec)
    if lora_of is not None:
        body["kind"] = "lora"
        body["base_model"] = lora_of
    args: dict[str, Any] = _engine_args(engine_arg or [])
    for key in drop_engine_arg or []:
        args[key if key.startswith("--") else "--" + key.replace("_", "-")] = None
    if args:
        body["engine_args"] = args
    visibility: dict[str, Any] = {}
    if tenant:
        visibility = {"public": False, "tenants": tenant}
    if private is not None:
        visibility["public"] = not private
    if visibility:
        body["visibility"] = visibility
    return body


# The options of `models register` and `models update` that are not one spec field each (those are
# generated from the spec's fields by `with_spec_options`).
EngineArg = Annotated[
    list[str] | None, typer.Option("--engine-arg", help="Allow-listed engine argument KEY=VALUE (repeatable).")
]
DropEngineArg = Annotated[list[str] | None, typer.Option("--drop-engine-arg", help="Remove an engine argument.")]
Tenants = Annotated[
    list[str] | None, typer.Option("--tenant", help="Tenant that may use the model (repeatable; makes it private).")
]
LoraOf = Annotated[str | None, typer.Option("--lora-of", help="Register a LoRA adapter on this base model.")]


def _print_notes(result: dict[str, Any]) -> None:
    for note in result.get("notes") or []:
        console.print(f"  note: {note}", markup=False, highlight=False)
    for warning in result.get("warnings") or []:
        console.print(f"  warning: {warning}", markup=False, highlight=False, style="yellow")


@models_app.command("register")
@with_spec_options
def models_register(
    name: Annotated[str, typer.Argument(help="Model name: a DNS label.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    engine_arg: EngineArg = None,
    tenant: Tenants = None,
    private: Annotated[bool, typer.Option("--private", help="Visible only to its tenants.")] = False,
    lora_of: LoraOf = None,
    **spec: Any,
) -> None:
    """Register a model (or, with --lora-of, a LoRA adapter on a base model)."""
    if spec.get("source") is None and spec.get("external_url") is None:
        fail("models register needs --source (or --external-url for an external route)")
    body = {"name": name} | _spec_body(
        spec,
        engine_arg=engine_arg,
        drop_engine_arg=None,
        tenant=tenant,
        private=True if private else None,
        lora_of=lora_of,
    )
    result = AdminClient(url, token).call("POST", "/v1/models", body=body)
    registered = result["model"]
    res = registered["resources"]
    what = (
        f"adapter on {registered['base_model']}"
        if registered["kind"] == "lora"
        else f"{res['gpus']} GPU(s) x {res['nodes']} node(s)"
    )
    if registered.get("external"):
        what = f"external route to {registered['external']['url']}"
    console.print(f"registered {registered['name']} ({what})", markup=False, highlight=False)
    _print_notes(result)


@models_app.command("update")
@with_spec_options
def models_update(
    name: Annotated[str, typer.Argument(help="The registered model.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    engine_arg: EngineArg = None,
    drop_engine_arg: DropEngineArg = None,
    tenant: Tenants = None,
    private: Annotated[
        bool | None, typer.Option("--private/--public", help="Make the model private or public.", show_default=False)
    ] = None,
    **spec: Any,
) -> None:
    """Change some fields of a model; the others keep their values."""
    body = _spec_body(
        spec,
        engine_arg=engine_arg,
        drop_engine_arg=drop_engine_arg,
        tenant=tenant,
        private=private,
        lora_of=None,
    )
    if not body:
        fail("nothing to update: give at least one option")
    result = AdminClient(url, token).call("PATCH", f"/v1/models/{_seg(name)}", body=body)
    console.print(f"updated {result['model']['name']}", markup=False, highlight=False)
    _print_notes(result)


def _seg(value: str) -> str:
    """A path segment: names are validated server-side, but never let one add path components."""
    from urllib.parse import quote

    return quote(value, safe="")


@models_app.command("remove")
def models_remove(name: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Remove a model (its schedules and warm requests go with it; running instances drain)."""
    AdminClient(url, token).call("DELETE", f"/v1/models/{_seg(name)}")
    console.print(f"removed {name}", markup=False, highlight=False)


@models_app.command("list")
def models_list(url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Models you can see, with their phase."""
    data = AdminClient(url, token).call("GET", "/v1/models")["data"]
    if as_json:
        _print_json(data)
        return
    table = Table("model", "kind", "source", "served as", "GPUs", "replicas", "visibility", "phase")
    for row in data:
        spec, phase = row["model"], row["phase"]
        res, pol, vis = spec["resources"], spec["policy"], spec["visibility"]
        kind = f"lora of {spec['base_model']}" if spec["kind"] == "lora" else "base"
        gpus = "-" if spec["kind"] == "lora" else f"{res['gpus']}x{res['nodes']}"
        visible = (
            "public" if vis["public"] else "private: " + ", ".join(vis["tenants"] or [spec.get("owner_tenant") or "-"])
        )
        names = ", ".join([spec.get("served_name") or spec["name"], *spec["aliases"]])
        table.add_row(
            spec["name"],
            kind,
            spec["source"] or ("external: " + spec["external"]["url"] if spec.get("external") else ""),
            names,
            gpus,
            f"{pol['min_replicas']}-{pol['max_replicas']}",
            visible,
            phase["phase"],
        )
    console.print(table)


@models_app.command("show")
def models_show(name: str, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """One model: its spec, status, adapters and schedules."""
    data = AdminClient(url, token).call("GET", f"/v1/models/{_seg(name)}")
    if as_json:
        _print_json(data)
        return
    spec, status = data["model"], data["status"]
    table = Table(show_header=False, title=spec["name"])
    table.add_column("field", style="bold")
    table.add_column("value")
    for key in (
        "kind",
        "base_model",
        "source",
        "served_name",
        "aliases",
        "owner_tenant",
        "visibility",
        "engine_args",
        "resources",
        "policy",
        "external",
    ):
        value = spec.get(key)
        if value in (None, [], {}):
            continue
        table.add_row(key, Text(json.dumps(value) if not isinstance(value, str) else value))
    from slurmless.cli_status import cold_start_text, phase_text

    table.add_row("phase", Text(phase_text(status, time.time())))
    table.add_row("replicas", f"{_opt(status['desired'])} desired / {status['actual']} ready")
    table.add_row("queue", str(status["queue_depth"]))
    table.add_row("last cold start", cold_start_text(status, time.time()))
    if data["adapters"]:
        table.add_row("adapters", ", ".join(data["adapters"]))
    for sched in data["schedules"]:
        table.add_row(
            f"schedule {sched['id']}", Text(f"{sched['summary']}, {sched['replicas']} replica(s), {sched['timezone']}")
        )
    console.print(table)


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


@models_app.command("warm")
def models_warm(
    name: str,
    url: Url = DEFAULT_URL,
    token: Token = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the phases until the model answers.")] = False,
    duration_s: Annotated[float, typer.Option("--duration-s", help="Keep it warm this long.")] = 1800.0,
    replicas: Annotated[int, typer.Option(help="Replicas to keep warm.")] = 1,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Give up waiting after this long.")] = 3600.0,
    poll_s: Annotated[float, typer.Option("--poll-s", help="Seconds between status polls.")] = 1.0,
) -> None:
    """Warm a model now (for --duration-s); with --wait, show its phases until it is ready."""
    client = AdminClient(url, token)
    result = client.call("POST", f"/v1/models/{_seg(name)}/warm", body={"duration_s": duration_s, "replicas": replicas})
    warm = result["warm"]
    console.print(
        f"warming {warm['model']}: {warm['replicas']} replica(s) for {_dur(duration_s)}", markup=False, highlight=False
    )
    if not wait:
        return
    from slurmless.cli_status import follow_phases

    started = time.monotonic()
    status = follow_phases(client, name, timeout_s=timeout_s, poll_s=poll_s)
    elapsed_s = time.monotonic() - started
    if status.get("phase") == "ready":
        console.print(f"{name} is ready after {_dur(elapsed_s)}", markup=False, highlight=False)
        return
    if status.get("phase") == "failed":
        fail(f"{name} failed to start: {status.get('detail') or 'see slurmless events --model ' + name}")
    fail(f"{name} is not ready after {_dur(elapsed_s)} (phase {status.get('phase')})")


# --- schedules -----------------------------------------------------------------------------


@schedules_app.command("add")
def schedules_add(
    model: str,
    url: Url = DEFAULT_URL,
    token: Token = None,
    cron: Annotated[str | None, typer.Option(help="Cron expression, e.g. '0 8 * * 1-5'.")] = None,
    duration_s: Annotated[float | None, typer.Option("--duration-s", help="Length of each cron window.")] = None,
    ics: Annotated[Path | None, typer.Option(help="An .ics timetable file.")] = None,
    tz: Annotated[str, typer.Option("--tz", help="Time zone of the schedule.")] = "UTC",
    replicas: Annotated[int, typer.Option(help="Replicas during each window.")] = 1,
) -> None:
    """Keep MODEL warm during cron windows or the events of an .ics timetable."""
    if (cron is None) == (ics is None):
        fail("give exactly one of --cron or --ics")
    body: dict[str, Any] = {"timezone": tz, "replicas": replicas}
    if cron is not None:
        if duration_s is None:
            fail("--cron needs --duration-s")
        body |= {"kind": "cron", "expression": cron, "duration_s": duration_s}
    else:
        assert ics is not None
        try:
            if ics.stat().st_size > ICS_MAX_BYTES:
                fail(f"{ics} is larger than {ICS_MAX_BYTES} bytes")
            feed = ics.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {ics}: {exc}")
        body |= {"kind": "ics", "ics": feed}
    result = AdminClient(url, token).call("POST", f"/v1/models/{_seg(model)}/schedules", body=body)
    sched = result["schedule"]
    console.print(f"added schedule {sched['id']} to {model}: {sched['summary']}", markup=False, highlight=False)


@schedules_app.command("list")
def schedules_list(
    model: Annotated[str | None, typer.Argument(help="Only this model's schedules.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Schedules of one model or all."""
    path = f"/v1/models/{_seg(model)}/schedules" if model else "/v1/schedules"
    data = AdminClient(url, token).call("GET", path)["data"]
    if as_json:
        _print_json(data)
        return
    table = Table("id", "model", "kind", "schedule", "tz", "replicas")
    for s in data:
        table.add_row(s["id"], s["model"], s["kind"], s["summary"], s["timezone"], str(s["replicas"]))
    console.print(table)


@schedules_app.command("remove")
def schedules_remove(model: str, schedule_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Remove one schedule of a model."""
    AdminClient(url, token).call("DELETE", f"/v1/models/{_seg(model)}/schedules/{_seg(schedule_id)}")
    console.print(f"removed schedule {schedule_id} of {model}", markup=False, highlight=False)


# --- keys ----------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The key's tenant.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    name: Annotated[str, typer.Option(help="A label, e.g. the holder's name.")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="May use the whole admin API.")] = False,
    can_register: Annotated[bool, typer.Option("--can-register", help="May register models for its tenant.")] = False,
    operator: Annotated[bool, typer.Option("--operator", help="May look at the status page (/ui/).")] = False,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at once.")] = None,
    expires_in: Annotated[float | None, typer.Option(help="Seconds until the key stops working.")] = None,
) -> None:
    """Create a key and print it: this is the only time it is shown."""
    body = {
        "tenant": tenant,
        "name": name,
        "admin": admin,
        "can_register": can_register,
        "operator": operator,
        "rpm_limit": rpm,
        "concurrency_limit": concurrency,
        "expires_in_s": expires_in,
    }
    result = AdminClient(url, token).call("POST", "/v1/keys", body=body)
    record = result["record"]
    err_console.print(
        f"created key {record['key_id']} for tenant {record['tenant']}; store it now, it is not shown again:",
        markup=False,
        highlight=False,
    )
    # The key alone on stdout, so that `KEY=$(slurmless keys create ...)` works.
    print(result["key"])


@keys_app.command("revoke")
def keys_revoke(key_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Revoke a key by its id (gateways stop accepting it within their key cache TTL)."""
    AdminClient(url, token).call("DELETE", f"/v1/keys/{_seg(key_id)}")
    console.print(f"revoked {key_id}", markup=False, highlight=False)


@keys_app.command("list")
def keys_list(
    url: Url = DEFAULT_URL,
    token: Token = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: AsJson = False,
) -> None:
    """Keys (ids and rights, never the secrets)."""
    data = AdminClient(url, token).call("GET", "/v1/keys", params={"tenant": tenant})["data"]
    if as_json:
        _print_json(data)
        return
    table = Table("key id", "tenant", "name", "rights", "rpm", "concurrency", "state")
    for r in data:
        flags = (("admin", r["admin"]), ("register", r["can_register"]), ("operator", r.get("operator")))
        rights = ", ".join(x for x, on in flags if on) or "use"
        table.add_row(
            r["key_id"],
            r["tenant"],
            r["name"],
            rights,
            _opt(r["rpm_limit"]),
            _opt(r["concurrency_limit"]),
            "revoked" if r["revoked"] else "active",
        )
    console.print(table)


# --- tenants -------------------------------------------------------------------------------


@tenants_app.command("create")
def tenants_create(
    name: str,
    url: Url = DEFAULT_URL,
    token: Token = None,
    description: Annotated[str, typer.Option(help="What the tenant is.")] = "",
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", help="Requests in flight at once.")] = None,
    max_models: Annotated[int | None, typer.Option("--max-models", help="Models it may own.")] = None,
    account: Annotated[
        str | None, typer.Option("--account", help="Slurm account its jobs run under (one the site allows).")
    ] = None,
) -> None:
    """Create a tenant (a group, course or project) with optional quotas."""
    body = {
        "name": name,
        "description": description,
        "max_concurrent_requests": max_concurrent,
        "max_models": max_models,
        "account": account,
    }
    AdminClient(url, token).call("POST", "/v1/tenants", body=body)
    console.print(f"created tenant {name}", markup=False, highlight=False)


@tenants_app.command("list")
def tenants_list(url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Tenants, their quotas and how many models they own."""
    data = AdminClient(url, token).call("GET", "/v1/tenants")["data"]
    if as_json:
        _print_json(data)
        return
    table = Table("tenant", "description", "max concurrent", "models / max")
    for t in data:
        table.add_row(
            t["name"],
            t["description"],
            _opt(t["max_concurrent_requests"]),
            f"{t['models']} / {_opt(t['max_models'])}",
        )
    console.print(table)


def _idle_budget(value: object) -> str:
    return "the site's" if value is None else f"{value:g} GPU-h/day"


@tenants_app.command("set-quota")
def tenants_set_quota(
    name: str,
    url: Url = DEFAULT_URL,
    token: Token = None,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent")] = None,
    max_models: Annotated[int | None, typer.Option("--max-models")] = None,
    unlimited_concurrent: Annotated[bool, typer.Option("--unlimited-concurrent")] = False,
    unlimited_models: Annotated[bool, typer.Option("--unlimited-models")] = False,
    idle_gpu_hours_per_day: Annotated[
        float | None,
        typer.Option("--idle-gpu-hours-per-day", help="Idle GPU-hours a day the tenant's models may spend warm."),
    ] = None,
    site_idle_budget: Annotated[
        bool, typer.Option("--site-idle-budget", help="Price the tenant's models with the site's budget again.")
    ] = False,
) -> None:
    """Change a tenant's quotas."""
    body: dict[str, Any] = {}
    if idle_gpu_hours_per_day is not None and not 0 < idle_gpu_hours_per_day <= 1_000_000:
        fail("--idle-gpu-hours-per-day must be above 0 and at most 1000000")
    if idle_gpu_hours_per_day is not None or site_idle_budget:
        body["idle_gpu_hours_per_day"] = None if site_idle_budget else idle_gpu_hours_per_day
    if max_concurrent is not None or unlimited_concurrent:
        body["max_concurrent_requests"] = None if unlimited_concurrent else max_concurrent
    if max_models is not None or unlimited_models:
        body["max_models"] = None if unlimited_models else max_models
    if not body:
        fail("nothing to set: give --max-concurrent, --max-models, --idle-gpu-hours-per-day or an --unlimited-* flag")
    t = AdminClient(url, token).call("PATCH", f"/v1/tenants/{_seg(name)}", body=body)
    console.print(
        f"tenant {t['name']}: max concurrent {_opt(t['max_concurrent_requests'])}, max models {_opt(t['max_models'])}"
        f", idle budget {_idle_budget(t.get('idle_gpu_hours_per_day'))}",
        markup=False,
        highlight=False,
    )
