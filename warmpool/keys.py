"""The Redis key schema: every key slurmless writes is built here and nowhere else.

{p}models                  hash   model name -> ModelSpec JSON
{p}models:version          string a new random value with every change of {p}models (readers cache the specs)
{p}aliases                 hash   alias/served name -> model name
{p}inst:{iid}              hash   one instance record (see instances.py)
{p}instances               set    every instance id not yet purged
{p}minst:{model}           set    instance ids of one model
{p}ready:{model}           zset   ready instance id -> requests in flight (routing)
{p}q:{model}               zset   ticket id -> arrival sequence (FIFO queue)
{p}qmodels                 set    models whose queue is not empty
{p}dirty                   set    models whose queue, load, demand or history changed since the launcher's last tick
{p}qtotal                  string tickets queued over all models
{p}seq                     string global ticket sequence
{p}t:{tid}                 hash   ticket: model, gw, state, iid, created_s
{p}gw:{gw}:slots           hash   slot id -> "model|iid" held by gateway process gw
{p}gw:{gw}:tickets         set    tickets queued by gateway process gw
{p}gateways                zset   gateway id -> lease expiry (epoch s)
{p}caps                    hash   model -> concurrent requests per instance
{p}gwch:{gw}               pubsub grants for gateway process gw ("tid|iid")
{p}demand                  pubsub model names whose queue got its first ticket
{p}dem:{model}             hash   time slot index -> requests in that slot
{p}idle:{model}            hash   idle-gap bucket (minutes) -> count
{p}gaps:{model}            hash   c<cell>/w<cell> -> idle gaps / waits a cold start after them causes (gaps.py)
{p}mstat:{model}           hash   last_request_s, last_cold_start_s (launcher: requested -> ready), ...
{p}phase:{model}           string ModelPhase JSON: what waiting clients are told
{p}tl:{model}              hash   demand slot index -> SlotSample JSON (launcher; the status page's plots)
{p}cold:{model}            hash   the model's last cold start: when each phase began (launcher, gateway)
{p}uisess:{sha256(sid)}    string a status-page session (UiSession JSON), expires
{p}desired                 hash   model -> desired replicas JSON (with reasons)
{p}events                  stream decisions and lifecycle events
{p}launcher:leader         string leader lease (launcher id) of the cluster named "default"
{p}launcher:leader:{c}     string leader lease of the launchers of cluster c (any other name)
{p}clusters                hash   cluster -> ClusterStatus JSON: its leader, last tick, whether Slurm answered
{p}cest:{model}            hash   cluster -> ClusterEstimate JSON: when a new job for the model would start there
{p}claim:{model}           string the cluster whose launcher is submitting for the model now (short lease)
{p}schedules:{model}       hash   schedule id -> ScheduleSpec JSON
{p}warm:{model}            string WarmRequest JSON (`models warm`); expires when the request does
{p}tenants                 hash   tenant -> TenantSpec JSON
{p}apikeys                 hash   sha256(key) -> ApiKeyRecord JSON
{p}klim:{kid}:rpm:{min}    string requests of one API key in one minute (rpm limit)
{p}klim:{kid}:conc         zset   "gw|request" of one key in flight -> start (concurrency limit)
{p}tlim:{tenant}:conc      zset   "gw|request" of one tenant's keys in flight -> start (tenant quota)
{p}tgpu:{tenant}           zset   instance id -> GPUs, of the tenant's submitted instances (GPU budget)
{p}tgpuh:{tenant}:{day}    string GPU-hours granted to the tenant's jobs on one UTC day
{p}ibudget:{tenant}        hash   an idle GPU-hour budget's rate in force, idle GPU-s since, and the last day's
                                  hourly step curves (launcher; `_site` for the site's); at most
                                  `IDLE_BUDGET_MAX_FIELDS` fields
{p}async:{rid}             hash   async request: state, body, result
{p}asyncq                  zset   async request id -> claim deadline (epoch s), 0 when unclaimed
{p}file:{fid}              hash   uploaded or result file: tenant, filename, purpose, bytes, created_at, expires_at
{p}files:{tenant}          zset   file id -> created_at, one tenant's files
{p}batch:{bid}             hash   batch: static doc (JSON) and its status, timestamps, counts, result files
{p}batches:{tenant}        zset   batch id -> created_at, one tenant's batches
{p}bactive                 zset   batch id -> created_at, every batch not yet in a final state (runners scan it)
{p}bactive:{tenant}        set    one tenant's batches not yet in a final state (concurrency cap)
{p}bpend:{bid}             zset   line index -> lease deadline (epoch s), 0 when unclaimed: lines without a result
{p}bown:{bid}              hash   line index -> token of the claim that may record its result
{p}bdone:{bid}             hash   line index -> token of the claim whose result was recorded (exactly once)
{p}bflight:{model}         hash   claim token -> instance of each batch line in flight (not in the launcher's load)
{p}bdem:{model}            hash   time slot index -> batch lines that found no ready instance (batch demand)
{p}bwait                   zset   model -> last time a batch line found no ready instance of it (epoch s)
"""

from __future__ import annotations

from dataclasses import dataclass

DEMAND_SLOT_S = 600
"""Width of a demand-history time slot: the trace windows are 600 s too."""
DEMAND_RETENTION_SLOTS = 4 * 7 * 86_400 // DEMAND_SLOT_S
"""Demand slots kept per model (four weeks; the launcher's forecast reads three): older ones are trimmed."""
DEFAULT_CLUSTER = "default"
"""The cluster of a single-cluster deployment (and of instance records written before clusters had names)."""
IDLE_HIST_MAX_MIN = 1440
"""Idle gaps of a day or longer share this one bucket, so a model's idle histogram has at most 1441 fields."""


SITE_BUDGET = "_site"
"""The site's idle budget among the tenants' (`Keys.idle_budget`); no tenant name starts with "_"."""


@dataclass(frozen=True)
class Keys:
    """Key builder for one deployment prefix."""

    prefix: str = "sl:"

    @property
    def models(self) -> str:
        return f"{self.prefix}models"

    @property
    def models_version(self) -> str:
        return f"{self.prefix}models:version"

    @property
    def aliases(self) -> str:
        return f"{self.prefix}aliases"

    def instance(self, iid: str) -> str:
        return f"{self.prefix}inst:{iid}"

    @property
    def instances(self) -> str:
        return f"{self.prefix}instances"

    def model_instances(self, model: str) -> str:
        return f"{self.prefix}minst:{model}"

    def ready(self, model: str) -> str:
        return f"{self.prefix}ready:{model}"

    def queue(self, model: str) -> str:
        return f"{self.prefix}q:{model}"

    @property
    def queued_models(self) -> str:
        return f"{self.prefix}qmodels"

    @property
    def dirty_models(self) -> str:
        """Written with every change the launcher's snapshot reads; read and cleared by its tick."""
        return f"{self.prefix}dirty"

    @property
    def queue_total(self) -> str:
        return f"{self.prefix}qtotal"

    @property
    def seq(self) -> str:
        return f"{self.prefix}seq"

    def ticket(self, tid: str) -> str:
        return f"{self.prefix}t:{tid}"

    def gw_slots(self, gw: str) -> str:
        return f"{self.prefix}gw:{gw}:slots"

    def gw_tickets(self, gw: str) -> str:
        return f"{self.prefix}gw:{gw}:tickets"

    @property
    def gateways(self) -> str:
        return f"{self.prefix}gateways"

    def gw_channel(self, gw: str) -> str:
        return f"{self.prefix}gwch:{gw}"

    @property
    def demand_channel(self) -> str:
        return f"{self.prefix}demand"

    @property
    def feasibility_channel(self) -> str:
        """Where the admin API asks the launcher whether the cluster can run a spec (`warmpool.feasibility`)."""
        return f"{self.prefix}feasibility"

    def feasibility_reply(self, request_id: str) -> str:
        """The launcher's answer to one feasibility question (a list of one verdict, expiring)."""
        return f"{self.prefix}feas:{request_id}"

    def demand(self, model: str) -> str:
        return f"{self.prefix}dem:{model}"

    def idle_hist(self, model: str) -> str:
        return f"{self.prefix}idle:{model}"

    def gaps(self, model: str) -> str:
        return f"{self.prefix}gaps:{model}"

    def model_stats(self, model: str) -> str:
        return f"{self.prefix}mstat:{model}"

    def phase(self, model: str) -> str:
        return f"{self.prefix}phase:{model}"

    def timeline(self, model: str) -> str:
        return f"{self.prefix}tl:{model}"

    def cold_start(self, model: str) -> str:
        return f"{self.prefix}cold:{model}"

    def ui_session(self, sid_sha256: str) -> str:
        return f"{self.prefix}uisess:{sid_sha256}"

    @property
    def desired(self) -> str:
        return f"{self.prefix}desired"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def leader(self) -> str:
        return f"{self.prefix}launcher:leader"

    def cluster_leader(self, cluster: str) -> str:
        """The leader lease of one cluster's launchers; the "default" cluster keeps the single-cluster key."""
        return self.leader if cluster == DEFAULT_CLUSTER else f"{self.prefix}launcher:leader:{cluster}"

    @property
    def clusters(self) -> str:
        return f"{self.prefix}clusters"

    def cluster_estimates(self, model: str) -> str:
        return f"{self.prefix}cest:{model}"

    def placement_claim(self, model: str) -> str:
        return f"{self.prefix}claim:{model}"

    def schedules(self, model: str) -> str:
        return f"{self.prefix}schedules:{model}"

    def warm(self, model: str) -> str:
        return f"{self.prefix}warm:{model}"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}tenants"

    def key_rpm(self, key_id: str, minute: int) -> str:
        return f"{self.prefix}klim:{key_id}:rpm:{minute}"

    def key_concurrency(self, key_id: str) -> str:
        return f"{self.prefix}klim:{key_id}:conc"

    def tenant_concurrency(self, tenant: str) -> str:
        return f"{self.prefix}tlim:{tenant}:conc"

    def tenant_gpus(self, tenant: str) -> str:
        return f"{self.prefix}tgpu:{tenant}"

    def tenant_gpu_hours(self, tenant: str, day: int) -> str:
        return f"{self.prefix}tgpuh:{tenant}:{day}"

    def idle_budget(self, tenant: str) -> str:
        """One idle budget's state (`SITE_BUDGET` for the site's): written by the launcher."""
        return f"{self.prefix}ibudget:{tenant}"

    @property
    def api_keys(self) -> str:
        return f"{self.prefix}apikeys"

    def async_request(self, rid: str) -> str:
        return f"{self.prefix}async:{rid}"

    @property
    def async_queue(self) -> str:
        return f"{self.prefix}asyncq"

    def file(self, fid: str) -> str:
        return f"{self.prefix}file:{fid}"

    def tenant_files(self, tenant: str) -> str:
        return f"{self.prefix}files:{tenant}"

    def batch(self, bid: str) -> str:
        return f"{self.prefix}batch:{bid}"

    def tenant_batches(self, tenant: str) -> str:
        return f"{self.prefix}batches:{tenant}"

    @property
    def batches_active(self) -> str:
        return f"{self.prefix}bactive"

    def tenant_batches_active(self, tenant: str) -> str:
        return f"{self.prefix}bactive:{tenant}"

    def batch_pending(self, bid: str) -> str:
        return f"{self.prefix}bpend:{bid}"

    def batch_owners(self, bid: str) -> str:
        return f"{self.prefix}bown:{bid}"

    def batch_done(self, bid: str) -> str:
        return f"{self.prefix}bdone:{bid}"

    def batch_in_flight(self, model: str) -> str:
        return f"{self.prefix}bflight:{model}"

    def batch_demand(self, model: str) -> str:
        return f"{self.prefix}bdem:{model}"

    @property
    def batch_waiting(self) -> str:
        return f"{self.prefix}bwait"
