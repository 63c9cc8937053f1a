"""The batch runner: runs batch lines in the idle capacity of ready instances, in every gateway process.

Why in the gateway process: a line goes through the same slots, instances and engine connections as
interactive requests (`Dispatcher.run_on` on a slot taken by `Batches.take`), and every gateway
already holds a lease whose lapse reclaims its slots. Several gateways share the work through Redis:
each line is claimed with its own lease (`line_lease_s`, renewed here), so the lines of a runner that
dies are run again by another once their lease lapses, and a result is recorded only by the claim
that owns the line (see `warmpool.batches`, `batch_output`).

Priority: `take` gives a slot only when no interactive ticket waits for the model and the instance
has less than `headroom_fraction` of its cap in flight, and, while the instance also serves
interactive requests, when it runs fewer than `beside_interactive` batch lines; a line never queues.
So batch work fills gaps at full pace on instances nobody else uses, trickles beside interactive
work, and never delays an interactive request by more than the engine's own cost of the extra load.
One step (`step`) looks at every active batch: it loads a validating batch's lines, fills free
room with lines, and finalizes a batch that is done, expired, or cancelled and drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from queue_gateway.batch_api import BatchApi
from queue_gateway.batch_output import LineFile, PartWriter, assemble, entry
from queue_gateway.catalog import Target
from queue_gateway.dispatch import Call, Dispatcher, settle
from queue_gateway.errors import BadRequest, EngineRejected, GatewayError, NotFound
from queue_gateway.metrics import GatewayMetrics
from queue_gateway.sinks import BufferSink
from queue_gateway.workflows import (
    CHUNKED_PATH,
    WORKFLOW_PATHS,
    parse_chunked,
    parse_tribunal,
    run_chunked,
    run_tribunal,
)
from warmpool.apikeys import ApiKeyRecord
from warmpool.batches import BatchRecord, BatchStatus, Take, TakeOutcome
from warmpool.files import FileRecord
from warmpool.routing import Routing

log = logging.getLogger(__name__)

LOAD_CHUNK = 2000
"""Lines made claimable per round trip while a batch validates (a short Lua step each)."""
SWEEP_EVERY_S = 600.0


@dataclass(eq=False)
class _Running:
    bid: str
    line: int
    token: str
    task: asyncio.Task[None] | None = None


def output_ids(bid: str) -> tuple[str, str]:
    """The result files' ids: fixed per batch, so a finalizer that takes over writes the same ones."""
    tail = bid.removeprefix("batch-")
    return f"file-{tail}-output", f"file-{tail}-errors"


class BatchRunner:
    def __init__(
        self,
        api: BatchApi,
        dispatcher: Dispatcher,
        routing: Routing,
        metrics: GatewayMetrics,
        *,
        gateway_id: str,
        clock: Callable[[], float],
    ) -> None:
        self.api = api
        self.settings = api.settings
        self.dispatcher = dispatcher
        self.routing = routing
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.clock = clock
        self.parts = PartWriter(api.dir, gateway_id)
        self.running: dict[str, _Running] = {}
        self.finalizing: dict[str, asyncio.Task[None]] = {}
        self._lines: dict[str, LineFile] = {}
        self._attempts: dict[tuple[str, int], int] = {}
        self._taking = 0
        """Takes on their way to Redis (counted with `running` against `max_in_flight`)."""
        self._last_sweep_s = 0.0
        self._priority = {"priority": self.settings.line_priority} if self.settings.line_priority else {}
        """The engine priority every line and workflow step carries (`line_priority`)."""

    # --- the loop -------------------------------------------------------------------------------

    async def loop(self) -> None:
        """A full step every `poll_s`; between steps, a finished line makes room for the next of its batch."""
        while True:
            try:
                await self.step()
            except Exception as exc:  # a background loop must never die
                log.warning("batch runner step failed: %r", exc)
            await asyncio.sleep(self.settings.poll_s)

    async def renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.line_lease_s / 3)
            try:
                await self.renew()
            except Exception as exc:
                log.warning("renewing batch line leases failed: %r", exc)

    async def step(self) -> bool:
        """One pass over the active batches; True when it started lines."""
        now = self.clock()
        self._sweep(now)
        bids = await self.api.batches.active()
        records = await self.api.batches.many(bids)
        started = False
        for rec in records:
            if rec is None:
                continue
            if rec.status is BatchStatus.VALIDATING:
                rec.status = await self.api.batches.load(rec.doc.id, good=rec.doc.good, chunk=LOAD_CHUNK, now_s=now)
            if rec.status is BatchStatus.IN_PROGRESS and now < rec.doc.expires_at:
                started = await self._fill(rec) or started
            if rec.doc.id not in self.finalizing:
                final = await self.api.batches.begin_finalize(
                    rec.doc.id, self.gateway_id, now_s=now, lease_s=self.settings.line_lease_s
                )
                if final is not None:
                    self.finalizing[rec.doc.id] = asyncio.get_running_loop().create_task(self._finalize(rec, final))
        active = set(bids)
        for bid in [b for b in self._lines if b not in active]:
            self._lines.pop(bid).close()
        return started

    async def renew(self) -> None:
        by_batch: dict[str, list[tuple[int, str]]] = {}
        for r in self.running.values():
            by_batch.setdefault(r.bid, []).append((r.line, r.token))
        for bid, claims in by_batch.items():
            lost = set(
                await self.api.batches.renew(bid, claims, now_s=self.clock(), lease_s=self.settings.line_lease_s)
            )
            for r in [r for r in self.running.values() if r.bid == bid and r.line in lost]:
                if r.task is not None:
                    r.task.cancel()

    async def shutdown(self) -> None:
        """Stop: lines in flight are given back at once (another runner takes them), nothing is recorded."""
        tasks = [r.task for r in self.running.values() if r.task is not None] + list(self.finalizing.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.parts.close_all()
        for lf in self._lines.values():
            lf.close()
        self._lines.clear()

    # --- lines ----------------------------------------------------------------------------------

    def _room(self) -> bool:
        return len(self.running) + self._taking < self.settings.max_in_flight

    async def _fill(self, rec: BatchRecord) -> bool:
        if not self._room():
            return False
        key = ApiKeyRecord(key_id=rec.doc.key_id, tenant=rec.doc.tenant, admin=rec.doc.admin)
        try:
            target = await self.api.catalog.target(rec.doc.model, key)
        except NotFound:
            return False  # the model was removed: its lines wait, and expire with the batch
        started = False
        while self._room():
            self._taking += 1
            try:
                take = await self.api.batches.take(
                    rec.doc.id,
                    target.instance_model,
                    self.gateway_id,
                    now_s=self.clock(),
                    lease_s=self.settings.line_lease_s,
                    fraction=self.settings.headroom_fraction,
                    beside=self.settings.beside_interactive,
                )
            finally:
                self._taking -= 1
            if take.outcome is not TakeOutcome.LINE:
                break
            run = _Running(rec.doc.id, take.line, take.token)
            self.running[take.token] = run
            run.task = asyncio.get_running_loop().create_task(self._run_line(rec, target, take))
            started = True
        return started

    def _step_priority(self, path: str) -> dict[str, int]:
        return {} if path in ("/tokenize", "/detokenize") else self._priority

    def _line_file(self, bid: str) -> LineFile:
        lf = self._lines.get(bid)
        if lf is None:
            lf = self._lines[bid] = LineFile(self.api.dir.lines(bid))
        return lf

    async def _run_line(self, rec: BatchRecord, target: Target, take: Take) -> None:
        bid, model = rec.doc.id, target.spec.name
        released = False
        try:
            request = self._line_file(bid).read(take.line)
            body = request["body"]
            body["model"] = target.upstream_name
            # A line's own `priority` never reaches the engine: it could outrank interactive requests.
            body.pop("priority", None)
            body.update(self._priority)
            custom_id = str(request["custom_id"])
            call = Call(
                path=rec.doc.endpoint,
                body=orjson.dumps(body),
                target=target,
                stream=False,
                arrived_s=self.clock(),
                arrived_perf=time.perf_counter(),
                request_id=take.token,
            )
            sink = BufferSink()
            try:
                if rec.doc.endpoint in WORKFLOW_PATHS:
                    status, answer = await self._workflow(rec.doc.endpoint, request["body"], target, take)
                    ok = status < 400
                    result = entry(custom_id, status=status, body=answer, request_id=take.token, error=None)
                else:
                    await self.dispatcher.run_on(call, sink, take.instance_id)
                    ok = sink.status < 400
                    result = entry(
                        custom_id, status=sink.status, body=_json_or_text(sink.body), request_id=take.token, error=None
                    )
            except EngineRejected as exc:
                ok = False
                result = entry(
                    custom_id, status=exc.status, body=orjson.loads(exc.body()), request_id=take.token, error=None
                )
            except GatewayError as exc:
                attempts = self._attempts.get((bid, take.line), 0) + 1
                if attempts < self.settings.line_attempts:
                    self._attempts[(bid, take.line)] = attempts
                    self.metrics.batch_lines.labels(model, "retried").inc()
                    await settle(self.api.batches.unclaim(bid, take.line, take.token))
                    return
                ok = False
                error = {"code": exc.code or "upstream_failed", "message": exc.message}
                result = entry(custom_id, status=None, body=None, request_id=take.token, error=error)
            self._attempts.pop((bid, take.line), None)
            # The bytes are on disk before Redis records the line: a death in between runs the line again
            # and this entry is ignored (its token is not the recorded one).
            self.parts.append(bid, take.line, take.token, ok, result)
            recorded = await settle(
                self.api.batches.finish(bid, take.line, take.token, ok=ok, gateway_id=self.gateway_id)
            )
            released = True  # `finish` gave the slot back too
            outcome = ("completed" if ok else "failed") if recorded else "superseded"
            self.metrics.batch_lines.labels(model, outcome).inc()
        except asyncio.CancelledError:
            # Stopping, or the lease was lost: free the line at once (refused if another claim owns it).
            await settle(self.api.batches.unclaim(bid, take.line, take.token))
            raise
        except Exception:
            log.exception("batch %s line %d failed in the runner", bid, take.line)
            await settle(self.api.batches.unclaim(bid, take.line, take.token))
        finally:
            self.running.pop(take.token, None)
            if not released:
                await settle(self.routing.release(self.gateway_id, take.token))
            if self._room():
                # The next line of this batch at once, without waiting for the next full step.
                asyncio.get_running_loop().create_task(self._refill(rec))

    async def _workflow(self, endpoint: str, body: dict[str, Any], target: Target, take: Take) -> tuple[int, object]:
        """A chunked or tribunal line: every step on the slot the line took, one after another, so the line
        uses the idle capacity it was given and no more (creation made tribunal lines single-model).

        Returns (status, body): 200 and the workflow's answer, or 400 and the error when the input is
        refused (too many chunks); engine refusals raise `EngineRejected`, failures `GatewayError`.
        """

        async def step(model: str, path: str, step_body: dict[str, Any]) -> dict[str, Any]:
            call = Call(
                path=path,
                # (Tokenizing is not scheduled: only generation steps carry the batch priority.)
                body=orjson.dumps({**step_body, "model": target.upstream_name, **self._step_priority(path)}),
                target=target,
                stream=False,
                arrived_s=self.clock(),
                arrived_perf=time.perf_counter(),
                request_id=take.token,
            )
            sink = BufferSink()
            await self.dispatcher.run_on(call, sink, take.instance_id)
            if sink.status >= 400:
                raise EngineRejected(sink.status, sink.body)
            answer: dict[str, Any] = orjson.loads(sink.body)
            return answer

        try:
            if endpoint == CHUNKED_PATH:
                return 200, await run_chunked(step, parse_chunked(body), parallel=1)
            return 200, await run_tribunal(step, parse_tribunal(body))
        except BadRequest as exc:
            return exc.status, orjson.loads(exc.body())

    async def _refill(self, rec: BatchRecord) -> None:
        try:
            await self._fill(rec)
        except Exception as exc:
            log.warning("taking the next line of batch %s failed: %r", rec.doc.id, exc)

    # --- finalizing -----------------------------------------------------------------------------

    async def _finalize(self, rec: BatchRecord, final: BatchStatus) -> None:
        bid = rec.doc.id
        try:
            done = await self.api.batches.done_tokens(bid)
            out_id, err_id = output_ids(bid)
            await asyncio.to_thread(self.api.dir.ensure)
            made = await asyncio.to_thread(
                assemble,
                self.api.dir,
                bid,
                done,
                final=final.value,
                output=self.api.dir.file(out_id),
                errors=self.api.dir.file(err_id),
            )
            if made.missing:
                log.error("batch %s: %d recorded results missing from storage", bid, len(made.missing))
            now = int(self.clock())
            ids = {"output": "", "errors": ""}
            for kind, fid, count in (("output", out_id, made.output_lines), ("errors", err_id, made.error_lines)):
                path = self.api.dir.file(fid)
                if count == 0:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    continue
                record = FileRecord(
                    id=fid,
                    tenant=rec.doc.tenant,
                    filename=f"{bid}_{kind}.jsonl",
                    purpose="batch_output",
                    bytes=path.stat().st_size,
                    created_at=now,
                    expires_at=now + int(self.settings.file_ttl_s),
                    lines=count,
                )
                await self.api.files.put(record, ttl_s=self.settings.file_ttl_s)
                ids[kind] = fid
            finished = await self.api.batches.complete(
                bid,
                self.gateway_id,
                now_s=self.clock(),
                output_file_id=ids["output"],
                error_file_id=ids["errors"],
                ttl_s=self.settings.file_ttl_s,
            )
            if finished:
                self.parts.close(bid)
                lf = self._lines.pop(bid, None)
                if lf is not None:
                    lf.close()
                await asyncio.to_thread(self.api.dir.drop_batch, bid)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("finalizing batch %s failed; another runner retries when its lease lapses", bid)
        finally:
            self.finalizing.pop(bid, None)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep_s < SWEEP_EVERY_S:
            return
        self._last_sweep_s = now
        try:
            removed = self.api.dir.sweep(ttl_s=self.settings.file_ttl_s)
        except OSError as exc:
            log.warning("sweeping expired files failed: %s", exc)
            return
        if removed:
            log.info("removed %d expired files", removed)


def _json_or_text(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
