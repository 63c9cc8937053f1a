"""Pure pieces of the gateway: error JSON, progress comments, model targets and visibility."""

from __future__ import annotations

import orjson

from queue_gateway.catalog import route_target, visible
from queue_gateway.errors import EngineRejected, QueueFull, Unavailable
from queue_gateway.progress import granted_comment, queue_comment
from warmpool.apikeys import ApiKeyRecord
from warmpool.phase import ModelPhase, Phase
from warmpool.specs import ModelSpec

NOW = 1_000_000.0


def test_errors_are_openai_json_with_retry_after() -> None:
    exc = QueueFull("full", retry_after_s=1.2)
    assert exc.status == 429
    assert orjson.loads(exc.body()) == {
        "error": {"message": "full", "type": "rate_limit_error", "param": None, "code": "queue_full"}
    }
    assert (b"retry-after", b"2") in exc.headers()
    assert Unavailable("x", code="wait_budget_exceeded").code == "wait_budget_exceeded"
    assert Unavailable("y").code == "model_unavailable", "a per-instance code must not leak to the class"


def test_engine_errors_normalised_from_each_vllm_shape() -> None:
    old = EngineRejected(400, b'{"object":"error","message":"too long","type":"BadRequestError","code":400}')
    assert (old.status, old.message, old.type, old.code) == (400, "too long", "BadRequestError", "400")
    new = EngineRejected(404, b'{"error":{"message":"no such","type":"NotFoundError","param":null,"code":404}}')
    assert orjson.loads(new.body())["error"]["message"] == "no such"
    text = EngineRejected(422, b"plain words")
    assert orjson.loads(text.body())["error"]["message"] == "plain words"


def test_progress_comment() -> None:
    phase = ModelPhase(phase=Phase.PENDING, slurm_reason="Resources", est_start_s=NOW + 60, eta_s=NOW + 73.2)
    assert queue_comment(3, phase, now_s=NOW) == (
        b": slurmless queue position=3 phase=pending reason=Resources start_in_s=60 eta_s=74\n\n"
    )
    replaced = ModelPhase(phase=Phase.PENDING, slurm_reason="Resources", ended_by="preempted")
    assert queue_comment(0, replaced, now_s=NOW) == (
        b": slurmless queue position=0 phase=pending reason=Resources ended_by=preempted eta=unknown\n\n"
    )
    odd = ModelPhase(phase=Phase.PENDING, slurm_reason="a b\nc")
    assert queue_comment(None, odd, now_s=NOW) == b": slurmless queue phase=pending reason=a_b_c eta=unknown\n\n"
    assert granted_comment(cold_start=True, queue_wait_ms=1500) == (
        b": slurmless granted cold_start=true queue_wait_ms=1500\n\n"
    )


def test_lora_adapter_goes_to_its_base_models_instances() -> None:
    base = ModelSpec(name="llama", source="/m/llama", served_name="meta/llama")
    lora = ModelSpec(name="llama-sql", source="/m/sql", kind="lora", base_model="llama")
    assert (route_target(base).instance_model, route_target(base).upstream_name) == ("llama", "meta/llama")
    assert (route_target(lora).instance_model, route_target(lora).upstream_name) == ("llama", "llama-sql")


def test_visibility() -> None:
    key = ApiKeyRecord(key_id="k", tenant="physics")
    assert visible(ModelSpec(name="pub", source="/m/p"), key)
    private = {"public": False}
    assert visible(ModelSpec(name="own", source="/m/o", visibility=private, owner_tenant="physics"), key)
    assert visible(ModelSpec(name="sh", source="/m/s", visibility={"public": False, "tenants": ["physics"]}), key)
    theirs = ModelSpec(name="th", source="/m/t", visibility=private, owner_tenant="chemistry")
    assert not visible(theirs, key)
    assert visible(theirs, ApiKeyRecord(key_id="a", tenant="ops", admin=True))
