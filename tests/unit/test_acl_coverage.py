"""Every key family of the schema is granted to some process role: a new key without an ACL entry fails here,
not as a `NoPermissionError` inside the launcher's tick on a live `slurmless up`."""

from __future__ import annotations

import inspect
from fnmatch import fnmatchcase

from launcher.worker import QUEUE_SUFFIX
from warmpool.acl import GATEWAY_READ, GATEWAY_WRITE, LAUNCHER_READ, LAUNCHER_WRITE
from warmpool.keys import Keys

PREFIX = "sl:"
CHANNELS = {"gw_channel", "demand_channel", "feasibility_channel"}
"""Pub/sub channels, granted by the `&prefix*` channel rule rather than key patterns."""
ADMIN_ONLY: set[str] = set()
"""Key families only the admin API touches (none today: the gateway reads keys and tenants to authenticate)."""


def schema_keys() -> dict[str, str]:
    """One concrete key per family: each `Keys` method or property, called with placeholder arguments."""
    keys = Keys(PREFIX)
    out: dict[str, str] = {}
    for name, member in inspect.getmembers(type(keys)):
        if name.startswith("_") or name in CHANNELS or name == "prefix":
            continue
        if isinstance(member, property):
            value = getattr(keys, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            value = member(keys, *[1 if p in {"minute", "day"} else "x" for p in params])
        else:
            continue
        if isinstance(value, str) and value.startswith(PREFIX):
            out[name] = value
    return out


def granted(key: str, families: tuple[str, ...]) -> bool:
    return any(fnmatchcase(key, PREFIX + family) for family in families)


def test_every_key_family_is_granted_to_a_process_role() -> None:
    keys = schema_keys()
    assert len(keys) > 40, sorted(keys)
    roles = (*GATEWAY_READ, *GATEWAY_WRITE, *LAUNCHER_READ, *LAUNCHER_WRITE)
    missing = sorted(
        f"{name} ({key})" for name, key in keys.items() if name not in ADMIN_ONLY and not granted(key, roles)
    )
    assert missing == []


def test_the_launcher_may_write_what_its_snapshot_and_admit_history_touch() -> None:
    keys = Keys(PREFIX)
    for key in (keys.gaps("m"), keys.idle_hist("m"), keys.demand("m"), keys.model_stats("m")):
        assert granted(key, LAUNCHER_WRITE), key


def test_the_launcher_may_use_its_arq_queue() -> None:
    # arq keeps the queue and its health-check key under the queue's name, which carries the prefix.
    queue = PREFIX + QUEUE_SUFFIX
    for key in (queue, queue + ":health-check"):
        assert granted(key, LAUNCHER_WRITE), key


def test_the_check_finds_an_ungranted_family() -> None:
    assert not granted(PREFIX + "newfamily:m", (*GATEWAY_READ, *GATEWAY_WRITE, *LAUNCHER_READ, *LAUNCHER_WRITE))
