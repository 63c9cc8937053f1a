"""Configuration text for the throwaway local Slurm cluster (see `slurm.localcluster`).

Pure functions of a `LocalClusterSpec`: no I/O, so the rendered files can be checked in unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "sl-node0"
DEFAULT_PARTITION = "gpu"
PREEMPT_PARTITION = "preempt"
PARTITIONS = (DEFAULT_PARTITION, PREEMPT_PARTITION)


@dataclass(frozen=True)
class LocalClusterSpec:
    """Everything the config files depend on.

    `base_dir` holds every file of the cluster; `hostname` is the machine's short hostname (slurmctld
    refuses to run unless it matches `SlurmctldHost`).
    """

    base_dir: Path
    cluster_name: str
    hostname: str
    slurmctld_port: int
    slurmd_port: int
    gpus: int
    cpus: int
    memory_mb: int
    backfill_interval_s: int
    slurmd_timeout_s: int
    default_time_min: int
    max_time_min: int
    #: The Slurm release the files are for ("22.05", "24.11", "26.05"): options come and go.
    slurm_version: str = "22.05"
    #: JWT signing key for slurmrestd's clients (`AuthAltTypes=auth/jwt`); None: munge only.
    jwt_key: Path | None = None
    #: Partition-priority preemption: jobs of `gpu` (tier 2) cancel jobs of `preempt` (tier 1) after
    #: this grace time (SIGTERM first); None: no preemption.
    preempt_grace_s: int | None = None
    #: QOS preemption (`PreemptType=preempt/qos`, needs accounting): which QOS preempts which, and the
    #: grace time, are set with sacctmgr (`Preempt=`, `GraceTime=` of the QOS).
    preempt_qos: bool = False
    #: Port of the cluster's slurmdbd (`slurm.localdbd`): accounts, QOS and limits are enforced;
    #: None: no accounting.
    slurmdbd_port: int | None = None

    @property
    def conf_path(self) -> Path:
        return self.base_dir / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.base_dir / "munge" / "munge.socket"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "log"

    @property
    def state_save_dir(self) -> Path:
        return self.base_dir / "state"

    @property
    def spool_dir(self) -> Path:
        return self.base_dir / "spool"

    @property
    def gpu_dev_dir(self) -> Path:
        return self.base_dir / "dev"

    def gpu_device(self, index: int) -> Path:
        return self.gpu_dev_dir / f"fakegpu{index}"


def render_slurm_conf(spec: LocalClusterSpec) -> str:
    """Return the text of slurm.conf for `spec`."""
    d = spec.base_dir
    gres = f" Gres=gpu:{spec.gpus}" if spec.gpus > 0 else ""
    # DefMemPerCPU splits the declared memory evenly over the CPUs, so a job asking for one CPU and no
    # memory leaves room for the others: several jobs share the node.
    def_mem_per_cpu_mb = max(1, spec.memory_mb // spec.cpus)
    lines = [
        "# Written by slurmless (slurm/localcluster.py): a throwaway single-node test cluster.",
        f"ClusterName={spec.cluster_name}",
        f"SlurmctldHost={spec.hostname}(127.0.0.1)",
        f"SlurmctldPort={spec.slurmctld_port}",
        f"SlurmdPort={spec.slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # Both auth/munge and cred/munge read the socket from AuthInfo; clients find it through this file.
        f"AuthInfo=socket={spec.munge_socket}",
        *(["AuthAltTypes=auth/jwt", f"AuthAltParameters=jwt_key={spec.jwt_key}"] if spec.jwt_key is not None else []),
        f"StateSaveLocation={spec.state_save_dir}",
        f"SlurmdSpoolDir={spec.spool_dir}",
        f"SlurmctldPidFile={d / 'slurmctld.pid'}",
        f"SlurmdPidFile={d / 'slurmd.pid'}",
        f"SlurmctldLogFile={spec.log_dir / 'slurmctld.log'}",
        f"SlurmdLogFile={spec.log_dir / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # The declared CPUs and memory exceed this machine's: trust the config, not the hardware.
        "SlurmdParameters=config_overrides",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        *_accounting_lines(spec),
        "JobCompType=jobcomp/none",
        *(["JobContainerType=job_container/none"] if _older(spec, "25.05") else []),
        "MpiDefault=none",
        "SwitchType=switch/none",
        "ReturnToService=2",
        *_preemption_lines(spec),
        "SchedulerType=sched/backfill",
        f"SchedulerParameters=bf_interval={spec.backfill_interval_s},sched_interval=2",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU_Memory",
        f"DefMemPerCPU={def_mem_per_cpu_mb}",
        "GresTypes=gpu",
        f"SlurmdTimeout={spec.slurmd_timeout_s}",
        "SlurmctldTimeout=30",
        "MessageTimeout=10",
        "KillWait=2",
        "InactiveLimit=0",
        "MinJobAge=300",
        (
            f"NodeName={NODE_NAME} NodeAddr=127.0.0.1 NodeHostname={spec.hostname} "
            f"CPUs={spec.cpus} RealMemory={spec.memory_mb}{gres} State=UNKNOWN"
        ),
        (
            f"PartitionName={DEFAULT_PARTITION} Nodes={NODE_NAME} Default=YES "
            f"DefaultTime={spec.default_time_min} MaxTime={spec.max_time_min} State=UP"
            + (" PriorityTier=2" if spec.preempt_grace_s is not None else "")
        ),
        (
            f"PartitionName={PREEMPT_PARTITION} Nodes={NODE_NAME} Default=NO "
            f"DefaultTime={spec.default_time_min} MaxTime={spec.max_time_min} State=UP"
            + (
                f" PriorityTier=1 PreemptMode=CANCEL GraceTime={spec.preempt_grace_s}"
                if spec.preempt_grace_s is not None
                else ""
            )
        ),
    ]
    return "\n".join(lines) + "\n"


def _preemption_lines(spec: LocalClusterSpec) -> list[str]:
    if spec.preempt_grace_s is None and not spec.preempt_qos:
        return []
    return [
        "PreemptType=preempt/qos" if spec.preempt_qos else "PreemptType=preempt/partition_prio",
        "PreemptMode=CANCEL",
        # send_user_signal: a job's own --signal (slurmless: B:USR1, drain and leave) goes out when it is
        # chosen for preemption; without it the batch shell hears of it only at the kill.
        # 22.05 spells it as a SlurmctldParameters flag; 23.02 moved it.
        "SlurmctldParameters=preempt_send_user_signal"
        if _older(spec, "23.02")
        else "PreemptParameters=send_user_signal",
    ]


def _accounting_lines(spec: LocalClusterSpec) -> list[str]:
    if spec.slurmdbd_port is None:
        return ["AccountingStorageType=accounting_storage/none"]
    return [
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStorageHost=127.0.0.1",
        f"AccountingStoragePort={spec.slurmdbd_port}",
        # With munge, the "password" names the munge socket for talking to slurmdbd (default: the system's).
        f"AccountingStoragePass={spec.munge_socket}",
        # Jobs need an association (user, account), may only use the QOS it allows, and obey its limits.
        "AccountingStorageEnforce=associations,limits,qos",
        # GPUs are tracked, so GrpTRES=gres/gpu=N limits apply.
        "AccountingStorageTRES=gres/gpu",
    ]


def render_gres_conf(spec: LocalClusterSpec) -> str:
    """Return the text of gres.conf: one fake device file per GPU, so Slurm sets CUDA_VISIBLE_DEVICES."""
    if spec.gpus <= 0:
        return ""
    last = spec.gpus - 1
    devices = spec.gpu_device(0) if last == 0 else spec.gpu_dev_dir / f"fakegpu[0-{last}]"
    return f"NodeName={NODE_NAME} Name=gpu File={devices}\n"


def render_cgroup_conf(spec: LocalClusterSpec) -> str:
    """cgroup.conf: explicit, so slurmd never reads the system's; nothing here uses cgroups."""
    # 24.11 made CgroupAutomount defunct (an error in the logs); the plugin is chosen instead.
    return "CgroupAutomount=no\n" if _older(spec, "24.11") else "CgroupPlugin=disabled\n"


def _older(spec: LocalClusterSpec, version: str) -> bool:
    """True when the spec's Slurm is older than `version` (both "major.minor")."""
    return _version_tuple(spec.slurm_version) < _version_tuple(version)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2])
