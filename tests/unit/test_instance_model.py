"""The one LoRA-to-base mapping: `ModelSpec.instance_model`, and the adapters a base serves."""

from __future__ import annotations

from queue_gateway.catalog import route_target
from warmpool.specs import ModelKind, ModelSpec, adapters_of


def test_an_adapter_maps_to_its_base_and_a_base_to_itself() -> None:
    base = ModelSpec(name="llama", source="/m/llama")
    tutor = ModelSpec(name="tutor", source="/m/tutor", kind=ModelKind.LORA, base_model="llama", served_name="t")
    other = ModelSpec(name="other", source="/m/other")
    assert (base.instance_model, tutor.instance_model) == ("llama", "llama")
    assert [s.name for s in adapters_of("llama", [base, tutor, other])] == ["tutor"]
    assert adapters_of("other", [base, tutor, other]) == []
    target = route_target(tutor)
    assert (target.instance_model, target.upstream_name) == ("llama", "t")
