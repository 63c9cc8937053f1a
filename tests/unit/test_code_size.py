"""Small modules and classes: no product module over 700 lines, no class over 450.

A module or class past the limit is doing several jobs; split it by what it holds (the admin API's
handlers are grouped by resource, the launcher's decisions live apart from the one place that acts).
"""

from __future__ import annotations

import ast
from pathlib import Path

from testing.pyast import parse_file

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = ("queue_gateway", "launcher", "warmpool", "policies", "slurm", "tracesim", "slurmless", "enginesim")
MAX_MODULE_LINES = 700
MAX_CLASS_LINES = 450


def product_modules() -> list[Path]:
    return sorted(p for pkg in PRODUCT_PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def class_sizes(path: Path) -> dict[str, int]:
    tree = parse_file(path)
    return {
        node.name: (node.end_lineno or node.lineno) - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }


def test_the_walk_sees_the_product() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in product_modules()}
    assert {"queue_gateway/app.py", "launcher/controller.py", "slurm/localcluster.py"} <= names


def test_no_module_over_700_lines() -> None:
    too_long = {
        p.relative_to(ROOT).as_posix(): n
        for p in product_modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}


def test_no_class_over_450_lines() -> None:
    too_long: dict[str, int] = {}
    for path in product_modules():
        for name, size in class_sizes(path).items():
            if size > MAX_CLASS_LINES:
                too_long[f"{path.relative_to(ROOT).as_posix()}::{name}"] = size
    assert too_long == {}
