"""The model-spec options of `slurmless models register|update`, generated from `ModelSpec`'s fields.

Every scalar or list-of-strings field of `ModelSpec`, `Resources` and `Policy` is an option named
after the field (`time_limit_min` -> `--time-limit-min`), typed like it, its help the field's
docstring: a new spec field is a new option with no edit here. The fields that are not one value
(`engine_args`, `visibility`, `kind`/`base_model`) have hand-written options in `slurmless.cli_admin`.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import typer
from pydantic import BaseModel

from warmpool.specs import ModelSpec

SKIPPED = frozenset({"name", "kind", "base_model", "engine_args", "visibility", "created_s"})
"""Fields that are not options of their own: the argument, `--lora-of`, `--engine-arg`, `--tenant`/`--private`."""
FLAGS = {"aliases": "--alias", "partitions": "--partition", "clusters": "--cluster", "owner_tenant": "--owner"}
"""Option names that are not the field's: repeatable options are singular, and the shorter `--owner`."""
PREFIXED = frozenset({"external"})
"""Sections whose options carry the section's name (`external.url` -> `--external-url`): their field names
(`url`, `model`) would be ambiguous, or clash with the commands' own options, on their own."""
REPEATABLE = "(repeatable)"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class SpecOption:
    """One generated option and where its value goes in the spec's JSON."""

    param: str
    flag: str
    path: tuple[str, ...]
    type_: Any
    help: str

    def parameter(self) -> inspect.Parameter:
        option = typer.Option(self.flag, help=self.help, show_default=False)
        # Built at runtime from the field's type: a type expression no checker can follow.
        annotation: Any = Annotated[self.type_ | None, option]
        return inspect.Parameter(self.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _value_type(annotation: Any) -> Any:
    """`int` of `int | None`; `list[str]` stays as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        (inner,) = [a for a in get_args(annotation) if a is not type(None)]
        return inner
    return annotation


def _options(model: type[BaseModel], prefix: tuple[str, ...]) -> list[SpecOption]:
    out: list[SpecOption] = []
    for name, field in model.model_fields.items():
        if not prefix and name in SKIPPED:
            continue
        value_type = _value_type(field.annotation)
        if isinstance(value_type, type) and issubclass(value_type, BaseModel):
            out += _options(value_type, (*prefix, name))
            continue
        param = f"{prefix[-1]}_{name}" if prefix and prefix[-1] in PREFIXED else name
        if get_origin(value_type) is list and get_args(value_type) != (str,):
            raise TypeError(f"ModelSpec field {name}: only lists of strings can be options")
        if get_origin(value_type) is not list and value_type not in (int, float, str):
            raise TypeError(f"ModelSpec field {name}: {value_type} cannot be an option; add it to SKIPPED")
        text = " ".join((field.description or "").split())
        if get_origin(value_type) is list:
            text = f"{text} {REPEATABLE}".strip()
        flag = FLAGS.get(param, "--" + param.replace("_", "-"))
        out.append(SpecOption(param, flag, (*prefix, name), value_type, text))
    return out


SPEC_OPTIONS: tuple[SpecOption, ...] = tuple(_options(ModelSpec, ()))


def with_spec_options(command: F) -> F:
    """Give `command` (which takes `**spec`) one keyword option per spec field, after its own parameters."""
    own = inspect.signature(command, eval_str=True)
    fixed = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    clash = {p.name for p in fixed} & {o.param for o in SPEC_OPTIONS}
    if clash:
        raise TypeError(f"{command.__name__}: parameters {sorted(clash)} shadow spec options")
    command.__signature__ = own.replace(parameters=[*fixed, *(o.parameter() for o in SPEC_OPTIONS)])  # type: ignore[attr-defined]
    return command


def spec_fields(given: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON of the spec options that were given, nested like the spec (`resources`, `policy`)."""
    body: dict[str, Any] = {}
    for option in SPEC_OPTIONS:
        value = given.get(option.param)
        if value is None or (isinstance(value, list | tuple) and not value):
            continue
        target = body
        for section in option.path[:-1]:
            target = target.setdefault(section, {})
        target[option.path[-1]] = list(value) if isinstance(value, list | tuple) else value
    return body


__all__ = ["SPEC_OPTIONS", "SpecOption", "spec_fields", "with_spec_options"]
