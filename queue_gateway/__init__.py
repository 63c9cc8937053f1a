"""The queue gateway: slurmless's OpenAI-compatible front door (docs/architecture.md, "A request's path").

Entry point: `queue_gateway.app.build_app(settings, redis_url_or_client, ...)`; run one process
with `python -m queue_gateway` or `slurmless gateway`. Several processes may share one Redis.

HTTP surface
- `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/responses`, `/v1/rerank`,
  `/v1/score`, `/tokenize`, `/detokenize`, `/v1/audio/transcriptions` (multipart): proxied to the
  model's engine, bodies and fields passed through (only `model` is rewritten to the engine's served
  name); the table is `endpoints.ENDPOINTS`.
- `/v1/files`, `/v1/batches`: OpenAI's Files and Batches API (`batch_api`, docs/batches.md); batch
  lines run in idle capacity (`batch_runner`, or `python -m queue_gateway.batch_worker`).
- `POST /v1/slurmless/chunked`, `/v1/slurmless/tribunal`: workflows of several calls (`workflows`).
- `GET /v1/models`, `GET /v1/models/{id}`: models the key may use; `slurmless.state` is `cold`,
  `starting` or `warm` (plus phase, ready instances, queue depth, ETA).
- `GET /v1/async/{id}[?wait_s=N]`: async results (submit with `Prefer: respond-async`).
- `/healthz` (alive), `/readyz` (Redis reachable, grant subscription up), `/metrics` (Prometheus).
- `/admin/...`: the admin API (`queue_gateway.admin`), when present.

Every answer to a model request carries `x-slurmless-cold-start: true|false` and
`x-slurmless-queue-wait-ms: N`. A streaming request that is still queued after one second gets
its headers then (with `x-slurmless-held: true` and the wait so far), SSE comment lines every
`progress_interval_s` (`: slurmless queue position=3 phase=pending reason=Resources eta_s=74`),
and, just before the model's stream, `: slurmless granted cold_start=true queue_wait_ms=N` with
the final figures. A refusal after such headers arrives as a `data: {"error": ...}` event.

Refusals (OpenAI's error JSON): 400 bad JSON or fields, 401 key, 404 unknown model (or another
tenant's private one), 429 queue full while warm or per-key limit (Retry-After), 503 cold budget
exceeded or queue full while cold (Retry-After from the launcher's ETA when known), 502/504 engine
failures before the first byte (after `upstream_retries` retries). Wait budgets: see `budget.py`.
"""
