"""The documentation agrees with the code: settings, environment variables, links and admin routes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from queue_gateway.admin_routes import openapi_document
from slurmless.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ENV = re.compile(r"\bSLURMLESS_[A-Z0-9_]+")


def env_names(model: type[BaseModel] = Settings, prefix: str = "SLURMLESS_", *, groups: bool = True) -> set[str]:
    """Every environment variable the settings read; with `groups`, also those of whole groups (JSON)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= env_names(annotation, f"{prefix}{name.upper()}__", groups=groups)
            if not groups:
                continue
        names.add(f"{prefix}{name.upper()}")
    return names


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+\s+(.*)$", path.read_text(), flags=re.MULTILINE)}


def test_settings_reference_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_setting_is_in_the_operations_guide() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    missing = sorted(name for name in env_names(groups=False) if f"`{name}`" not in text)
    assert missing == []


def test_documented_environment_variables_exist() -> None:
    # Variables of the job script and the test fixtures, not settings.
    not_settings = {
        "SLURMLESS_URL",
        "SLURMLESS_CONFIG",
        "SLURMLESS_WITH_VLLM",
        "SLURMLESS_KEY",
        "SLURMLESS_ADVERTISE_HOST",
        "SLURMLESS_SCREENSHOTS_DIR",
    }
    known = env_names() | not_settings
    files = [*DOCS, ROOT / "README.md", *sorted((ROOT / "deploy").rglob("*")), ROOT / "compose.yaml"]
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        if path.is_file()
        for name in ENV.findall(path.read_text())
        if name not in known and not name.endswith("__")
    }
    assert unknown == set()


def test_links_between_documents_resolve() -> None:
    broken = []
    for path in [*DOCS, ROOT / "README.md"]:
        for target in LINK.findall(path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.name}: {target}")
                continue
            if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert broken == []


def test_api_guide_lists_every_admin_route() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"/admin(/v1/[a-z/{}_]+)", text))
    assert set(openapi_document()["paths"]) - {"/openapi.json"} <= documented
