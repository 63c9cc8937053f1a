"""The model-spec options of `slurmless models register|update` come from `ModelSpec`'s fields."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from slurmless.cli import app
from slurmless.cli_spec import PREFIXED, SKIPPED, SPEC_OPTIONS, _options, spec_fields
from warmpool.external import External
from warmpool.specs import ModelSpec, Policy, Resources


def test_every_spec_field_is_an_option_with_its_docstring_as_help() -> None:
    fields = {
        *(f for f in ModelSpec.model_fields if f not in SKIPPED | {"resources", "policy", *PREFIXED}),
        *Resources.model_fields,
        *Policy.model_fields,
        *(f"external_{f}" for f in External.model_fields),
    }
    assert {o.param for o in SPEC_OPTIONS} == fields
    assert all(o.help for o in SPEC_OPTIONS), [o.flag for o in SPEC_OPTIONS if not o.help]
    by_flag = {o.flag: o for o in SPEC_OPTIONS}
    assert by_flag["--time-limit-min"].path == ("resources", "time_limit_min")
    assert by_flag["--partition"].path == ("resources", "partitions") and "(repeatable)" in by_flag["--partition"].help
    assert by_flag["--owner"].path == ("owner_tenant",)


def test_a_new_spec_field_is_a_new_option_without_another_edit() -> None:
    class NewPolicy(Policy):
        model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

        drain_grace_s: float | None = Field(None, ge=0)
        """Seconds a draining instance may finish its requests."""

    class NewSpec(ModelSpec):
        policy: NewPolicy = Field(default_factory=NewPolicy)

    new = {o.flag: o for o in _options(NewSpec, ())}
    assert new["--drain-grace-s"].path == ("policy", "drain_grace_s")
    assert new["--drain-grace-s"].type_ is float and new["--drain-grace-s"].help.startswith("Seconds a draining")


def test_a_field_that_cannot_be_one_option_is_refused_at_import() -> None:
    class Odd(BaseModel):
        mapping: dict[str, int] = Field(default_factory=dict)

    with pytest.raises(TypeError, match="cannot be an option"):
        _options(Odd, ())


def test_given_options_nest_like_the_spec() -> None:
    given: dict[str, Any] = {"source": "/m", "gpus": 2, "partitions": ["a", "b"], "qos": [], "queue_max": 5}
    assert spec_fields(given) == {
        "source": "/m",
        "resources": {"gpus": 2, "partitions": ["a", "b"]},
        "policy": {"queue_max": 5},
    }
    assert spec_fields({}) == {}


def test_help_lists_the_generated_options_with_their_help() -> None:
    result = CliRunner().invoke(app, ["models", "update", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for flag in ("--gpus", "--time-min-min", "--queue-max", "--owner", "--drop-engine-arg", "--private"):
        assert flag in result.output
    assert "Memory per node in MB." in result.output and "--lora-of" not in result.output
