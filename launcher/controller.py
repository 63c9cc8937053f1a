"""The launcher's one step: reconcile instances with Slurm and the engines, and scale to demand.

`Launcher.tick(now_s)` runs one reconciliation (exactly one `squeue` for all jobs); `on_demand`
is the fast path from zero, run the moment a gateway signals demand; `on_register` and
`on_deregister` are the jobs' callbacks. All four take the same lock, so concurrent triggers for
one model become one submission. The time is passed in; only the runner loop reads a clock.

An instance's life (docs/architecture.md, "An instance's life")::

    requested -> pending -> starting -> loading -> ready -> draining -> gone
             \\-------------------------------------------------------> failed (with a reason)

A record is written (`requested`) before `sbatch` runs, so a launcher that dies in between leaves
a trace its successor reconciles against `squeue` (the job carries the instance id in its
comment): nothing is submitted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import orjson
import redis.asyncio as aioredis

from launcher.desired import (
    BudgetAsk,
    DecisionMemo,
    DemandForecast,
    ModelLoad,
    PolicyInputs,
    decision_expires_s,
    demand_rate_per_s,
    desired_record,
    desired_replicas,
    drivers,
    fit_to_budget,
    live_warm_requests,
    with_cap,
)
from launcher.health import Health, Probe, Prober, loading_probe_delay_s
from launcher.history import LAST_DEMAND, HistoryStore, ModelHistory
from launcher.jobhost import HostCheck
from launcher.jobs import job_spec, new_instance_id, new_token, sha256_hex, signal_timing
from launcher.lora import AdapterLoadError, ensure_adapter_loaded
from launcher.metrics import LauncherMetrics
from launcher.settings import LauncherSettings
from policies.eta import ready_eta_s
from policies.placement import PlacementOption, pick_placement
from policies.types import Decision, Occurrence
from slurm.backend import SlurmBackend
from slurm.errors import ScriptValidationError, SlurmError
from slurm.jobscript import render_job_script
from slurm.types import JobState, SlurmJob
from warmpool.batches import Batches
from warmpool.events import EventLog
from warmpool.instance_store import InstanceStore
from warmpool.instances import COMING_STATES, LIVE_STATES, InstanceRecord, InstanceState
from warmpool.keys import DEMAND_SLOT_S, Keys
from warmpool.learnt import LOAD_TIMES, QUEUE_WAITS, START_TIMES, LearntTimes
from warmpool.models import ModelStore
from warmpool.phase import ModelPhase, Phase, PhaseBoard
from warmpool.redisio import awaited
from warmpool.routing import Routing
from warmpool.settings import SITE_TENANT_LIMITS, TenantLimits
from warmpool.snapshot import ModelSnapshot, SnapshotReader
from warmpool.specs import ModelKind, ModelSpec
from warmpool.tenant_limits import TenantBudget
from warmpool.timeline import Timeline
from warmpool.warm import WarmRequest

S = InstanceState
CANCEL_SENT = "cancel_sent"
"""Timestamp key: when the launcher itself asked Slurm to end the job."""
JOB_DRAIN = "job_drain"
"""Timestamp key: when the job said it stops (walltime warning, SIGTERM); it ends by itself."""
JOB_START = "job_start"
"""Timestamp key: the job's start as Slurm reports it (whole seconds, rounded down)."""
SUBMIT_GRACE_S = 120.0
"""How long a `requested` record without a job may wait for its job to show up in squeue."""
SIGNAL_EARLY_S = 60.0
"""`--signal=B:USR1@N` may come up to 60 s before N (sbatch(1): Slurm checks time limits
periodically; 22.05 sent it up to 30 s early on the local cluster). The successor must be ready by
then, or the warned instance deregisters and leaves a gap."""

PROBE_CONCURRENCY = 50
"""Probes in flight at once. httpcore's pool rescans every queued request against every connection
whenever one is assigned: 200 probes started at once took 2.7 s on the 2-core VM, 50 at a time
1.0 s (bench/launcher_tick.py). The cost: engines that hang are waited out (`health_timeout_s`) 50
at a time instead of 100 (the prober's connection limit)."""
PHASE_REFRESH_S = 60.0
"""A model's published phase is rewritten at least this often even when unchanged (a Redis that lost
it, a stale `updated_s`); otherwise only when it changes."""

# How a job that ended tells us why, when the launcher did not end it itself.
_END_REASONS: dict[JobState, str] = {
    JobState.CANCELLED: "job cancelled outside slurmless",
    JobState.NODE_FAIL: "node failure",
    JobState.FAILED: "job failed",
    JobState.BOOT_FAIL: "node boot failure",
    JobState.OUT_OF_MEMORY: "out of memory",
    JobState.DEADLINE: "deadline reached",
    JobState.COMPLETED: "job ended",
    JobState.TIMEOUT: "walltime reached",
    JobState.PREEMPTED: "preempted",
}
# Endings that are the normal fate of a serving job: they drain, they do not count as failures.
_EXPECTED_ENDS = frozenset({JobState.TIMEOUT, JobState.PREEMPTED})


@dataclass(frozen=True)
class ScalePlan:
    """One model's instances and its ask, between the policies' decision and the GPU budget."""

    spec: ModelSpec
    hist: ModelHistory
    active: list[InstanceRecord]
    capacity: list[InstanceRecord]
    inflight: dict[str, int]
    ask: BudgetAsk


@dataclass(frozen=True, slots=True)
class _Quiet:
    """A model without instances: the inputs of its last plan (compared by identity), and until when it stands."""

    spec: ModelSpec
    snap: ModelSnapshot
    hist: ModelHistory
    demand: DemandForecast | None
    occurrences: tuple[Occurrence, ...]
    warm: WarmRequest | None
    plan: ScalePlan
    until_s: float


@dataclass
class TickReport:
    """What one tick did, for tests and logs."""

    submitted: list[str] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    draining: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    desired: dict[str, int] = field(default_factory=dict)
    slurm_error: str | None = None
    steps_ms: dict[str, float] = field(default_factory=dict)
    """Wall time of each step of the tick (for the benchmark and slow-tick diagnosis)."""

    def changed(self) -> bool:
        """Whether the tick changed any instance (otherwise the records it read are still current)."""
        return bool(self.submitted or self.ready or self.failed or self.draining or self.cancelled or self.gone)


class Launcher:
    """The owner of every instance's life; see the module docstring."""

    def __init__(
        self,
        redis: aioredis.Redis,
        slurm: SlurmBackend,
        settings: LauncherSettings,
        *,
        callback_url: str,
        keys: Keys | None = None,
        prober: Prober | None = None,
        metrics: LauncherMetrics | None = None,
        clock: Callable[[], float] | None = None,
        watch_loading: bool = False,
        tenant_limits: TenantLimits = SITE_TENANT_LIMITS,
        model_roots: Sequence[Path] = (),
    ) -> None:
        self.redis = redis
        self.model_roots = tuple(model_roots)
        """Model paths must still resolve under these when a job is submitted (and when it starts)."""
        self.slurm = slurm
        self.settings = settings
        self.callback_url = callback_url
        self.keys = keys or Keys()
        self.models = ModelStore(redis, self.keys, local_only=True)
        self.instances = InstanceStore(redis, self.keys)
        self.routing = Routing(redis, self.keys)
        self.phases = PhaseBoard(redis, self.keys)
        self.events = EventLog(redis, self.keys)
        self.history = HistoryStore(redis, self.keys)
        self.timeline = Timeline(redis, self.keys)
        self.learnt = LearntTimes(redis, self.keys)
        self.inputs = PolicyInputs(redis, self.keys)
        self.snapshots = SnapshotReader(redis, self.keys)
        self.tenant_budget = TenantBudget(redis, self.keys, tenant_limits)
        self.decisions = DecisionMemo()
        self._desired_seen: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._published: dict[str, tuple[tuple[object, ...], float]] = {}
        self._counted: dict[tuple[str, str], int] = {}
        self._specs: dict[str, ModelSpec] = {}
        # Per model, what the last tick derived, reused while its inputs are the same objects.
        self._hist_cache: dict[str, tuple[ModelSnapshot, ModelHistory]] = {}
        self._quiet: dict[str, _Quiet] = {}
        self._touched: set[str] = set()
        """Models whose instances, routing or history this tick changed (their snapshot is re-read)."""
        self._recorded: dict[str, Decision] = {}
        self._phase_cache: dict[str, ModelHistory] = {}
        self.prober = prober or Prober(timeout_s=settings.health_timeout_s)
        self.metrics = metrics or LauncherMetrics()
        # Only the loading watchers (a runner concern) read a clock; ticks get the time passed in.
        self.clock = clock
        self.watch_loading = watch_loading and clock is not None
        self.lock = asyncio.Lock()
        self.host_check = HostCheck(slurm, allow_loopback=settings.allow_loopback_engines)
        self._unhealthy: dict[str, int] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}

    async def aclose(self) -> None:
        for task in self._watchers.values():
            task.cancel()
        for task in list(self._watchers.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()
        await self.prober.aclose()

    # --- demand: the fast path from zero ------------------------------------------------------

    async def on_demand(self, model: str, *, now_s: float) -> str | None:
        """A model got demand: if nothing serves it or is coming, submit one instance now.

        Returns the new instance id, or None when nothing was submitted (already warm or coming,
        unknown, broken or backing off). Concurrent calls for one model submit once.
        """
        spec = await self._base_spec(model)
        if spec is None:
            return None
        await awaited(self.redis.hset(self.keys.model_stats(spec.name), LAST_DEMAND, repr(now_s)))
        async with self.lock:
            live = [r for r in await self.instances.all(spec.name) if r.state in LIVE_STATES]
            if any(r.state is not S.DRAINING for r in live):
                return None
            hist = await self.history.get(spec.name)
            if hist.broken_reason or now_s < hist.retry_at_s:
                return None
            return await self._submit(spec, now_s=now_s, why="demand")

    async def _base_spec(self, model: str) -> ModelSpec | None:
        spec = await self.models.resolve(model)
        if spec is not None and spec.kind is ModelKind.LORA and spec.base_model:
            spec = await self.models.get(spec.base_model)
        return spec

    # --- callbacks from jobs ------------------------------------------------------------------

    async def on_register(
        self, iid: str, *, job_id: int | None, host: str, port: int, token: str, now_s: float
    ) -> Refusal | None:
        """A job's engine started and listens on host:port: None when accepted, else why not.

        The token must match; the job id must be the instance's; the host must be the job's batch
        host as Slurm reports it (`HostCheck`). A host that fails that check fails the instance.
        """
        record = await self.instances.get(iid)
        if record is None or not _token_ok(record, token):
            return Refusal(401, "unknown instance or wrong token")
        if job_id is None:
            return Refusal(400, "job_id is required")
        if record.job_id is None and record.state is S.REQUESTED:
            return Refusal(503, "the job's id is not recorded yet: retry")
        if record.job_id != str(job_id):
            return Refusal(403, f"job {job_id} is not instance {iid}'s job")
        if record.state in (S.LOADING, S.READY) and (record.host, record.port) == (host, port):
            return None
        problem = await self.host_check.problem(job_id, host, batch_host=record.node)
        async with self.lock:
            record = await self.instances.get(iid)
            if record is None or record.job_id != str(job_id):
                return Refusal(403, f"job {job_id} is not instance {iid}'s job")
            if record.state not in (S.REQUESTED, S.PENDING, S.STARTING):
                return Refusal(409, f"instance {iid} is {record.state.value}")
            if problem is not None:
                await self._fail(record, now_s, f"registration refused: {problem}"[:500])
                return Refusal(403, problem)
            if S.STARTING.value not in record.timestamps:
                # The job called back before a tick saw it running.
                record.timestamps[S.STARTING.value] = now_s
            await self._transition(record, S.LOADING, now_s, host=host, port=port, job_id=record.job_id)
        if self.watch_loading:
            self._watchers[iid] = asyncio.create_task(self._watch(iid))
        return None

    async def on_deregister(self, iid: str, *, reason: str, token: str, now_s: float) -> bool:
        """A job stops serving: the walltime warning, a SIGTERM (scancel, preemption) or its engine exited."""
        async with self.lock:
            record = await self.instances.get(iid)
            if record is None or not _token_ok(record, token):
                return False
            if record.state not in LIVE_STATES or record.state is S.DRAINING:
                return True
            if reason.startswith("refused:"):
                # The job found its directory or model path unsafe before starting: retrying cannot help.
                why = f"job refused to start: {reason.removeprefix('refused:')} (see the job's log)"
                await self._fail(record, now_s, why)
                await awaited(self.redis.hset(self.keys.model_stats(record.model), "broken_reason", why))
                await self.events.record("model.broken", now_s=now_s, model=record.model, reason=why)
            elif reason.startswith("engine-exited"):
                code = reason.partition(":")[2] or "?"
                await self._fail(record, now_s, f"engine exited with code {code}")
            elif reason == "walltime-warning":
                await self._drain(record, now_s, "walltime warning from Slurm", cancel=False, by_job=True)
            elif reason == "terminated":
                await self._drain(
                    record, now_s, "terminated by Slurm (scancel or preemption)", cancel=False, by_job=True
                )
            else:
                await self._drain(record, now_s, f"deregistered: {reason[:100]}", cancel=False, by_job=True)
            return True

    async def _watch(self, iid: str) -> None:
        """Probe a loading instance until it is ready, so it is routed to the moment it is.

        Probes come fast around the model's shortest observed load time and slow down to one per
        `health_poll_s` for a slow loader (`loading_probe_delay_s`).
        """
        assert self.clock is not None
        try:
            first = await self.instances.get(iid)
            if first is None:
                return
            earliest_s = min((await self.history.get(first.model)).load_times_s, default=0.0)
            while True:
                since_s = first.timestamps.get(S.LOADING.value, first.state_since_s)
                loading_s = self.clock() - since_s
                await asyncio.sleep(loading_probe_delay_s(loading_s, earliest_s, self.settings.health_poll_s))
                record = await self.instances.get(iid)
                if record is None or record.state is not S.LOADING or record.url is None:
                    return
                spec = await self.models.get(record.model)
                if spec is None:
                    return
                probe = await self.prober.probe(record.url, record.api_key, spec.client_name)
                if probe.health is Health.READY:
                    async with self.lock:
                        current = await self.instances.get(iid)
                        if current is not None and current.state is S.LOADING:
                            await self._mark_ready(current, spec, self.clock())
                    return
        finally:
            self._watchers.pop(iid, None)

    # --- the tick -----------------------------------------------------------------------------

    async def tick(self, *, now_s: float) -> TickReport:
        """One reconciliation: squeue once, move every instance along, scale every model."""
        report = TickReport()
        self.metrics.ticks.inc()
        step = _Stopwatch(report.steps_ms)
        async with self.lock:
            # squeue runs while the registry, the instance records and the models' snapshots are read
            # (those of the models known at the last tick; the steps below re-read what they change).
            self._touched = set()
            known = [s.name for s in self._specs.values() if s.kind is ModelKind.BASE]
            jobs_or_error, spec_list, records, snaps = await asyncio.gather(
                self._jobs(), self.models.all(), self.instances.all(), self.snapshots.read(known)
            )
            step("slurm+read")
            jobs: list[SlurmJob] | None = None
            if isinstance(jobs_or_error, SlurmError):
                report.slurm_error = str(jobs_or_error)[:300]
                await self.events.record("slurm.unavailable", now_s=now_s, error=report.slurm_error)
            else:
                jobs = jobs_or_error
            specs = {s.name: s for s in spec_list}
            self._specs = specs
            self._touched |= await self.learnt.forget_changed(spec_list, self.settings.engine_command, now_s=now_s)
            if jobs is not None:
                await self._reconcile(records, jobs, specs, now_s, report)
                await self._probe_loading(records, specs, now_s, report)
                await self._progress_drains(records, now_s, report)
            step("reconcile")
            bases = [s.name for s in specs.values() if s.kind is ModelKind.BASE]
            self.snapshots.forget(set(bases))
            stale = [m for m in bases if m in self._touched or m not in snaps]
            if stale:
                snaps.update(await self.snapshots.read(stale))
            snaps = {m: snaps[m] for m in bases}
            hists = self._histories(snaps)
            step("snapshot")
            self._touched = set()
            if jobs is not None:
                await self._scale_all(specs, snaps, hists, records, now_s, report)
            if self._touched:
                # What scaling changed (a submission, a model found broken) is published as it is now.
                snaps.update(await self.snapshots.read(sorted(self._touched & set(bases))))
                hists = self._histories(snaps)
            step("scale")
            if report.changed():
                records = await self.instances.all()
            await self._publish(specs, records, hists, now_s)
            await self.timeline.sample(now_s, specs.values(), snaps, records, report.desired)
            await self._purge(records, now_s)
            step("publish")
        for model in await self.routing.queued_models():
            await self.routing.pump(model)
        if self.settings.batch_cold_starts:
            # Opt-in: batch lines that found no instance start one (by default batch demand never does).
            for model in await Batches(self.redis, self.keys).waiting_models(since_s=now_s - 2 * self.settings.tick_s):
                if iid := await self.on_demand(model, now_s=now_s):
                    report.submitted.append(iid)
        await self.routing.reap(now_s=now_s)
        step("routing")
        self.metrics.tick_s.observe(sum(report.steps_ms.values()) / 1000)
        return report

    async def _jobs(self) -> list[SlurmJob] | SlurmError:
        try:
            return await self.slurm.jobs()
        except SlurmError as exc:
            return exc

    async def _reconcile(
        self,
        records: list[InstanceRecord],
        jobs: list[SlurmJob],
        specs: dict[str, ModelSpec],
        now_s: float,
        report: TickReport,
    ) -> None:
        by_iid: dict[str, SlurmJob] = {}
        for job in sorted(jobs, key=lambda j: j.job_id):
            if job.instance_id:
                by_iid[job.instance_id] = job
        live_ids = {r.id for r in records if r.state in LIVE_STATES}
        # Jobs nobody knows (a lost record, or a submission that timed out after Slurm took it) are orphans.
        for iid, job in by_iid.items():
            if iid not in live_ids and _running_or_waiting(job):
                await self._cancel_job(job.job_id)
                report.cancelled.append(iid)
                await self.events.record("instance.orphan_cancelled", now_s=now_s, instance=iid, job_id=job.job_id)
        for record in records:
            if record.state not in LIVE_STATES:
                continue
            await self._reconcile_one(record, by_iid.get(record.id), now_s, report)

    async def _reconcile_one(
        self, record: InstanceRecord, job: SlurmJob | None, now_s: float, report: TickReport
    ) -> None:
        if record.state is S.REQUESTED:
            if job is None:
                if now_s - record.created_s > SUBMIT_GRACE_S:
                    await self._fail(record, now_s, "submission lost: no job in squeue")
                    report.failed[record.id] = record.reason or ""
                return
            await self._transition(record, S.PENDING, now_s, job_id=str(job.job_id))
            await self.events.record("instance.adopted", now_s=now_s, model=record.model, instance=record.id)
        if job is None:
            if record.job_id is None:
                return
            if record.state is S.DRAINING:
                await self._gone(record, now_s, report)
            else:
                await self._fail(record, now_s, "job vanished from Slurm")
                report.failed[record.id] = record.reason or ""
            return
        if job.state is JobState.COMPLETING:
            # Its processes are ending; the final state (why it ended) shows on a later tick.
            if record.state is S.READY:
                self._touched.add(record.model)
                await self.routing.deactivate(record.model, record.id)
            return
        if job.state.is_finished:
            await self._job_ended(record, job, now_s, report)
            return
        if job.state in (JobState.PENDING, JobState.REQUEUED, JobState.CONFIGURING):
            if record.state in (S.REQUESTED, S.PENDING):
                est = job.start_time.timestamp() if job.start_time else None
                if record.state is not S.PENDING:
                    await self._transition(record, S.PENDING, now_s)
                if (record.slurm_reason, record.est_start_s) != (job.reason, est):
                    record.slurm_reason, record.est_start_s = job.reason, est
                    await self.instances.update(record.id, slurm_reason=job.reason, est_start_s=est)
            elif record.state is not S.DRAINING:
                # It ran and is queued again: a requeue, which drains like preemption.
                await self._drain(record, now_s, "requeued by Slurm", cancel=True)
                report.draining.append(record.id)
            return
        if job.state is JobState.RUNNING:
            await self._running(record, job, now_s, report)

    async def _running(self, record: InstanceRecord, job: SlurmJob, now_s: float, report: TickReport) -> None:
        end_s = job.end_time.timestamp() if job.end_time else None
        limit_s = 60.0 * job.time_limit_min if job.time_limit_min is not None else None
        if (record.end_time_s, record.time_limit_s, record.node) != (end_s, limit_s, job.batch_host or None):
            record.end_time_s, record.time_limit_s, record.node = end_s, limit_s, job.batch_host or None
            await self.instances.update(record.id, end_time_s=end_s, time_limit_s=limit_s, node=record.node)
        if JOB_START not in record.timestamps and job.start_time is not None:
            # Learnt once, whatever the state: a job that registered before any tick saw it run
            # (the usual case for a fast engine) gets its queue wait observed too.
            start_s = job.start_time.timestamp()
            record.timestamps[JOB_START] = start_s
            await self.instances.update(record.id, timestamps=record.timestamps)
            queued_since = record.timestamps.get(S.PENDING.value, record.created_s)
            await self._observe(record.model, QUEUE_WAITS, "queue_wait", start_s - queued_since)
        if record.state in (S.REQUESTED, S.PENDING):
            start_s = record.timestamps.get(JOB_START, now_s)
            await self._transition(record, S.STARTING, min(start_s, now_s), slurm_reason=None)
        elif record.state is S.STARTING and now_s - record.state_since_s > self.settings.register_timeout_s:
            await self._fail(record, now_s, f"registration never came within {self.settings.register_timeout_s:.0f}s")
            report.failed[record.id] = record.reason or ""

    async def _job_ended(self, record: InstanceRecord, job: SlurmJob, now_s: float, report: TickReport) -> None:
        why = _END_REASONS.get(job.state, f"job ended ({job.state.value})")
        if job.state is JobState.FAILED and job.exit_code is not None:
            why = f"job failed (exit code {job.exit_code})"
        if job.reason and job.state is not JobState.CANCELLED:
            why = f"{why}: {job.reason}"
        we_ended_it = CANCEL_SENT in record.timestamps
        if record.state is S.DRAINING:
            # A SIGTERM we did not send, ending in CANCELLED, was an scancel from outside.
            terminated = (record.reason or "").startswith("terminated")
            outside = job.state is JobState.CANCELLED and not we_ended_it and terminated
            if not outside:
                await self._gone(record, now_s, report)
                return
        elif job.state in _EXPECTED_ENDS:
            await self._drain(record, now_s, why, cancel=False)
            await self._gone(record, now_s, report)
            return
        await self._fail(record, now_s, why, cancel_job=False)
        report.failed[record.id] = why

    async def _probe_loading(
        self, records: list[InstanceRecord], specs: dict[str, ModelSpec], now_s: float, report: TickReport
    ) -> None:
        """Readiness probes of loading instances (ready ones are `check_ready`'s business)."""
        targets = [r for r in records if r.state is S.LOADING and r.url is not None and r.model in specs]
        gate = asyncio.Semaphore(PROBE_CONCURRENCY)

        async def probe_one(record: InstanceRecord) -> Probe:
            async with gate:
                return await self.prober.probe(record.url or "", record.api_key, specs[record.model].client_name)

        probes = await asyncio.gather(*(probe_one(r) for r in targets))
        for record, probe in zip(targets, probes, strict=True):
            await self._loading(record, specs[record.model], probe, now_s, report)

    async def check_ready(self, *, now_s: float) -> dict[str, str]:
        """Probe every ready instance's `/health`; fail those that missed `unhealthy_after` probes in a row.

        Runs in its own loop (`health_check_s`), not in the tick: 200 ready instances cost ~0.5 s of
        probing, which held the tick (and the lock on-demand submissions wait for) for as long. The
        probes run without the lock; their answers are acted on under it, for instances still ready
        at the same address. Healthy instances also get adapters registered since they started, and
        are routed again if a gateway took them out of routing. Returns the instances failed.
        """
        targets = [r for r in await self.instances.all() if r.state is S.READY and r.url is not None]
        await self.prober.forget({r.url for r in targets if r.url is not None})
        gate = asyncio.Semaphore(PROBE_CONCURRENCY)

        async def probe_one(record: InstanceRecord) -> Probe:
            async with gate:
                return await self.prober.alive(record.url or "", record.api_key)

        probes = await asyncio.gather(*(probe_one(r) for r in targets))
        failed: dict[str, str] = {}
        async with self.lock:
            specs = self._specs or {s.name: s for s in await self.models.all()}
            current = {r.id: r for r in await self.instances.all() if r.state is S.READY}
            adapters: dict[str, list[ModelSpec]] = {}
            for spec in specs.values():
                if spec.kind is ModelKind.LORA and spec.base_model:
                    adapters.setdefault(spec.base_model, []).append(spec)
            healthy: list[InstanceRecord] = []
            for probed, probe in zip(targets, probes, strict=True):
                record = current.get(probed.id)
                if record is None or record.url != probed.url:
                    continue
                if probe.health is Health.READY:
                    self._unhealthy.pop(record.id, None)
                    healthy.append(record)
                    if record.model in adapters:
                        await self._sync_adapters(record, adapters[record.model], now_s)
                    continue
                misses = self._unhealthy.get(record.id, 0) + 1
                self._unhealthy[record.id] = misses
                if misses >= self.settings.unhealthy_after:
                    await self._fail(record, now_s, f"engine unhealthy: {probe.detail}")
                    failed[record.id] = record.reason or ""
            await self._reroute(healthy, specs, now_s)
        return failed

    async def _reroute(self, healthy: list[InstanceRecord], specs: dict[str, ModelSpec], now_s: float) -> None:
        """Route again to healthy ready instances that left routing: a gateway stops routing to an
        instance it cannot connect to, and a passing connect error must cost at most one tick."""
        current = [r for r in healthy if r.state is S.READY]
        if not current:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in current:
                pipe.zscore(self.keys.ready(r.model), r.id)
            scores = await pipe.execute()
        for record, score in zip(current, scores, strict=True):
            if score is None and record.model in specs:
                await self.routing.activate(record.model, record.id, cap=specs[record.model].policy.max_concurrency)
                await self.events.record("instance.rerouted", now_s=now_s, model=record.model, instance=record.id)

    async def _loading(
        self, record: InstanceRecord, spec: ModelSpec, probe: Probe, now_s: float, report: TickReport
    ) -> None:
        if probe.health is Health.READY:
            await self._mark_ready(record, spec, now_s)
            report.ready.append(record.id)
            return
        budget_s = await self.load_budget_s(record.model)
        loading_s = now_s - record.timestamps.get(S.LOADING.value, record.state_since_s)
        if loading_s > budget_s:
            await self._fail(record, now_s, f"load timeout after {loading_s:.0f}s (budget {budget_s:.0f}s)")
            report.failed[record.id] = record.reason or ""

    async def load_budget_s(self, model: str) -> float:
        """How long an instance of `model` may load: generous until load times were observed."""
        observed = (await self.history.get(model)).load_p95_s
        if observed is None:
            return self.settings.first_load_timeout_s
        return max(observed * self.settings.load_timeout_factor, self.settings.first_load_timeout_s / 10)

    async def _progress_drains(self, records: list[InstanceRecord], now_s: float, report: TickReport) -> None:
        for record in records:
            if record.state is not S.DRAINING or CANCEL_SENT in record.timestamps or record.job_id is None:
                continue
            draining_s = now_s - record.state_since_s
            if JOB_DRAIN in record.timestamps:
                if draining_s >= self.settings.signal_lead_s + self.settings.drain_grace_s:
                    await self._cancel(record, now_s)
                    report.cancelled.append(record.id)
                continue
            busy = await self.prober.busy(record.url, record.api_key) if record.url else 0.0
            if busy == 0.0 or busy is None or draining_s >= self.settings.drain_grace_s:
                await self._cancel(record, now_s)
                report.cancelled.append(record.id)

    # --- scaling ------------------------------------------------------------------------------

    def _histories(self, snaps: dict[str, ModelSnapshot]) -> dict[str, ModelHistory]:
        """Each model's history from its snapshot, decoded again only when the snapshot changed."""
        hists: dict[str, ModelHistory] = {}
        cache: dict[str, tuple[ModelSnapshot, ModelHistory]] = {}
        for name, snap in snaps.items():
            seen = self._hist_cache.get(name)
            hist = seen[1] if seen is not None and seen[0] is snap else ModelHistory.from_fields(snap.stats)
            hists[name] = hist
            cache[name] = (snap, hist)
        self._hist_cache = cache
        return hists

    async def _scale_all(
        self,
        specs: dict[str, ModelSpec],
        snaps: dict[str, ModelSnapshot],
        hists: dict[str, ModelHistory],
        records: list[InstanceRecord],
        now_s: float,
        report: TickReport,
    ) -> None:
        """The desired-replicas step: every base model's decision, fitted into the GPU budget, then acted on.

        Reads nothing per model: the snapshot, the instance records and the cached policy inputs
        were read for all models at once.
        """
        bases = [s for s in specs.values() if s.kind is ModelKind.BASE]
        names = [s.name for s in bases]
        self.inputs.forget(names)
        self.decisions.forget(names)
        leads_s = {name: self._expected_cold_start_s(hists[name]) for name in names}
        await self.inputs.record_gap_cold(leads_s)
        occurrences = await self.inputs.occurrences(names, now_s, leads_s)
        warm = live_warm_requests({name: snaps[name].warm for name in names}, now_s)
        demands = await self.inputs.demand_many(names, now_s)
        await self._recall_desired(names)
        live: dict[str, list[InstanceRecord]] = {}
        for record in records:
            if record.state in LIVE_STATES:
                live.setdefault(record.model, []).append(record)
        plans: list[ScalePlan] = []
        quiet: dict[str, _Quiet] = {}
        for spec in bases:
            name = spec.name
            snap, hist, demand = snaps[name], hists[name], demands.get(name)
            occs, warm_req = occurrences.get(name, ()), warm.get(name)
            model_live = live.get(name)
            if not model_live:
                # A model with no instance whose inputs are the very objects of the last tick: the same plan.
                seen = self._quiet.get(name)
                if (
                    seen is not None
                    and now_s < seen.until_s
                    and seen.spec is spec
                    and seen.snap is snap
                    and seen.hist is hist
                    and seen.demand is demand
                    and seen.warm is warm_req
                    and seen.occurrences == occs
                ):
                    quiet[name] = seen
                    plans.append(seen.plan)
                    continue
                plan = self._plan(spec, hist, snap, [], demand, now_s, occurrences=occs, warm=warm)
                quiet[name] = _Quiet(spec, snap, hist, demand, occs, warm_req, plan, self._quiet_until_s(plan, now_s))
            else:
                plan = self._plan(spec, hist, snap, model_live, demand, now_s, occurrences=occs, warm=warm)
            plans.append(plan)
        self._quiet = quiet
        fitted = fit_to_budget([p.ask for p in plans], self.settings.gpu_budget)
        for plan in plans:
            decision = fitted[plan.spec.name]
            if not plan.active and decision.replicas == 0 and self._recorded.get(plan.spec.name) is decision:
                # Nothing held, nothing wanted, nothing new to record: most models, most ticks.
                report.desired[plan.spec.name] = 0
                continue
            await self._scale(plan, decision, now_s, report)

    def _quiet_until_s(self, plan: ScalePlan, now_s: float) -> float:
        """Until when a model without instances keeps `plan` if its inputs do not change.

        The decision's own expiry (`DecisionMemo`), the instant the no-waiters cut starts to apply,
        and the end of the current demand slot (the budget prices a replica by the slot's rate).
        """
        until_s = self.decisions.expires_s(plan.spec.name)
        last_s = plan.hist.last_activity_s
        if last_s is not None and now_s <= last_s + self.settings.pending_cancel_grace_s:
            until_s = min(until_s, last_s + self.settings.pending_cancel_grace_s)
        return min(until_s, (now_s // DEMAND_SLOT_S + 1) * DEMAND_SLOT_S)

    def _plan(
        self,
        spec: ModelSpec,
        hist: ModelHistory,
        snap: ModelSnapshot,
        live: list[InstanceRecord],
        demand: DemandForecast | None,
        now_s: float,
        *,
        occurrences: tuple[Occurrence, ...],
        warm: dict[str, WarmRequest],
    ) -> ScalePlan:
        """What one model has and what the policies want for it, before the GPU budget (pure)."""
        model = spec.name
        active = [r for r in live if r.state is not S.DRAINING]
        active_ids = {r.id for r in active}
        # A ready instance whose successor is on its way counts once, as its successor.
        capacity = [r for r in active if not (r.successor and r.successor in active_ids)]
        ready = [r for r in active if r.state is S.READY]
        inflight = snap.inflight
        queue_depth = snap.queue_depth
        last_s = hist.last_activity_s
        load = ModelLoad(
            queue_depth=queue_depth,
            oldest_wait_s=snap.oldest_wait_s(now_s),
            in_flight=sum(inflight.values()),
            ready=len(ready),
            held=len(capacity),
            last_request_s=last_s,
            idle_counts=snap.idle_counts,
            gaps=snap.gaps,
        )
        cold_start_s = self._expected_cold_start_s(hist)
        forecast = demand.forecast if demand is not None else None
        key = (spec, load, cold_start_s, forecast, occurrences, warm.get(model))
        decision = self.decisions.get(model, key, now_s)
        if decision is None:
            decision = desired_replicas(
                spec,
                load,
                now_s,
                expected_cold_start_s=cold_start_s,
                default_keepalive_s=self.settings.default_keepalive_s,
                exchange_rate=self.settings.exchange_rate,
                forecast=forecast,
                occurrences=occurrences,
                warm=warm.get(model),
            )
            self.decisions.put(model, key, decision, now_s, decision_expires_s(decision, last_s))
        nobody_waits = queue_depth == 0 and load.in_flight == 0
        idle_s = now_s - last_s if last_s is not None else float("inf")
        if not ready and nobody_waits and idle_s > self.settings.pending_cancel_grace_s:
            # Demand vanished before anything became ready: keep only what a standing policy asks for.
            standing = max(
                (r.replicas for r in decision.reasons if r.policy not in ("reactive", "idle-to-zero")), default=0
            )
            decision = with_cap(
                decision, standing, "no-waiters", f"nobody waited for {idle_s:.0f}s and nothing is ready"
            )
        warm_floor = warm[model].replicas if model in warm else 0
        ask = BudgetAsk(
            spec=spec,
            decision=decision,
            waiting=queue_depth,
            rate_per_s=demand_rate_per_s(demand, now_s),
            cold_start_s=cold_start_s,
            floor=max(spec.policy.min_replicas, warm_floor),
        )
        return ScalePlan(spec, hist, active, capacity, inflight, ask)

    async def _scale(self, plan: ScalePlan, decision: Decision, now_s: float, report: TickReport) -> None:
        spec, model, hist, active, capacity, inflight = (
            plan.spec,
            plan.spec.name,
            plan.hist,
            plan.active,
            plan.capacity,
            plan.inflight,
        )
        desired = decision.replicas
        report.desired[model] = desired
        if not active and desired == 0:
            # Nothing held and nothing wanted (most models, most ticks): only record a changed decision.
            if self._recorded.get(model) is not decision:
                await self._record_desired(model, decision, now_s)
            return
        await self._record_desired(model, decision, now_s)

        if desired > len(capacity):
            if hist.broken_reason or now_s < hist.retry_at_s:
                return
            for _ in range(desired - len(capacity)):
                iid = await self._submit(spec, now_s=now_s, why=decision.explain()[:300])
                if iid:
                    report.submitted.append(iid)
        elif desired < len(capacity):
            await self._scale_down(capacity, inflight, len(capacity) - desired, now_s, report)
        await self._renew(spec, active, hist, now_s, report)

    async def _scale_down(
        self,
        capacity: list[InstanceRecord],
        inflight: dict[str, int],
        excess: int,
        now_s: float,
        report: TickReport,
    ) -> None:
        coming = sorted((r for r in capacity if r.state in COMING_STATES), key=lambda r: -r.created_s)
        ready = sorted((r for r in capacity if r.state is S.READY), key=lambda r: inflight.get(r.id, 0))
        for record in [*coming, *ready][:excess]:
            if record.state in COMING_STATES:
                await self._drain(record, now_s, "no demand: cancelling before it serves", cancel=True)
            else:
                await self._drain(record, now_s, "idle: scaling down", cancel=False)
            report.draining.append(record.id)

    async def _renew(
        self, spec: ModelSpec, active: list[InstanceRecord], hist: ModelHistory, now_s: float, report: TickReport
    ) -> None:
        """Submit a successor for each ready instance whose walltime ends before a new one could be ready."""
        if not active or hist.broken_reason or now_s < hist.retry_at_s:
            return
        ids = {r.id for r in active}
        lead_s = self._renew_lead_s(spec, hist)
        for record in active:
            if record.state is not S.READY or record.end_time_s is None:
                continue
            if record.successor and record.successor in ids:
                continue
            if record.end_time_s - now_s > lead_s:
                continue
            iid = await self._submit(spec, now_s=now_s, why=f"renewal of {record.id}", successor_of=record.id)
            if iid:
                report.submitted.append(iid)
                record.successor = iid
                await self.instances.update(record.id, successor=iid)
                await self.events.record(
                    "instance.renewal",
                    now_s=now_s,
                    model=spec.name,
                    instance=record.id,
                    successor=iid,
                    time_left_s=round(record.end_time_s - now_s, 1),
                    lead_s=round(lead_s, 1),
                )

    def _renew_lead_s(self, spec: ModelSpec, hist: ModelHistory) -> float:
        queue_s = hist.queue_wait_p95_s or self.settings.default_queue_wait_s
        load_s = hist.load_p95_s or self.settings.default_load_s
        res = spec.resources
        lead, *_ = signal_timing(self.settings.signal_lead_s, 60 * (res.time_min_min or res.time_limit_min))
        return queue_s + load_s + lead + SIGNAL_EARLY_S + self.settings.renew_margin_s

    def _expected_cold_start_s(self, hist: ModelHistory) -> float:
        queue_s = hist.queue_wait_p95_s or self.settings.default_queue_wait_s
        load_s = hist.load_p95_s or self.settings.default_load_s
        return queue_s + load_s

    async def _recall_desired(self, models: list[str]) -> None:
        """What a predecessor launcher last decided for models this one has not decided yet (one HMGET)."""
        unseen = [m for m in models if m not in self._desired_seen]
        if not unseen:
            return
        raws = await awaited(self.redis.hmget(self.keys.desired, unseen))
        for model, raw in zip(unseen, raws, strict=True):
            stored = orjson.loads(raw) if raw else {}
            if isinstance(stored, dict) and "replicas" in stored:
                self._desired_seen[model] = (int(stored["replicas"]), tuple(sorted(stored.get("drivers", []))))

    async def _record_desired(self, model: str, decision: Decision, now_s: float) -> None:
        """Write `Keys.desired` and an event whenever the number or the policies behind it change."""
        self._recorded[model] = decision
        seen = (decision.replicas, tuple(sorted({r.policy for r in drivers(decision)})))
        # On first sight since this launcher started, what its predecessor wrote (`_recall_desired`).
        previous = self._desired_seen.get(model)
        self._desired_seen[model] = seen
        if previous == seen:
            return
        value = desired_record(decision, now_s)
        await awaited(self.redis.hset(self.keys.desired, model, orjson.dumps(value).decode()))
        if previous is None and seen == (0, ()):
            return  # a model first seen cold, for no particular reason: nothing changed
        await self.events.record(
            "scale.decision",
            now_s=now_s,
            model=model,
            replicas=decision.replicas,
            previous=previous[0] if previous is not None else 0,
            why=value["why"],
            reasons=[f"{r.policy}={r.replicas} ({r.detail})" for r in decision.reasons],
        )

    # --- submission and placement -------------------------------------------------------------

    async def _submit(self, spec: ModelSpec, *, now_s: float, why: str, successor_of: str | None = None) -> str | None:
        iid = new_instance_id()
        token, api_key = new_token(), new_token()
        record = InstanceRecord(
            id=iid,
            model=spec.name,
            state=S.REQUESTED,
            api_key=api_key,
            token_sha256=sha256_hex(token),
            created_s=now_s,
            state_since_s=now_s,
            timestamps={S.REQUESTED.value: now_s},
            successor_of=successor_of,
        )
        try:
            enable_lora = await self._has_adapters(spec.name)

            def render(partition: str | None, qos: str | None) -> str:
                return render_job_script(
                    job_spec(
                        spec,
                        instance_id=iid,
                        settings=self.settings,
                        callback_url=self.callback_url,
                        callback_token=token,
                        engine_api_key=api_key,
                        partition=partition,
                        qos=qos,
                        enable_lora=enable_lora,
                        model_roots=self.model_roots,
                    )
                )

            placement, est_s = await self._place(spec, render(None, None))
            script = render(*placement)
        except ScriptValidationError as exc:
            # A spec that cannot be rendered will never start: say so instead of retrying.
            reason = f"invalid job: {exc}"[:500]
            self._touched.add(spec.name)
            await awaited(self.redis.hset(self.keys.model_stats(spec.name), "broken_reason", reason))
            await self.events.record("model.broken", now_s=now_s, model=spec.name, reason=reason)
            return None
        record.partition, record.qos, record.est_start_s = placement[0], placement[1], est_s
        if not await self.tenant_budget.admit(spec, iid, now_s=now_s):
            return None
        await self.instances.put(record)
        try:
            job_id = await self.slurm.submit(script)
        except SlurmError as exc:
            await self._fail(record, now_s, f"submission failed: {exc}"[:500])
            return None
        await self._transition(record, S.PENDING, now_s, job_id=str(job_id))
        self.metrics.submissions.labels(spec.name, "renewal" if successor_of else "scale").inc()
        await self.events.record(
            "instance.submitted",
            now_s=now_s,
            model=spec.name,
            instance=iid,
            job_id=job_id,
            partition=placement[0],
            qos=placement[1],
            why=why,
        )
        return iid

    async def _place(self, spec: ModelSpec, script: str) -> tuple[tuple[str | None, str | None], float | None]:
        """The (partition, QOS) whose `sbatch --test-only` estimate starts soonest, and that estimate."""
        res = spec.resources
        preempt_p, preempt_q = set(self.settings.preemptible_partitions), set(self.settings.preemptible_qos)
        partitions: list[str | None] = sorted(res.partitions, key=lambda p: p not in preempt_p) or [None]
        qoses: list[str | None] = sorted(res.qos, key=lambda q: q not in preempt_q) or [None]
        choices = [(p, q) for p in partitions for q in qoses]
        if len(choices) == 1:
            return choices[0], None
        options: list[PlacementOption] = []
        for partition, qos in choices:
            try:
                est = await self.slurm.estimate_start(script, partition=partition, qos=qos)
            except SlurmError:
                continue
            options.append(
                PlacementOption(
                    partition=partition or "",
                    qos=qos,
                    estimated_start_s=est.start_time.timestamp(),
                    preemptible=partition in preempt_p or qos in preempt_q,
                    time_limit_s=60.0 * res.time_limit_min,
                )
            )
        best = pick_placement(options)
        if best is None:
            return choices[0], None
        return (best.partition or None, best.qos), best.estimated_start_s

    async def _has_adapters(self, base: str) -> bool:
        # Hook for the registry: adapters are loaded at run time on instances started with --enable-lora.
        return bool(await self._adapters_of(base))

    # --- state changes ------------------------------------------------------------------------

    async def _transition(self, record: InstanceRecord, state: InstanceState, now_s: float, **fields: object) -> None:
        self._touched.add(record.model)
        await self.instances.transition(record, state, now_s=now_s, **fields)
        await self._publish_one(record.model, now_s)
        await self.events.record(
            f"instance.{state.value}",
            now_s=now_s,
            model=record.model,
            instance=record.id,
            **{k: v for k, v in fields.items() if k in ("job_id", "host", "port", "reason")},
        )

    async def _sync_adapters(self, record: InstanceRecord, adapters: list[ModelSpec], now_s: float) -> None:
        """Load the registered adapters a base instance does not serve yet (`/v1/load_lora_adapter`).

        Runs before an instance is first routed to and on every tick for ready ones, so an adapter
        registered while its base runs is served within a tick. A refusal is an event, not a failure:
        the base keeps serving its own requests.
        """
        if record.url is None or record.api_key is None:
            return
        missing = [a for a in adapters if a.client_name not in record.loaded_loras]
        for adapter in missing:
            try:
                await ensure_adapter_loaded(
                    record.url, record.api_key, adapter.client_name, adapter.source, self.prober.client
                )
            except (AdapterLoadError, httpx.HTTPError) as exc:
                await self.events.record(
                    "adapter.failed", now_s=now_s, model=adapter.name, instance=record.id, error=str(exc)[:300]
                )
                continue
            record.loaded_loras.append(adapter.client_name)
            await self.instances.update(record.id, loaded_loras=record.loaded_loras)
            await self.events.record("adapter.loaded", now_s=now_s, model=adapter.name, instance=record.id)

    async def _adapters_of(self, base: str) -> list[ModelSpec]:
        return [s for s in await self.models.all() if s.kind is ModelKind.LORA and s.base_model == base]

    async def _mark_ready(self, record: InstanceRecord, spec: ModelSpec, now_s: float) -> None:
        adapters = await self._adapters_of(spec.name)
        if adapters:
            await self._sync_adapters(record, adapters, now_s)
        await self._transition(record, S.READY, now_s)
        await self.timeline.cold_start(record, now_s=now_s)
        granted = await self.routing.activate(record.model, record.id, cap=spec.policy.max_concurrency)
        ts = record.timestamps
        if S.LOADING.value in ts:
            await self._observe(record.model, LOAD_TIMES, "load", now_s - ts[S.LOADING.value])
            if S.STARTING.value in ts:
                await self._observe(record.model, START_TIMES, "start", ts[S.LOADING.value] - ts[S.STARTING.value])
        await self.history.start_succeeded(record.model)
        await self.events.record(
            "instance.routed", now_s=now_s, model=record.model, instance=record.id, granted=granted
        )
        if record.successor_of:
            old = await self.instances.get(record.successor_of)
            if old is not None and old.state is S.READY:
                await self._drain(old, now_s, f"renewed by {record.id}", cancel=False)

    async def _drain(
        self, record: InstanceRecord, now_s: float, reason: str, *, cancel: bool, by_job: bool = False
    ) -> None:
        """Stop routing to an instance; cancel its job now (`cancel`) or once its requests are done.

        `by_job`: the job itself said it stops and drains; it is cancelled only if it outlives its
        warning lead plus `drain_grace_s`.
        """
        await self.routing.deactivate(record.model, record.id)
        if by_job:
            record.timestamps[JOB_DRAIN] = now_s
        await self._transition(record, S.DRAINING, now_s, reason=reason)
        if cancel or record.job_id is None:
            await self._cancel(record, now_s)

    async def _cancel(self, record: InstanceRecord, now_s: float) -> None:
        record.timestamps[CANCEL_SENT] = now_s
        await self.instances.update(record.id, timestamps=record.timestamps)
        if record.job_id is not None:
            await self._cancel_job(int(record.job_id))
        await self.events.record("instance.cancel", now_s=now_s, model=record.model, instance=record.id)

    async def _cancel_job(self, job_id: int) -> None:
        with contextlib.suppress(SlurmError):
            await self.slurm.cancel(job_id)

    async def _gone(self, record: InstanceRecord, now_s: float, report: TickReport) -> None:
        await self.routing.deactivate(record.model, record.id)
        await self._transition(record, S.GONE, now_s)
        report.gone.append(record.id)

    async def _fail(self, record: InstanceRecord, now_s: float, reason: str, *, cancel_job: bool = True) -> None:
        """Mark an instance failed (keeping why), end its job, and back the model off."""
        await self.routing.deactivate(record.model, record.id)
        was_ready = S.READY.value in record.timestamps
        await self._transition(record, S.FAILED, now_s, reason=reason)
        self._unhealthy.pop(record.id, None)
        kind = reason.partition(":")[0].partition(" (")[0][:40]
        self.metrics.instance_failures.labels(record.model, kind).inc()
        if cancel_job and record.job_id is not None and CANCEL_SENT not in record.timestamps:
            await self._cancel(record, now_s)
        if record.successor_of:
            await self.instances.update(record.successor_of, successor=None)
        # A crash after serving is resubmitted at once; starts that fail are backed off and counted.
        failures = await self.history.start_failed(
            record.model,
            now_s=now_s,
            backoff_s=0.0 if was_ready else self.settings.failure_backoff_s,
            max_backoff_s=self.settings.max_backoff_s,
            max_failures=self.settings.max_failures,
            reason=reason,
        )
        if failures >= self.settings.max_failures:
            await self.events.record("model.broken", now_s=now_s, model=record.model, failures=failures, reason=reason)

    async def _observe(self, model: str, field_name: str, phase: str, seconds: float) -> None:
        self._touched.add(model)
        seconds = max(0.0, seconds)
        await self.history.observe(model, field_name, seconds)
        self.metrics.cold_start_phase_s.labels(model, phase).observe(seconds)

    # --- what clients and operators see -------------------------------------------------------

    async def _publish(
        self,
        specs: dict[str, ModelSpec],
        records: list[InstanceRecord],
        hists: dict[str, ModelHistory],
        now_s: float,
    ) -> None:
        by_model: dict[str, list[InstanceRecord]] = {}
        counts: dict[tuple[str, str], int] = {}
        for record in records:
            by_model.setdefault(record.model, []).append(record)
            label = (record.model, record.state.value)
            counts[label] = counts.get(label, 0) + 1
        # Only changed counts touch the gauge (a label lookup costs ~10 us: 2 ms a tick at 200 instances).
        for label in [k for k in self._counted if k not in counts]:
            self.metrics.instances.remove(*label)
        for label, count in counts.items():
            if self._counted.get(label) != count:
                self.metrics.instances.labels(*label).set(count)
        self._counted = counts
        phases: dict[str, ModelPhase] = {}
        cache: dict[str, ModelHistory] = {}
        for spec in specs.values():
            base = spec.instance_model
            hist = hists.get(base) or ModelHistory.from_fields({})
            model_records = by_model.get(base)
            if not model_records:
                # No instance and the same history as last tick: cold or broken exactly as then.
                seen = self._phase_cache.get(spec.name)
                last = self._published.get(spec.name)
                if seen is hist and last is not None and now_s - last[1] < PHASE_REFRESH_S:
                    cache[spec.name] = hist
                    continue
                cache[spec.name] = hist
            phases[spec.name] = self._phase(model_records or [], hist, now_s)
        self._phase_cache = cache
        await self._write_phases(phases, now_s)
        for gone in [m for m in self._published if m not in specs]:
            del self._published[gone]

    async def _publish_one(self, model: str, now_s: float) -> None:
        """Tell the clients waiting for `model` at once what changed (the tick republishes every model)."""
        records = await self.instances.all(model)
        phase = self._phase(records, await self.history.get(model), now_s)
        await self._write_phases({model: phase}, now_s, force=True)

    async def _write_phases(self, phases: dict[str, ModelPhase], now_s: float, *, force: bool = False) -> None:
        """Write the phases that changed (or were last written `PHASE_REFRESH_S` ago), in one round trip."""
        changed: dict[str, str] = {}
        for model, phase in phases.items():
            seen = phase.visible()
            last = self._published.get(model)
            if force or last is None or last[0] != seen or now_s - last[1] >= PHASE_REFRESH_S:
                changed[self.keys.phase(model)] = phase.model_dump_json()
                self._published[model] = (seen, now_s)
        if changed:
            await awaited(self.redis.mset(changed))

    def _phase(self, records: list[InstanceRecord], hist: ModelHistory, now_s: float) -> ModelPhase:
        ready = [r for r in records if r.state is S.READY]
        coming = [r for r in records if r.state in COMING_STATES]
        load_s = hist.load_p95_s or self.settings.default_load_s
        queue_s = hist.queue_wait_p95_s or self.settings.default_queue_wait_s
        base = {"ready_instances": len(ready), "coming_instances": len(coming), "updated_s": now_s}
        if ready:
            return ModelPhase(phase=Phase.READY, **base)
        if hist.broken_reason:
            return ModelPhase(phase=Phase.FAILED, detail=hist.broken_reason, **base)
        order = {S.LOADING: 0, S.STARTING: 1, S.PENDING: 2, S.REQUESTED: 3}
        if not coming:
            return ModelPhase(phase=Phase.COLD, **base)
        lead = min(coming, key=lambda r: order.get(r.state, 9))
        eta = partial(ready_eta_s, now_s=now_s, load_samples_s=hist.load_times_s, default_load_s=load_s)
        if lead.state in (S.LOADING, S.STARTING):
            since = lead.timestamps.get(lead.state.value, now_s)
            return ModelPhase(phase=Phase(lead.state.value), eta_s=eta(loading_since_s=since), **base)
        return ModelPhase(
            phase=Phase.PENDING,
            slurm_reason=lead.slurm_reason,
            est_start_s=lead.est_start_s,
            eta_s=eta(
                queue_samples_s=hist.queue_waits_s,
                default_queue_s=queue_s,
                queued_since_s=lead.created_s,
                est_start_s=lead.est_start_s,
            ),
            **base,
        )

    async def _purge(self, records: list[InstanceRecord], now_s: float) -> None:
        for record in records:
            if record.state in (S.GONE, S.FAILED) and now_s - record.state_since_s > self.settings.gone_retention_s:
                await self.instances.purge(record)


class _Stopwatch:
    """Records the wall time since the previous call under each step's name (a measurement, not a decision)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = (now - self.last) * 1000
        self.last = now


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused callback: the HTTP status the job gets (4xx is final for it, 503 is retried) and why."""

    status: int
    reason: str


def _token_ok(record: InstanceRecord, token: str) -> bool:
    if not record.token_sha256:
        return False
    return hmac.compare_digest(record.token_sha256, sha256_hex(token))


def _running_or_waiting(job: SlurmJob) -> bool:
    return job.state.is_active and job.state is not JobState.COMPLETING
