"""Is a registering job really on the node Slurm placed it on? The callback's host check.

A callback token proves only that the caller read the job's script. So that a stolen token cannot
point a model's traffic elsewhere, the registered host must be one of the names or addresses Slurm
knows the job's batch host by (`BatchHost` from squeue; its `NodeAddr` and `NodeHostname` from
sinfo), directly or through DNS. Loopback, link-local, unspecified and multicast addresses are
refused unless `allow_loopback` (a single-machine dev cluster, whose node address is 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable

from slurm.backend import SlurmBackend
from slurm.errors import SlurmError

Resolver = Callable[[str], Awaitable[frozenset[str]]]

NODE_CACHE_S = 600.0
"""Node addresses change only when an admin edits slurm.conf: ask sinfo once per node per ten minutes."""
RESOLVE_TIMEOUT_S = 5.0


async def resolve(name: str) -> frozenset[str]:
    """The addresses a name resolves to (empty when it does not), bounded by `RESOLVE_TIMEOUT_S`."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    except (OSError, TimeoutError, UnicodeError):
        return frozenset()
    return frozenset(str(info[4][0]) for info in infos)


def _unroutable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast


class HostCheck:
    """`problem(job_id, host)`: why a job may not register `host` (None when it may)."""

    def __init__(
        self,
        slurm: SlurmBackend,
        *,
        allow_loopback: bool = False,
        resolver: Resolver = resolve,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.slurm = slurm
        self.allow_loopback = allow_loopback
        self.resolver = resolver
        self.clock = clock or time.monotonic
        self._nodes: dict[str, tuple[float, tuple[str, ...]]] = {}

    async def _node_names(self, node: str) -> tuple[str, ...]:
        now = self.clock()
        cached = self._nodes.get(node)
        if cached is not None and now - cached[0] < NODE_CACHE_S:
            return cached[1]
        names = await self.slurm.node_addresses(node)
        self._nodes[node] = (now, names)
        return names

    async def problem(self, job_id: int, host: str, *, batch_host: str | None = None) -> str | None:
        """Why `host` is not job `job_id`'s node; `batch_host` is the node a tick already read from squeue."""
        host = host.strip("[]").lower()
        own = {host} if _is_address(host) else set(await self.resolver(host))
        if not own:
            return f"host {host} does not resolve"
        if not self.allow_loopback and any(_unroutable(a) for a in own):
            return f"host {host} is a loopback or link-local address (allow_loopback_engines is off)"
        try:
            if not batch_host:
                job = await self.slurm.job(job_id)
                if job is None or not job.batch_host:
                    return f"Slurm lists no running job {job_id} of slurmless with a batch host"
                batch_host = job.batch_host
            names = await self._node_names(batch_host)
        except SlurmError as exc:
            return f"could not ask Slurm for job {job_id}'s batch host: {str(exc)[:200]}"
        allowed = {n.lower() for n in names}
        if host in allowed:
            return None
        for name in names:
            allowed |= {name} if _is_address(name) else set(await self.resolver(name))
        if own & allowed:
            return None
        return f"host {host} is not job {job_id}'s batch host {batch_host} ({', '.join(names)})"


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True
