"""Accounting limits in words (slurm.limits), where they show (model phase, SSE comments), tenants'
default accounts, and the accounting configuration of the local cluster."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher import lifecycle as lc
from launcher.history import ModelHistory
from launcher.publish import model_phase
from launcher.settings import LauncherSettings
from queue_gateway.progress import queue_comment
from slurm.limits import pending_limit, submit_limit
from slurm.localcluster import LocalCluster
from slurm.localcluster_conf import LocalClusterSpec, render_slurm_conf
from slurm.localdbd import AccountingSpec, render_slurmdbd_conf
from slurm.rootfs import SlurmRuntime
from warmpool.errors import NotPermitted
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.phase import ModelPhase, Phase
from warmpool.settings import SiteTenantLimits
from warmpool.specs import ModelSpec, Resources
from warmpool.tenant_limits import check_account, check_spec, with_tenant_account
from warmpool.tenants import TenantSpec

NOW = 1_000_000.0
# sbatch's own words (Slurm 22.05, MaxSubmitJobsPerUser reached), as the cli backend reports them.
SUBMIT_REFUSED = (
    "sbatch exited 1: sbatch: error: QOSMaxSubmitJobPerUserLimit\n"
    "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
    "(job submit limit, user's size and/or time limits)"
)


@pytest.mark.parametrize(
    ("reason", "expect"),
    [
        ("QOSMaxJobsPerUserLimit", "waiting: QOS limit QOSMaxJobsPerUserLimit (qos small, account team-a)"),
        ("QOSGrpGRES", "waiting: QOS limit QOSGrpGRES (qos small, account team-a)"),
        ("AssocGrpGRES", "waiting: account limit AssocGrpGRES (qos small, account team-a)"),
        ("MaxJobsPerAccount", "waiting: QOS per-account limit MaxJobsPerAccount (qos small, account team-a)"),
        ("AccountingPolicy", "waiting: accounting limit (qos small, account team-a)"),
        ("Resources", None),
        ("Priority", None),
        ("QOSNotAllowed", None),
        (None, None),
    ],
)
def test_pending_reasons_that_are_limits_read_as_waits(reason: str | None, expect: str | None) -> None:
    assert pending_limit(reason, account="team-a", qos="small") == expect


def test_a_limit_without_account_or_qos_names_the_defaults() -> None:
    assert pending_limit("AssocMaxJobsLimit", account=None, qos=None) == (
        "waiting: account limit AssocMaxJobsLimit (qos default, account default)"
    )


def test_only_accounting_refusals_of_sbatch_are_waits() -> None:
    assert submit_limit(SUBMIT_REFUSED, account="a", qos="q") == (
        "waiting: QOS limit on submitted jobs (MaxSubmitJobs; qos q, account a)"
    )
    invalid = "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"
    assert submit_limit(invalid, account="a", qos="q") is None
    assert submit_limit("Memory specification can not be satisfied", account=None, qos=None) is None


def _pending(reason: str | None) -> InstanceRecord:
    return InstanceRecord(
        id="i1", model="m", state=InstanceState.PENDING, slurm_reason=reason, qos="small", account="team-a"
    )


def _hist(**fields: object) -> ModelHistory:
    base: dict[str, object] = {
        "load_times_s": [],
        "queue_waits_s": [],
        "start_failures": 0,
        "retry_at_s": 0.0,
        "broken_reason": None,
        "last_request_s": None,
    }
    return ModelHistory(**{**base, **fields})  # type: ignore[arg-type]


def test_a_held_pending_job_gives_the_phase_its_wait_in_words() -> None:
    settings = LauncherSettings()
    held = model_phase([_pending("QOSMaxJobsPerUserLimit")], _hist(), NOW, settings)
    assert (held.phase, held.slurm_reason) == (Phase.PENDING, "QOSMaxJobsPerUserLimit")
    assert held.detail == "waiting: QOS limit QOSMaxJobsPerUserLimit (qos small, account team-a)"
    assert model_phase([_pending("Resources")], _hist(), NOW, settings).detail is None


def test_a_refused_submission_waits_until_its_retry_then_goes_cold() -> None:
    settings = LauncherSettings()
    hist = _hist(retry_at_s=NOW + 10, held_reason="waiting: QOS limit on submitted jobs")
    phase = model_phase([], hist, NOW, settings)
    assert (phase.phase, phase.detail) == (Phase.PENDING, "waiting: QOS limit on submitted jobs")
    # Nobody retried (no demand left): cold again, not pending forever.
    assert model_phase([], hist, NOW + 10 + settings.tick_s + 1, settings).phase is Phase.COLD


def test_an_event_only_when_a_job_becomes_held() -> None:
    record = _pending("Priority")
    assert lc.newly_held(record, (("slurm_reason", "QOSMaxJobsPerUserLimit"),)) == (
        "waiting: QOS limit QOSMaxJobsPerUserLimit (qos small, account team-a)"
    )
    assert lc.newly_held(_pending("QOSMaxJobsPerUserLimit"), (("slurm_reason", "QOSMaxJobsPerUserLimit"),)) is None
    assert lc.newly_held(record, (("slurm_reason", "Resources"),)) is None


def test_held_clients_read_the_wait_in_a_second_comment_line() -> None:
    phase = ModelPhase(
        phase=Phase.PENDING,
        slurm_reason="QOSMaxJobsPerUserLimit",
        detail="waiting: QOS limit QOSMaxJobsPerUserLimit (qos small, account team-a)\nx",
    )
    assert queue_comment(1, phase, now_s=NOW) == (
        b": slurmless queue position=1 phase=pending reason=QOSMaxJobsPerUserLimit eta=unknown\n"
        b": slurmless waiting: QOS limit QOSMaxJobsPerUserLimit (qos small, account team-a) x\n\n"
    )
    # A broken model's detail is no wait: it stays out of the progress comment.
    failed = ModelPhase(phase=Phase.FAILED, detail="5 failed starts")
    assert b"failed starts" not in queue_comment(None, failed, now_s=NOW)


def _owned(account: str | None = None) -> ModelSpec:
    return ModelSpec(name="m", source="org/m", resources=Resources(account=account), owner_tenant="lab")


def test_a_tenants_account_fills_in_only_where_the_model_names_none() -> None:
    tenant = TenantSpec(name="lab", account="team-a")
    assert with_tenant_account(_owned(), tenant).resources.account == "team-a"
    assert with_tenant_account(_owned("team-b"), tenant).resources.account == "team-b"
    assert with_tenant_account(_owned(), None).resources.account is None


def test_a_tenants_account_must_be_one_the_site_allows() -> None:
    site = SiteTenantLimits(accounts=["team-a"])
    check_account(TenantSpec(name="lab", account="team-a"), site)
    check_account(TenantSpec(name="lab"), SiteTenantLimits())
    with pytest.raises(NotPermitted, match=re.escape("'team-b' is not allowed for tenant lab (team-a)")):
        check_account(TenantSpec(name="lab", account="team-b"), site)
    with pytest.raises(NotPermitted, match=re.escape("none: list it in registry.tenant_limits.accounts")):
        check_account(TenantSpec(name="lab", account="team-a"), SiteTenantLimits())
    # The filled-in account meets the same allow-list at submission as one the model names.
    with pytest.raises(NotPermitted, match=re.escape("resources.account")):
        check_spec(with_tenant_account(_owned(), TenantSpec(name="lab", account="team-b")), site, "lab")


@pytest.mark.parametrize("bad", ["-A", "a b", "x;y", "a" * 65, ""])
def test_a_tenant_account_is_a_slurm_word(bad: str) -> None:
    with pytest.raises(ValueError, match="account"):
        TenantSpec(name="lab", account=bad)


def _spec(tmp: Path, slurmdbd_port: int | None, *, preempt_qos: bool = False) -> LocalClusterSpec:
    return LocalClusterSpec(
        base_dir=tmp,
        cluster_name="c",
        hostname="h",
        slurmctld_port=1,
        slurmd_port=2,
        gpus=1,
        cpus=2,
        memory_mb=1000,
        backfill_interval_s=1,
        slurmd_timeout_s=30,
        default_time_min=60,
        max_time_min=120,
        slurmdbd_port=slurmdbd_port,
        preempt_qos=preempt_qos,
    )


def test_slurm_conf_enforces_accounting_only_with_a_slurmdbd(tmp_path: Path) -> None:
    plain = render_slurm_conf(_spec(tmp_path, None)).splitlines()
    assert "AccountingStorageType=accounting_storage/none" in plain
    assert not any(line.startswith("AccountingStorageEnforce") for line in plain)
    lines = render_slurm_conf(_spec(tmp_path, 6819)).splitlines()
    assert {
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStoragePort=6819",
        "AccountingStorageEnforce=associations,limits,qos",
        "AccountingStorageTRES=gres/gpu",
        f"AccountingStoragePass={tmp_path / 'munge' / 'munge.socket'}",
    } <= set(lines)


def test_slurmdbd_conf_points_at_the_private_database(tmp_path: Path) -> None:
    spec = AccountingSpec.new(tmp_path, "h", 3306, 6819, tmp_path / "munge.socket")
    lines = render_slurmdbd_conf(spec).splitlines()
    assert {
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        "StoragePort=3306",
        "DbdPort=6819",
        "SlurmUser=root",
        f"StoragePass={spec.db_password}",
    } <= set(lines)
    assert (
        len(spec.db_password) == 32
        and spec.db_password != AccountingSpec.new(tmp_path, "h", 1, 2, tmp_path).db_password
    )


def test_qos_preemption_is_configured_with_accounting_only(tmp_path: Path) -> None:
    lines = render_slurm_conf(_spec(tmp_path, 6819, preempt_qos=True)).splitlines()
    assert {"PreemptType=preempt/qos", "PreemptMode=CANCEL", "SlurmctldParameters=preempt_send_user_signal"} <= set(
        lines
    )
    # The partitions keep no tiers of their own: the QOS (Preempt=, GraceTime=) decide.
    assert not [line for line in lines if "PriorityTier" in line]
    with pytest.raises(ValueError, match="preempt_qos needs accounting"):
        LocalCluster(tmp_path / "c", preempt_qos=True)
    with pytest.raises(ValueError, match="host's Slurm only"):
        LocalCluster(tmp_path / "c", accounting=True, runtime=SlurmRuntime(version="24.11", rootfs=tmp_path))
