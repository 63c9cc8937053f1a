"""Redis ACL users, one per role, so that a compromised process can do only its own role's writes.

Built from the key schema (`warmpool.keys`): every pattern is a key family of one prefix.

- `gateway`: reads the registry, keys, tenants, instance addresses and (for the status page) the
  launcher's decisions; writes queues, tickets, slots, leases, demand (and the set of models it
  changed, `dirty`), per-key limits, async requests, status-page sessions, files and batches. It
  cannot write instance records, the registry, API keys or tenants: a compromised gateway cannot
  redirect traffic or mint keys.
- `launcher`: reads the registry and tenants; writes instances, routing, phases, history, its
  lease and its answers to feasibility questions (plus arq's own keys). It never reads `async:*`
  (async prompts and answers) nor API keys.
- `admin`: the admin API and `slurmless up`'s bootstrap: every key of the deployment.

Scripts are checked too: Redis applies a user's key permissions to each command a Lua script runs.
Commands: everything but the dangerous and admin categories (CONFIG, FLUSHALL, ACL, KEYS, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

# Key families as suffixes of the prefix (see `Keys`).
_REGISTRY = ("models", "models:version", "aliases")
_ROUTING = ("ready:*", "q:*", "qmodels", "qtotal", "seq", "t:*", "gw:*", "gateways", "dirty")
_HISTORY = ("dem:*", "idle:*", "gaps:*", "mstat:*")

GATEWAY_READ = (
    *_REGISTRY,
    "apikeys",
    "tenants",
    "inst:*",
    "instances",
    "minst:*",
    "caps",
    "phase:*",
    # What the status page (/ui/) shows: the launcher's decisions, timelines and state.
    "desired",
    "events",
    "tl:*",
    "schedules:*",
    "warm:*",
    "launcher:leader",
    "ibudget:*",
    "launcher:leader:*",
    "clusters",
)
_BATCHES = (
    *("file:*", "files:*", "batch:*", "batches:*", "bactive", "bactive:*"),
    *("bpend:*", "bown:*", "bdone:*", "bflight:*", "bdem:*", "bwait"),
)
"""The Files and Batches API's records and the batch lines' state (written by gateways and batch workers)."""
GATEWAY_WRITE = (*_ROUTING, *_HISTORY, "cold:*", "klim:*", "tlim:*", "async:*", "asyncq", "uisess:*", *_BATCHES)
LAUNCHER_READ = (*_REGISTRY, "tenants", "bflight:*", "bwait")
"""`bflight:*` and `bwait`: batch lines in flight (left out of the load it scales on) and batch demand."""
LAUNCHER_WRITE = (
    *_ROUTING,
    *_HISTORY,
    "inst:*",
    "instances",
    "minst:*",
    "caps",
    "phase:*",
    "desired",
    "events",
    "launcher:leader",
    # Several clusters: each one's leader lease, status and start estimates, and the submission claim.
    "launcher:leader:*",
    "clusters",
    "cest:*",
    "claim:*",
    "schedules:*",
    "warm:*",
    "tgpu:*",
    "tgpuh:*",
    "ibudget:*",
    "tl:*",
    "cold:*",
    # Answers to the admin API's "can the cluster run this spec?" (`warmpool.feasibility`).
    "feas:*",
    # The launcher's arq queue lives under the prefix (`launcher.worker.queue_name`), with its health-check key.
    "arq:*",
)
LAUNCHER_OTHER = ("arq:*",)
"""Keys outside the prefix: arq's own job, result and in-progress keys."""
COMMANDS = "+@all -@dangerous -@admin"
"""No KEYS, FLUSHALL, CONFIG, ACL, DEBUG, ... (redis-py ignores the refusal of its optional CLIENT SETINFO)."""

LAUNCHER_EXTRA = "+info +dbsize"
"""arq's worker logs the server's INFO and DBSIZE when it starts."""

ROLES = ("gateway", "launcher", "admin")


@dataclass(frozen=True, slots=True)
class RoleUser:
    """One role's user: its name, password and ACL rule (without the password)."""

    name: str
    password: str
    rules: str

    def acl_line(self) -> str:
        """The `user` directive's arguments (as in an ACL file, after `user`)."""
        return f"{self.name} on >{self.password} {self.rules}"


def _patterns(prefix: str, read: tuple[str, ...], write: tuple[str, ...]) -> str:
    parts = [f"%R~{prefix}{k}" for k in read] + [f"~{prefix}{k}" for k in write]
    return " ".join(parts)


def role_rules(role: str, prefix: str) -> str:
    """The ACL rule of `role` for a deployment `prefix` (keys, channels, commands)."""
    channels = f"resetchannels &{prefix}*"
    if role == "gateway":
        keys = _patterns(prefix, GATEWAY_READ, GATEWAY_WRITE)
    elif role == "launcher":
        keys = _patterns(prefix, LAUNCHER_READ, LAUNCHER_WRITE) + " " + " ".join(f"~{k}" for k in LAUNCHER_OTHER)
        return f"resetkeys {keys} {channels} {COMMANDS} {LAUNCHER_EXTRA}"
    elif role == "admin":
        keys = f"~{prefix}*"
    else:
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    return f"resetkeys {keys} {channels} {COMMANDS}"


def role_users(prefix: str, passwords: dict[str, str]) -> list[RoleUser]:
    """A user per role (named after it), with the given passwords."""
    return [RoleUser(role, passwords[role], role_rules(role, prefix)) for role in ROLES]


def url_for(base_url: str, user: str, password: str) -> str:
    """`base_url` (redis://host:port/db) with this user's credentials."""
    scheme, _, rest = base_url.partition("://")
    rest = rest.rpartition("@")[2]
    return f"{scheme}://{user}:{password}@{rest}"
