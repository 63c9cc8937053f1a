"""`SlurmRest`: the Slurm backend that talks to slurmrestd over HTTP (httpx), authenticated by JWT.

For sites where the launcher has no `sbatch` but may reach slurmrestd. It speaks one OpenAPI
version, chosen at the first call as the newest that both this module and the server know
(`KNOWN_APIS`: v0.0.38 on Slurm 22.05, v0.0.41-v0.0.45 on 24.11-26.05) unless one is configured.
Job and node listings have the JSON shapes of `squeue --json`/`sinfo --json` of the same release,
so `slurm.parse` reads them; submissions carry the script's `#SBATCH` options as job properties
(`slurm.rest_job`).

Errors are mapped once, in `_request`, to the same tree as the CLI backend:

* no connection, a timeout, 401/403, 5xx without a Slurm error, any failed listing, a body that
  is not the JSON we expect -> `SlurmUnavailable` (retried with backoff): never "every job is gone";
* a submission is retried only when the connection was never made (a duplicate job is worse);
* a Slurm error naming an unknown job -> `JobNotFound`; other Slurm errors -> `SlurmCommandError`.

A token file is re-read after a 401 (tokens expire; `scontrol token` writes a new one).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from slurm.cli_backend import CommandHook
from slurm.errors import JobNotFound, NotSupported, SlurmCommandError, SlurmParseError, SlurmUnavailable
from slurm.parse import parse_sinfo, parse_squeue, partitions_from_nodes
from slurm.rest_job import job_description
from slurm.retry import slurm_retrying
from slurm.types import NodeInfo, Partition, SlurmJob, StartEstimate
from slurm.validate import check_slurm_word

__all__ = ["KNOWN_APIS", "SlurmRest"]

T = TypeVar("T")

KNOWN_APIS = ("v0.0.45", "v0.0.44", "v0.0.43", "v0.0.42", "v0.0.41", "v0.0.38")
"""OpenAPI versions this backend speaks, newest first."""
_TRANSIENT_WORDS = ("Unable to contact slurm controller", "Socket timed out", "temporarily", "Connection refused")
_NOT_FOUND_WORDS = ("Invalid job id", "already completing or completed", "Job does not exist", "Unknown job")


class _NotSent(SlurmUnavailable):
    """The request never left (no connection): even a submission may be retried."""


class SlurmRest:
    """A `SlurmBackend` on slurmrestd.

    Args:
        url: slurmrestd's base URL ("http://host:6820").
        user_name: sent as X-SLURM-USER-NAME; the token must be issued for this user.
        token: a JWT; or `token_file`, read at the first call and again after every 401.
        api_version: force one OpenAPI version; None picks the newest both sides know.
        timeout_s: per-request timeout.
        job_name_prefix: names of slurmless jobs start with this; `jobs()` keeps only those.
        job_env: environment jobs start with (sbatch would copy the submitter's).
        transport: an httpx transport (tests put a failing server in front).
    """

    def __init__(
        self,
        url: str,
        *,
        user_name: str = "root",
        token: str | None = None,
        token_file: Path | None = None,
        api_version: str | None = None,
        timeout_s: float = 30.0,
        job_name_prefix: str = "slurmless-",
        job_env: Mapping[str, str] | None = None,
        retry_attempts: int = 3,
        retry_wait_s: float = 0.5,
        on_command: CommandHook | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if api_version is not None and api_version not in KNOWN_APIS:
            raise ValueError(f"unknown slurmrestd API {api_version!r} (known: {', '.join(KNOWN_APIS)})")
        if token is None and token_file is None:
            raise ValueError("the rest backend needs a token or a token_file (scontrol token)")
        self.url = url.rstrip("/")
        self.user_name = user_name
        self.token_file = token_file
        self._token = token
        self.api_version = api_version
        self.timeout_s = timeout_s
        self.job_name_prefix = job_name_prefix
        self.job_env = dict(job_env or {})
        self.retry_attempts = retry_attempts
        self.retry_wait_s = retry_wait_s
        self.on_command = on_command
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        #: Requests made, by operation ("submit", "jobs", ...), including retries.
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    # --- the SlurmBackend interface -------------------------------------------------------------

    async def submit(self, script: str) -> int:
        """POST the script with its `#SBATCH` options as job properties; return the job id."""
        api = await self.api()
        job = job_description(script, api, self.job_env)
        body: dict[str, Any] = {"script": script, "job": job} if api == "v0.0.38" else {"job": job}
        doc = await self._call(
            "submit", "POST", self._path(api, "job/submit"), json=body, retry_on=(_NotSent,), parse=_as_is
        )
        job_id = doc.get("job_id")
        if job_id is None and isinstance(doc.get("result"), Mapping):
            job_id = doc["result"].get("job_id")
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            raise SlurmUnavailable("slurmrestd submit", f"no job id in the answer: {_short(doc)}")
        return job_id

    async def jobs(self) -> list[SlurmJob]:
        """This user's jobs whose name starts with `job_name_prefix` (ended ones too, for `MinJobAge`)."""
        api = await self.api()
        jobs = await self._call("jobs", "GET", self._path(api, "jobs"), parse=parse_squeue)
        return [j for j in jobs if j.name.startswith(self.job_name_prefix) and j.user_name in ("", self.user_name)]

    async def job(self, job_id: int) -> SlurmJob | None:
        """One slurmless job by id, or None if the controller no longer lists it."""
        return next((j for j in await self.jobs() if j.job_id == job_id), None)

    async def cancel(self, job_id: int) -> None:
        """DELETE the job; one that has already ended is not an error."""
        api = await self.api()
        try:
            await self._call("cancel", "DELETE", self._path(api, f"job/{int(job_id)}", slash=False), parse=_as_is)
        except JobNotFound:
            return

    async def signal(self, job_id: int, signal: str, *, batch_only: bool = True) -> None:
        """Send `signal` to the job (v0.0.41+: to the batch shell alone when `batch_only`).

        v0.0.38 has no flag for the batch shell: the signal goes to the job as a whole.
        """
        api = await self.api()
        params = {"signal": signal}
        if batch_only and api != "v0.0.38":
            params["flags"] = "BATCH_JOB"
        await self._call(
            "signal", "DELETE", self._path(api, f"job/{int(job_id)}", slash=False), params=params, parse=_as_is
        )

    async def estimate_start(
        self, script: str, *, partition: str | None = None, qos: str | None = None
    ) -> StartEstimate:
        """slurmrestd has no `--test-only`: always `NotSupported` (placement then keeps its first choice)."""
        raise NotSupported("slurmrestd", 0, "no start estimates over REST (sbatch --test-only has no endpoint)")

    async def nodes(self) -> list[NodeInfo]:
        api = await self.api()
        return await self._call("nodes", "GET", self._path(api, "nodes"), parse=parse_sinfo)

    async def node_addresses(self, node: str) -> tuple[str, ...]:
        """The node's name, address and hostname, from its node record."""
        check_slurm_word(node, "node name")
        api = await self.api()
        path = self._path(api, f"node/{node}", slash=False)
        doc = await self._call("node", "GET", path, parse=_as_is)
        found = [n for n in doc.get("nodes") or [] if isinstance(n, Mapping) and n.get("name") == node]
        if not found:
            raise SlurmUnavailable("slurmrestd node", f"no record of node {node!r} in the answer")
        words = [node, str(found[0].get("address") or ""), str(found[0].get("hostname") or "")]
        return tuple(dict.fromkeys(w for w in words if w and w != "(null)"))

    async def partitions(self) -> list[Partition]:
        return partitions_from_nodes(await self.nodes())

    # --- beyond the protocol --------------------------------------------------------------------

    async def api(self) -> str:
        """The OpenAPI version in use, found at the first call: newest `KNOWN_APIS` the server answers."""
        if self.api_version is None:
            for candidate in KNOWN_APIS:
                try:
                    await self._call("ping", "GET", self._path(candidate, "ping"), retry_on=(), parse=_as_is)
                except SlurmCommandError:
                    continue  # 404: the server does not speak this version
                self.api_version = candidate
                break
            else:
                raise SlurmUnavailable("slurmrestd", f"{self.url} speaks none of {', '.join(KNOWN_APIS)}")
        return self.api_version

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- requests -------------------------------------------------------------------------------

    @staticmethod
    def _path(api: str, what: str, *, slash: bool = True) -> str:
        # v0.0.38 routes have no trailing slash; v0.0.4x list routes have one.
        return f"/slurm/{api}/{what}" + ("/" if slash and api != "v0.0.38" and what != "job/submit" else "")

    def _headers(self) -> dict[str, str]:
        if self._token is None and self.token_file is not None:
            self._token = _read_token(self.token_file)
        return {"X-SLURM-USER-NAME": self.user_name, "X-SLURM-USER-TOKEN": self._token or ""}

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        retry_on: tuple[type[Exception], ...] = (SlurmUnavailable,),
        parse: Callable[[Mapping[str, Any]], T],
    ) -> T:
        """One request with retries; `parse` reads the answer inside each attempt (a shape we do not
        know is an unusable slurmrestd, retried like one, never an empty cluster)."""
        async for attempt in slurm_retrying(self.retry_attempts, self.retry_wait_s, retry_on):
            with attempt:
                doc = await self._request(what, method, path, json=json, params=params)
                try:
                    return parse(doc)
                except SlurmParseError as exc:
                    self.failures[what] += 1
                    raise SlurmUnavailable(f"slurmrestd {what}", f"unexpected answer: {exc}") from exc
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _request(
        self, what: str, method: str, path: str, *, json: Any, params: Mapping[str, str] | None
    ) -> Mapping[str, Any]:
        self.calls[what] += 1
        started = time.monotonic()
        ok = False
        name = f"slurmrestd {what}"
        try:
            if self._client is None:
                self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, transport=self._transport)
            try:
                resp = await self._client.request(method, path, json=json, params=params, headers=self._headers())
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise _NotSent(name, f"{self.url}: {exc!r}") from exc
            except httpx.HTTPError as exc:
                raise SlurmUnavailable(name, f"{self.url}: {exc!r}") from exc
            if resp.status_code in (401, 403) and self.token_file is not None:
                self._token = None  # read the file again on the retry: the token may have been renewed
            doc = _classify(name, resp, listing=method == "GET")
            ok = True
            return doc
        finally:
            if not ok:
                self.failures[what] += 1
            if self.on_command is not None:
                self.on_command(name, time.monotonic() - started, ok)


def _classify(name: str, resp: httpx.Response, *, listing: bool) -> Mapping[str, Any]:
    """The answer's JSON document, or the error it stands for.

    A listing (GET) that fails says nothing about any job: whatever the error, Slurm is unavailable
    (22.05 answers a refused token on /jobs with 500 "Failed while looking for jobs", not 401).
    """
    try:
        doc = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        if resp.status_code == 404:
            raise SlurmCommandError(name, 404, f"no such route: {resp.url.path}")
        raise SlurmUnavailable(name, f"HTTP {resp.status_code}, not a JSON object: {resp.text[:200]!r}")
    messages = _error_messages(doc)
    text = "; ".join(messages)
    if any(w.lower() in text.lower() for w in _NOT_FOUND_WORDS):
        raise JobNotFound(name, resp.status_code, text)
    if resp.status_code in (401, 403):
        raise SlurmUnavailable(name, f"HTTP {resp.status_code} (token refused): {text or resp.text[:200]}")
    if resp.status_code == 404 and not messages:
        raise SlurmCommandError(name, 404, f"no such route: {resp.url.path}")
    if resp.status_code >= 500 and (not messages or any(w.lower() in text.lower() for w in _TRANSIENT_WORDS)):
        raise SlurmUnavailable(name, f"HTTP {resp.status_code}: {text or resp.text[:200]}")
    if resp.status_code >= 400:
        if listing or any(w.lower() in text.lower() for w in _TRANSIENT_WORDS):
            raise SlurmUnavailable(name, f"HTTP {resp.status_code}: {text}")
        raise SlurmCommandError(name, resp.status_code, text or resp.text[:500])
    return doc


def _error_messages(doc: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for err in doc.get("errors") or []:
        if isinstance(err, Mapping):
            parts = [str(err.get(k)) for k in ("error", "description") if err.get(k)]
            out.append(": ".join(dict.fromkeys(parts)) or repr(dict(err)))
        else:
            out.append(str(err))
    # v0.0.42+ answers a DELETE with 200 and one status per job, each with its own error.
    for status in doc.get("status") or []:
        err = status.get("error") if isinstance(status, Mapping) else None
        if isinstance(err, Mapping) and err.get("code"):
            out.append(str(err.get("message") or err.get("string") or err))
    return out


def _as_is(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc


def _read_token(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise SlurmUnavailable("slurmrestd", f"cannot read the token file {path}: {exc}") from exc
    return text.removeprefix("SLURM_JWT=")


def _short(doc: Any) -> str:
    return repr(doc)[:300]
