"""Accounting limits as Slurm states them, turned into what a waiting client and an operator read.

With accounting enforced (`AccountingStorageEnforce=limits,qos`), a QOS or association limit either
holds a submitted job (pending with a reason such as `QOSMaxJobsPerUserLimit` or `AssocGrpGRES`) or
makes `sbatch` refuse it (`MaxSubmitJobs`: "Job violates accounting/QOS policy"). Both clear up by
themselves when the user's other jobs end, so slurmless reports them as a wait, never as a failure.
Pure functions; the reason codes are Slurm's (job_reason_codes in Slurm's documentation).
"""

from __future__ import annotations

__all__ = ["pending_limit", "submit_limit"]

# sbatch's refusals that are accounting limits (transient), by the words of slurm_strerror.
_SUBMIT_LIMIT_MESSAGES = (
    "Job violates accounting/QOS policy",
    "QOSMaxSubmitJob",
    "AssocMaxSubmitJob",
)


def _whose(account: str | None, qos: str | None) -> str:
    return f"qos {qos or 'default'}, account {account or 'default'}"


def pending_limit(reason: str | None, *, account: str | None, qos: str | None) -> str | None:
    """ "waiting: ..." for a pending job held by an accounting limit; None for any other reason.

    `QOS*` reasons are limits of the job's QOS (not `QOSNotAllowed`, a configuration error),
    `Assoc*` of its account's association, `Max*PerAccount` of its QOS per account; the fallback
    `AccountingPolicy` says a limit holds it without naming which.
    """
    if not reason:
        return None
    if reason.startswith("QOS") and reason not in ("QOSNotAllowed", "QOSUsageThreshold"):
        return f"waiting: QOS limit {reason} ({_whose(account, qos)})"
    if reason.startswith("Assoc") and reason != "AssocNotAllowed":
        return f"waiting: account limit {reason} ({_whose(account, qos)})"
    if reason.startswith("Max") and reason.endswith("PerAccount"):
        return f"waiting: QOS per-account limit {reason} ({_whose(account, qos)})"
    if reason == "AccountingPolicy":
        return f"waiting: accounting limit ({_whose(account, qos)})"
    return None


def submit_limit(message: str, *, account: str | None, qos: str | None) -> str | None:
    """ "waiting: ..." when `sbatch` refused a job because of an accounting limit; None otherwise."""
    if not any(words in message for words in _SUBMIT_LIMIT_MESSAGES):
        return None
    return f"waiting: QOS limit on submitted jobs (MaxSubmitJobs; {_whose(account, qos)})"
