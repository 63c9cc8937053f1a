"""Imports point down the layers: a component never imports the composition root or a peer.

    slurmless (settings, CLI, `up`: imports everything)
    queue_gateway | launcher | tracesim       (peers: never import each other)
    warmpool                                  (the Redis schema, the shared settings base)
    policies | slurm | enginesim

Each component reads its own settings view (`GatewayConfig`, `LauncherConfig`, built on
`warmpool.settings.SharedConfig`); only `slurmless.settings.Settings` combines them. The walk reads every
import statement, inside functions and `TYPE_CHECKING` blocks too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from testing.pyast import parse_file

ROOT = Path(__file__).resolve().parents[2]
LAYER = {
    "policies": 0,
    "slurm": 0,
    "enginesim": 0,
    "warmpool": 1,
    "queue_gateway": 2,
    "launcher": 2,
    "tracesim": 2,
    "slurmless": 3,
}
"""A package may import its own modules and packages of a lower layer only."""
NOT_PRODUCT = ("testing", "tests", "bench")
"""Test helpers and benchmarks: no runtime package imports them."""
NEVER = {"queue_gateway": {"slurm"}}
"""Below the layer, yet out of bounds: the web-facing gateway holds no Slurm credentials and never talks to Slurm."""


def imported(path: Path) -> set[str]:
    """Top-level package names of everything `path` imports (relative imports are its own package)."""
    names: set[str] = set()
    for node in ast.walk(parse_file(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for package, layer in LAYER.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = sorted(
                name
                for name in imported(path)
                if name in NOT_PRODUCT
                or name in NEVER.get(package, ())
                or (name in LAYER and name != package and LAYER[name] >= layer)
            )
            if bad:
                found[path.relative_to(ROOT).as_posix()] = bad
    return found


def test_every_component_imports_only_lower_layers() -> None:
    assert violations() == {}


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from slurmless.settings import Settings\n    import launcher.controller\n")
    assert imported(module) == {"slurmless", "launcher"}


def test_the_composition_root_combines_the_component_views() -> None:
    from launcher.settings import LauncherConfig
    from queue_gateway.settings import GatewayConfig
    from slurmless.settings import Settings

    assert issubclass(Settings, GatewayConfig) and issubclass(Settings, LauncherConfig)
