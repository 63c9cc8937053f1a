"""The launcher's one step: reconcile instances with Slurm and the engines, and scale to demand.

`Launcher.tick(now_s)` runs one reconciliation (exactly one `squeue` for all jobs); `on_demand`
is the fast path from zero, run the moment a gateway signals demand; `on_register` and
`on_deregister` are the jobs' callbacks. All four take the same lock, so concurrent triggers for
one model become one submission. The time is passed in; only the runner loop reads a clock.

Deciding and acting never share a method. What to do with an instance is decided by
`launcher.lifecycle` (a `Step` from the job as squeue reports it, a probe, a callback), what each
model needs by `launcher.scaling` (a plan: desired replicas, submissions, drains), what clients see
by `launcher.publish`. This module applies them: `_apply` for an instance's step, `_apply_actions`
for a model's plan, `_submit` for a new job; they are the only methods that change an instance.

A record is written (`requested`) before `sbatch` runs, so a launcher that dies in between leaves
a trace its successor reconciles against `squeue` (the job carries the instance id in its
comment): nothing is submitted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import redis.asyncio as aioredis

from launcher import lifecycle as lc
from launcher.batch_scaling import batch_time_min_min
from launcher.cluster_placer import ClusterPlacer
from launcher.clusters import allowed_here
from launcher.health import Health, Prober, probe_all
from launcher.healthcheck import HealthCheck
from launcher.history import HistoryStore
from launcher.idle_budgets import IdleBudgets
from launcher.jobhost import HostCheck
from launcher.jobs import Refusal, new_instance_id, new_token, token_ok
from launcher.lifecycle import CANCEL_SENT, JOB_DRAIN, Step
from launcher.lora import AdapterSync
from launcher.metrics import LauncherMetrics
from launcher.publish import DecisionBoard, PhasePublisher, model_phase
from launcher.report import Stopwatch, TickReport
from launcher.scale_step import ScaleStep
from launcher.scaling import ModelActions, ScalePlan
from launcher.settings import LauncherSettings
from launcher.submission import job_renderer, new_record, place
from launcher.submit_gate import SubmitGate
from slurm.backend import SlurmBackend
from slurm.errors import ScriptValidationError, SlurmCommandError, SlurmError
from slurm.limits import submit_limit
from slurm.types import JobState, SlurmJob
from warmpool.events import EventLog
from warmpool.instance_store import InstanceStore
from warmpool.instances import LIVE_STATES, InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.learnt import LOAD_TIMES, START_TIMES, LearntTimes
from warmpool.models import ModelStore
from warmpool.routing import Routing
from warmpool.settings import SITE_TENANT_LIMITS, TenantLimits
from warmpool.snapshot import SnapshotCache, SnapshotReader
from warmpool.specs import ModelKind, ModelSpec, adapters_of
from warmpool.tenant_limits import TenantBudget
from warmpool.timeline import Timeline

S = InstanceState


class Actuator:
    """The one place that changes instances: applies lifecycle steps and scaling actions, submits jobs.

    Every write to an instance record, its routing or its job goes through here; the `Launcher`
    decides when (its tick, the callbacks, the health check) and under its lock.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        slurm: SlurmBackend,
        settings: LauncherSettings,
        *,
        callback_url: str,
        keys: Keys,
        prober: Prober,
        metrics: LauncherMetrics,
        tenant_limits: TenantLimits = SITE_TENANT_LIMITS,
        model_roots: Sequence[Path] = (),
    ) -> None:
        self.redis = redis
        self.model_roots = tuple(model_roots)
        """Model paths must still resolve under these when a job is submitted (and when it starts)."""
        self.slurm = slurm
        self.settings = settings
        self.callback_url = callback_url
        self.keys = keys
        self.prober = prober
        self.metrics = metrics
        self.models = ModelStore(redis, keys, local_only=True)
        self.instances = InstanceStore(redis, keys)
        self.routing = Routing(redis, keys)
        self.events = EventLog(redis, keys)
        self.history = HistoryStore(redis, keys)
        self.timeline = Timeline(redis, keys)
        self.tenant_budget = TenantBudget(redis, keys, tenant_limits)
        self.board = DecisionBoard(redis, keys, self.events)
        self.cluster = settings.cluster  # this launcher acts only on instances of this cluster
        self.placer = ClusterPlacer(redis, keys, slurm, settings, self.events)
        self.publisher = PhasePublisher(redis, keys, settings, metrics)
        self.adapters = AdapterSync(prober.client, self.instances, self.events)
        self.specs: dict[str, ModelSpec] = {}
        """The registry as the last tick read it."""
        self.unhealthy: dict[str, int] = {}
        """Health probes missed in a row, per ready instance."""
        self.gate = SubmitGate(self.history, self.events, settings)
        self.stalled_s: dict[str, float] = {}
        """When each model's last submission failed or was held back: its other missing replicas wait."""

    async def apply(self, record: InstanceRecord, step: Step, now_s: float, report: TickReport) -> None:
        """Carry out an instance's step, in order, noting what it did in `report`."""
        for action in step.actions:
            if not isinstance(action, lc.Note):
                report.touched.add(record.model)
            match action:
                case lc.Adopt(job_id):
                    await self.transition(record, S.PENDING, now_s, job_id=job_id)
                    await self.events.record("instance.adopted", now_s=now_s, model=record.model, instance=record.id)
                case lc.Move(state, at_s, fields):
                    await self.transition(record, state, at_s, **dict(fields))
                case lc.Note(fields):
                    if held := lc.newly_held(record, fields):
                        await self.events.record(
                            "instance.held", now_s=now_s, model=record.model, instance=record.id, reason=held
                        )
                    for name, value in fields:
                        setattr(record, name, value)
                    await self.instances.update(record.id, **dict(fields))
                case lc.Observe(field_name, phase, seconds):
                    await self.observe(record.model, field_name, phase, seconds)
                case lc.Unroute():
                    await self.routing.deactivate(record.model, record.id)
                case lc.MarkReady():
                    spec = self.specs.get(record.model) or await self.models.get(record.model)
                    if spec is not None:
                        await self.mark_ready(record, spec, now_s)
                        report.ready.append(record.id)
                case lc.Drain(reason, cancel, by_job):
                    await self.drain(record, now_s, reason, cancel=cancel, by_job=by_job)
                    report.draining.append(record.id)
                case lc.Ended(reason):
                    await self.drain(record, now_s, reason, cancel=False)
                    await self.gone(record, now_s, report)
                case lc.Gone(reason):
                    await self.gone(record, now_s, report, reason)
                case lc.Cancel():
                    await self.cancel(record, now_s)
                    report.cancelled.append(record.id)
                case lc.Fail(reason, cancel_job):
                    await self.fail(record, now_s, reason, cancel_job=cancel_job)
                    report.failed[record.id] = reason
                case lc.Broken(reason):
                    await self.history.mark_broken(record.model, reason)
                    await self.events.record("model.broken", now_s=now_s, model=record.model, reason=reason)

    async def apply_actions(self, plan: ScalePlan, actions: ModelActions, now_s: float, report: TickReport) -> bool:
        """Carry out a model's plan: record the decision, submit, drain, renew. True when it changed an instance."""
        model, decision = actions.model, actions.decision
        report.desired[model] = decision.replicas
        await self.board.record(model, decision, now_s)
        active = {r.id: r for r in plan.active}
        capacity = len(plan.capacity)
        for sub in [s for s in actions.submissions if s.successor_of is None]:
            iid = await self.submit(plan.spec, now_s=now_s, why=sub.why, capacity_seen=capacity, batch=sub.batch)
            if iid:
                report.submitted.append(iid)
                capacity += 1
            elif self.stalled_s.get(plan.spec.name) == now_s:
                # Not tried again for the next missing replica: a refused 64-replica spec costs one sbatch.
                break
        for order in [o for o in actions.drains if o.record.cluster == self.cluster]:  # others drain theirs
            await self.drain(order.record, now_s, order.reason, cancel=order.cancel)
            report.draining.append(order.record.id)
        for sub in [s for s in actions.submissions if s.successor_of is not None]:
            old = active[sub.successor_of or ""]
            if old.state is not S.READY or old.cluster != self.cluster:
                continue  # drained just now, or renewed by its own cluster's launcher
            iid = await self.submit(plan.spec, now_s=now_s, why=sub.why, successor_of=old.id)
            if iid:
                report.submitted.append(iid)
                old.successor = iid
                await self.instances.update(old.id, successor=iid)
                await self.events.record(
                    "instance.renewal",
                    now_s=now_s,
                    model=model,
                    instance=old.id,
                    successor=iid,
                    time_left_s=round((old.end_time_s or now_s) - now_s, 1),
                    lead_s=round(actions.renewal_lead_s, 1),
                )
        return bool(actions.submissions or actions.drains)

    async def submit(
        self,
        spec: ModelSpec,
        *,
        now_s: float,
        why: str,
        successor_of: str | None = None,
        capacity_seen: int | None = None,
        batch: bool = False,
    ) -> str | None:
        """Write a `requested` record, place and render its job, `sbatch` it; the new instance id, or None.

        With other live clusters, a new replica goes where it starts first (`ClusterPlacer.submit_if_chosen`).
        `batch`: a batch job (`launcher.batch_scaling`), placed on preemptible capacity and fitted by backfill."""
        if not allowed_here(spec.resources.clusters, self.cluster):
            return None
        if not await self.gate.allows(spec.name, now_s):
            self.stalled_s[spec.name] = now_s
            return None
        # A batch job takes this cluster's gaps: it is not placed against other clusters.
        rival = await self.placer.rivals(spec, now_s) if successor_of is None and not batch else []
        iid, token, api_key = new_instance_id(), new_token(), new_token()
        spec = await self.tenant_budget.with_account(spec)
        record = new_record(
            spec, iid, token=token, api_key=api_key, now_s=now_s, successor_of=successor_of, cluster=self.cluster
        )
        record.batch = batch
        try:
            load_p95_s = (await self.history.get(spec.name)).load_p95_s if batch else None
            render = job_renderer(
                spec,
                iid,
                token=token,
                api_key=api_key,
                settings=self.settings,
                callback_url=self.callback_url,
                enable_lora=bool(adapters_of(spec.name, await self.models.all())),
                model_roots=self.model_roots,
                batch_time_min_min=batch_time_min_min(spec, load_p95_s, self.settings) if batch else None,
            )
            estimating = self.placer.estimate(spec, render, now_s) if rival else None
            placement, est_s = await (estimating or place(self.slurm, spec, render, self.settings, batch=batch))
            script = render(*placement)
        except ScriptValidationError as exc:
            # A spec that cannot be rendered will never start: say so instead of retrying.
            reason = f"invalid job: {exc}"[:500]
            await self.history.mark_broken(spec.name, reason)
            await self.events.record("model.broken", now_s=now_s, model=spec.name, reason=reason)
            return None
        record.partition, record.qos, record.est_start_s = placement[0], placement[1], est_s
        record.account = spec.resources.account
        if rival:
            return await self.placer.submit_if_chosen(
                spec, now_s, capacity_seen, lambda: self._submit_record(spec, record, script, now_s, why)
            )
        return await self._submit_record(spec, record, script, now_s, why)

    async def _submit_record(
        self, spec: ModelSpec, record: InstanceRecord, script: str, now_s: float, why: str
    ) -> str | None:
        iid, successor_of = record.id, record.successor_of
        placement = (record.partition, record.qos)
        if not await self.tenant_budget.admit(spec, iid, now_s=now_s):
            return None
        await self.instances.put(record)
        try:
            job_id = await self.slurm.submit(script)
        except SlurmError as exc:
            self.stalled_s[spec.name] = now_s
            held = submit_limit(str(exc), account=record.account, qos=record.qos)
            if held is not None:
                await self.tenant_budget.refund(spec, iid, now_s=now_s)
                await self.limit_held(record, now_s, held)
                return None
            reason = f"submission failed: {exc}"[:500]
            if isinstance(exc, SlurmCommandError):  # refused outright: waiting clients are told at once
                await self.history.refused(spec.name, reason)
            await self.fail(record, now_s, reason)
            return None
        await self.history.submission_accepted(spec.name)
        await self.transition(record, S.PENDING, now_s, job_id=str(job_id))
        kind = "renewal" if successor_of else "batch" if record.batch else "scale"
        self.metrics.submissions.labels(spec.name, kind).inc()
        await self.events.record(
            "instance.submitted",
            now_s=now_s,
            model=spec.name,
            instance=iid,
            job_id=job_id,
            cluster=self.cluster,
            partition=placement[0],
            qos=placement[1],
            why=why,
            batch=record.batch,
        )
        return iid

    async def transition(self, record: InstanceRecord, state: InstanceState, now_s: float, **fields: object) -> None:
        await self.instances.transition(record, state, now_s=now_s, **fields)
        await self.publish_one(record.model, now_s)
        await self.events.record(
            f"instance.{state.value}",
            now_s=now_s,
            model=record.model,
            instance=record.id,
            **{k: v for k, v in fields.items() if k in ("job_id", "host", "port", "reason")},
        )

    async def publish_one(self, model: str, now_s: float) -> None:
        """Tell the clients waiting for `model` at once what changed (the tick republishes every model)."""
        phase = model_phase(await self.instances.all(model), await self.history.get(model), now_s, self.settings)
        await self.publisher.write({model: phase}, now_s, force=True)

    async def mark_ready(self, record: InstanceRecord, spec: ModelSpec, now_s: float) -> None:
        adapters = adapters_of(spec.name, await self.models.all())
        if adapters:
            await self.adapters.sync(record, adapters, now_s)
        await self.transition(record, S.READY, now_s)
        await self.timeline.cold_start(record, now_s=now_s)
        granted = await self.routing.activate(record.model, record.id, cap=spec.policy.max_concurrency)
        if granted:
            await self.history.granted(record.model, now_s)
        ts = record.timestamps
        if S.LOADING.value in ts:
            await self.observe(record.model, LOAD_TIMES, "load", now_s - ts[S.LOADING.value])
            if S.STARTING.value in ts:
                await self.observe(record.model, START_TIMES, "start", ts[S.LOADING.value] - ts[S.STARTING.value])
        await self.history.start_succeeded(record.model)
        await self.events.record(
            "instance.routed", now_s=now_s, model=record.model, instance=record.id, granted=granted
        )
        if record.successor_of:
            old = await self.instances.get(record.successor_of)
            if old is not None and old.state is S.READY:
                await self.drain(old, now_s, f"renewed by {record.id}", cancel=False)

    async def reroute(self, record: InstanceRecord, spec: ModelSpec, now_s: float) -> None:
        """Route again to a healthy ready instance a gateway took out of routing (it could not connect once)."""
        await self.routing.activate(record.model, record.id, cap=spec.policy.max_concurrency)
        await self.events.record("instance.rerouted", now_s=now_s, model=record.model, instance=record.id)

    async def drain(
        self, record: InstanceRecord, now_s: float, reason: str, *, cancel: bool, by_job: bool = False
    ) -> None:
        """Stop routing to an instance; cancel its job now (`cancel`) or once its requests are done.

        `by_job`: the job itself said it stops and drains; it is cancelled only if it outlives its
        warning lead plus `drain_grace_s`.
        """
        await self.routing.deactivate(record.model, record.id)
        if by_job:
            record.timestamps[JOB_DRAIN] = now_s
        await self.transition(record, S.DRAINING, now_s, reason=reason)
        if cancel or record.job_id is None:
            await self.cancel(record, now_s)

    async def cancel(self, record: InstanceRecord, now_s: float) -> None:
        record.timestamps[CANCEL_SENT] = now_s
        await self.instances.update(record.id, timestamps=record.timestamps)
        if record.job_id is not None:
            await self.cancel_job(int(record.job_id))
        await self.events.record("instance.cancel", now_s=now_s, model=record.model, instance=record.id)

    async def cancel_job(self, job_id: int) -> None:
        with contextlib.suppress(SlurmError):
            await self.slurm.cancel(job_id)

    async def gone(self, record: InstanceRecord, now_s: float, report: TickReport, why: str | None = None) -> None:
        await self.routing.deactivate(record.model, record.id)
        await self.transition(record, S.GONE, now_s, **({"reason": why} if why else {}))
        report.gone.append(record.id)

    async def limit_held(self, record: InstanceRecord, now_s: float, reason: str) -> None:
        """An accounting limit refused the job: the model waits, retries with backoff, never breaks for it."""
        await self.transition(record, S.GONE, now_s, reason=reason)
        holds = await self.history.limit_held(
            record.model,
            now_s=now_s,
            backoff_s=self.settings.failure_backoff_s,
            max_backoff_s=self.settings.max_backoff_s,
            reason=reason,
        )
        await self.events.record("model.held", now_s=now_s, model=record.model, reason=reason, refusals=holds)

    async def fail(self, record: InstanceRecord, now_s: float, reason: str, *, cancel_job: bool = True) -> None:
        """Mark an instance failed (keeping why), end its job, and back the model off."""
        await self.routing.deactivate(record.model, record.id)
        was_ready = S.READY.value in record.timestamps
        await self.transition(record, S.FAILED, now_s, reason=reason)
        self.unhealthy.pop(record.id, None)
        kind = reason.partition(":")[0].partition(" (")[0][:40]
        self.metrics.instance_failures.labels(record.model, kind).inc()
        if cancel_job and record.job_id is not None and CANCEL_SENT not in record.timestamps:
            await self.cancel(record, now_s)
        if record.successor_of:
            await self.instances.update(record.successor_of, successor=None)
        # A crash after serving is resubmitted at once; starts that fail are backed off and counted.
        self.gate.failed(now_s, start=not was_ready)
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

    async def observe(self, model: str, field_name: str, phase: str, seconds: float) -> None:
        seconds = max(0.0, seconds)
        await self.history.observe(model, field_name, seconds)
        self.metrics.cold_start_phase_s.labels(model, phase).observe(seconds)

    async def purge(self, records: list[InstanceRecord], now_s: float) -> None:
        for record in records:
            if record.state in (S.GONE, S.FAILED) and now_s - record.state_since_s > self.settings.gone_retention_s:
                await self.instances.purge(record)


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
        launcher_id: str | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.launcher_id = launcher_id or settings.launcher_id or "launcher"  # in this cluster's status
        self.keys = keys or Keys()
        self.metrics = metrics or LauncherMetrics()
        self.prober = prober or Prober(timeout_s=settings.health_timeout_s)
        self.act = Actuator(
            redis,
            slurm,
            settings,
            callback_url=callback_url,
            keys=self.keys,
            prober=self.prober,
            metrics=self.metrics,
            tenant_limits=tenant_limits,
            model_roots=model_roots,
        )
        self.slurm = slurm
        self.models, self.instances, self.history = self.act.models, self.act.instances, self.act.history
        self.routing, self.events = self.act.routing, self.act.events
        self.timeline, self.tenant_budget = self.act.timeline, self.act.tenant_budget
        self.learnt = LearntTimes(redis, self.keys)
        self.idle_budgets = IdleBudgets(redis, self.keys, settings, self.metrics)
        self.snapshots = SnapshotCache(SnapshotReader(redis, self.keys))
        self.scale = ScaleStep(redis, self.keys, settings, self.act, self.snapshots, self.idle_budgets)
        self.inputs, self.planner, self.hist_cache = self.scale.inputs, self.scale.planner, self.scale.hist_cache
        self.decisions = self.planner.decisions
        # Only the loading watchers (a runner concern) read a clock; ticks get the time passed in.
        self.clock = clock
        self.watch_loading = watch_loading and clock is not None
        self.lock = asyncio.Lock()
        self.host_check = HostCheck(slurm, allow_loopback=settings.allow_loopback_engines)
        self.health = HealthCheck(self.act, self.lock)
        self._bases: list[str] = []
        """The base models of the registry as the last tick read it."""
        self._base_set: frozenset[str] = frozenset()
        self._specs: dict[str, ModelSpec] = {}
        self._registry_generation = -1
        """`ModelStore.generation` when `_specs` and `_bases` were derived: they hold while it stands."""

    def _registry_changed(self, spec_list: list[ModelSpec]) -> None:
        """Derive what the tick needs from the registry, and drop what is remembered of removed models.

        Runs only when the registry changed (`ModelStore.generation`), so a steady tick makes no pass
        over every registered model for this.
        """
        self._registry_generation = self.models.generation
        self._specs = {s.name: s for s in spec_list}
        self._bases = [s.name for s in spec_list if s.kind is ModelKind.BASE]
        self._base_set = frozenset(self._bases)
        self.snapshots.forget(set(self._base_set))
        self.scale.forget(self._bases)

    async def aclose(self) -> None:
        await self.health.aclose()
        await self.prober.aclose()

    # --- demand: the fast path from zero ------------------------------------------------------

    async def on_demand(self, model: str, *, now_s: float) -> str | None:
        """A model got demand: if nothing serves it or is coming, submit one instance now.

        Returns the new instance id, or None when nothing was submitted (already warm or coming,
        unknown, broken or backing off). Concurrent calls for one model submit once.
        """
        spec = await self.models.resolve(model)
        if spec is not None and spec.instance_model != spec.name:
            spec = await self.models.get(spec.instance_model)
        if spec is None:
            return None
        await self.history.demanded(spec.name, now_s)
        async with self.lock:
            live = [r for r in await self.instances.all(spec.name) if r.state in LIVE_STATES]
            if any(r.state is not S.DRAINING for r in live):
                return None  # on any cluster
            hist = await self.history.get(spec.name)
            if hist.broken_reason or now_s < hist.retry_at_s:
                return None
            return await self.act.submit(spec, now_s=now_s, why="demand", capacity_seen=0)

    # --- callbacks from jobs ------------------------------------------------------------------

    async def on_register(
        self, iid: str, *, job_id: int | None, host: str, port: int, token: str, now_s: float
    ) -> Refusal | None:
        """A job's engine started and listens on host:port: None when accepted, else why not.

        The token must match; the job id must be the instance's; the host must be the job's batch
        host as Slurm reports it (`HostCheck`). A host that fails that check fails the instance.
        """
        record = await self.instances.get(iid)
        if record is None or not token_ok(record, token):
            return Refusal(401, "unknown instance or wrong token")
        if record.cluster != self.act.cluster:
            return Refusal(403, f"instance {iid} runs on cluster {record.cluster}, not {self.act.cluster}")
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
                await self.act.fail(record, now_s, f"registration refused: {problem}"[:500])
                return Refusal(403, problem)
            if S.STARTING.value not in record.timestamps:
                # The job called back before a tick saw it running.
                record.timestamps[S.STARTING.value] = now_s
            await self.act.transition(record, S.LOADING, now_s, host=host, port=port, job_id=record.job_id)
        if self.watch_loading and self.clock is not None:
            self.health.watch(iid, self.clock)
        return None

    async def on_deregister(self, iid: str, *, reason: str, token: str, now_s: float) -> bool:
        """A job stops serving: the walltime warning, a SIGTERM (scancel, preemption) or its engine exited."""
        async with self.lock:
            record = await self.instances.get(iid)
            if record is None or not token_ok(record, token) or record.cluster != self.act.cluster:
                return False
            await self.act.apply(record, lc.deregister_step(record, reason, now_s, self.settings), now_s, TickReport())
            return True

    # --- the tick -----------------------------------------------------------------------------

    async def tick(self, *, now_s: float) -> TickReport:
        """One reconciliation: squeue once, move every instance along, scale every model."""
        report = TickReport()
        self.metrics.ticks.inc()
        step = Stopwatch(report.steps_ms)
        async with self.lock:
            # squeue runs while the registry, the instance records and the models' snapshots are read
            # (of the models known at the last tick, those marked changed since and a rolling share of the
            # rest; the steps below re-read what they change).
            known = self._bases
            jobs_or_error, spec_list, records, snaps = await asyncio.gather(
                self._jobs(), self.models.all(), self.instances.all(), self.snapshots.refresh(known)
            )
            step("slurm+read")
            jobs: list[SlurmJob] | None = None
            if isinstance(jobs_or_error, SlurmError):
                report.slurm_error = str(jobs_or_error)[:300]
                await self.events.record("slurm.unavailable", now_s=now_s, error=report.slurm_error)
            else:
                jobs = jobs_or_error
            await self.act.placer.report(self.launcher_id, now_s, report.slurm_error)
            own = [r for r in records if r.cluster == self.act.cluster]  # the other clusters' are theirs
            registry_changed = self.models.generation != self._registry_generation
            if registry_changed:
                self._registry_changed(spec_list)
                # Learnt load times of a model whose engine changed are dropped (specs seen unchanged cost nothing).
                report.touched |= await self.learnt.forget_changed(spec_list, self.settings.engine_command, now_s=now_s)
            specs = self._specs
            self.act.specs = specs
            if jobs is not None:
                await self._reconcile(records, jobs, now_s, report)
                await self._probe_loading(own, specs, now_s, report)
                await self._progress_drains(own, now_s, report)
            step("reconcile")
            bases = self._bases
            if known is not bases:  # the registry changed: snapshots of new models, none of removed ones
                stale = [m for m in bases if m in report.touched or m not in snaps]
            else:
                stale = sorted(m for m in report.touched if m in self._base_set)
            if stale:
                snaps.update(await self.snapshots.reread(stale))
            if known is not bases:
                snaps = {m: snaps[m] for m in bases}
            hists = self.scale.histories(snaps, None if known is not bases else self.snapshots.read_since_refresh)
            step("snapshot")
            scaled: set[str] = set()
            if jobs is not None:
                scaled = await self.scale.run(
                    specs, bases, self._base_set, snaps, hists, records, now_s, report, full_pass=registry_changed
                )
            if scaled:
                # What scaling changed (a submission, a model found broken) is published as it is now.
                snaps.update(await self.snapshots.reread(sorted(scaled & self._base_set)))
                hists = self.scale.histories(snaps, self.snapshots.read_since_refresh)
            step("scale")
            if report.changed():
                records = await self.instances.all()
            await self.act.publisher.all(specs, records, hists, now_s)
            await self.timeline.sample(now_s, specs.values(), snaps, records, report.desired)
            await self.act.purge(records, now_s)
            step("publish")
        for model in await self.routing.queued_models():
            await self.routing.pump(model)
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
        self, records: list[InstanceRecord], jobs: list[SlurmJob], now_s: float, report: TickReport
    ) -> None:
        """Each of this cluster's live instances' `next_step` against its job; jobs no record knows (of any
        cluster: one renamed while its jobs ran keeps them) are cancelled."""
        by_iid: dict[str, SlurmJob] = {}
        for job in sorted(jobs, key=lambda j: j.job_id):
            if job.instance_id:
                by_iid[job.instance_id] = job
        live_ids = {r.id for r in records if r.state in LIVE_STATES}
        # Jobs nobody knows (a lost record, or a submission that timed out after Slurm took it) are orphans.
        for iid, job in by_iid.items():
            if iid not in live_ids and job.state.is_active and job.state is not JobState.COMPLETING:
                await self.act.cancel_job(job.job_id)
                report.cancelled.append(iid)
                await self.events.record("instance.orphan_cancelled", now_s=now_s, instance=iid, job_id=job.job_id)
        for record in [r for r in records if r.cluster == self.act.cluster]:
            await self.act.apply(
                record, lc.next_step(record, by_iid.get(record.id), now_s, self.settings), now_s, report
            )

    async def _probe_loading(
        self, records: list[InstanceRecord], specs: dict[str, ModelSpec], now_s: float, report: TickReport
    ) -> None:
        """Readiness probes of loading instances (ready ones are `check_ready`'s business)."""
        targets = [r for r in records if r.state is S.LOADING and r.url is not None and r.model in specs]
        probes = await probe_all(
            targets, lambda r: self.prober.probe(r.url or "", r.api_key, specs[r.model].client_name)
        )
        for record, probe in zip(targets, probes, strict=True):
            ready = probe.health is Health.READY
            budget_s = 0.0 if ready else lc.load_budget_s(await self.history.get(record.model), self.settings)
            await self.act.apply(record, lc.loading_step(record, ready, now_s, budget_s), now_s, report)

    async def _progress_drains(self, records: list[InstanceRecord], now_s: float, report: TickReport) -> None:
        """Cancel draining instances' jobs once their requests are done or their grace is over."""
        for record in [r for r in records if lc.waits_to_cancel(r)]:
            busy = 0.0
            if lc.needs_busy_probe(record, now_s, self.settings):
                busy_now = await self.prober.busy(record.url or "", record.api_key)
                busy = busy_now if busy_now is not None else 0.0
            await self.act.apply(record, lc.drain_step(record, busy, now_s, self.settings), now_s, report)

    async def check_ready(self, *, now_s: float) -> dict[str, str]:
        """Probe every ready instance and act on the answers (`HealthCheck.run`); the instances failed."""
        return await self.health.run(now_s=now_s)
