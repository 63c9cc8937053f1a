"""The repository stands alone: no tracked file points at files outside it (a fresh clone has none)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Written in two pieces so that this file does not match itself.
OUTSIDE = ("../" + "shared", "/work/" + "shared")


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60, check=False)
    if listed.returncode == 0:
        names = [n for n in listed.stdout.decode().split("\0") if n]
    else:  # an exported tree without .git: every file but the local environments
        skip = {".git", ".venv", ".venv-vllm", ".mypy_cache", ".pytest_cache", ".ruff_cache", "__pycache__"}
        names = [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        ]
    return [ROOT / n for n in names]


def references(path: Path, root: Path = ROOT) -> list[str]:
    """`file:line: text` of each line naming a place outside the repository."""
    try:
        text = path.read_text(errors="replace")
    except (IsADirectoryError, FileNotFoundError):  # a submodule, or deleted but not yet committed
        return []
    return [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), 1)
        if any(needle in line for needle in OUTSIDE)
    ]


def test_no_tracked_file_refers_outside_the_repository() -> None:
    files = tracked_files()
    assert len(files) > 50
    found = [hit for path in files for hit in references(path)]
    assert found == []


def test_the_check_finds_a_reference(tmp_path: Path) -> None:
    planted = tmp_path / "notes.md"
    planted.write_text("Fine.\nSee " + OUTSIDE[0] + "/DESIGN.md.\nAnd " + OUTSIDE[1] + "/traces.\n")
    assert references(planted, root=tmp_path) == [
        "notes.md:2: See " + OUTSIDE[0] + "/DESIGN.md.",
        "notes.md:3: And " + OUTSIDE[1] + "/traces.",
    ]
