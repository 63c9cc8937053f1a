"""deploy/systemd units pass `systemd-analyze verify` and its offline security review; the image runs unprivileged."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = ("slurmless-gateway.service", "slurmless-launcher.service")
INSTALLED_BINARY = "/opt/slurmless/venv/bin/slurmless"
EXPOSURE_THRESHOLD = 20
"""`systemd-analyze security` exposure, times ten: at most 2.0 ("OK"); an unhardened service scores 9.6."""


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    probe = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run here: {probe.stderr.strip()}")
    return path


def staged(tmp_path: Path, name: str, *, edit: tuple[str, str] | None = None) -> Path:
    """A copy of the unit whose ExecStart names an executable that exists here (verify checks it)."""
    here = str(Path(sys.executable).parent / "slurmless")
    assert Path(here).exists(), here
    text = (SYSTEMD / name).read_text()
    assert INSTALLED_BINARY in text
    text = text.replace(INSTALLED_BINARY, here)
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    path = tmp_path / name
    path.write_text(text)
    return path


def verify(tmp_path: Path, *units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )


def security(unit: Path) -> subprocess.CompletedProcess[str]:
    """The offline security review; fails when the exposure is above the threshold."""
    args = [systemd_analyze(), "security", "--offline=yes", f"--threshold={EXPOSURE_THRESHOLD}", str(unit)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_units_pass_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    result = verify(tmp_path, *(staged(tmp_path, name) for name in UNITS))
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize(
    "edit",
    [("NoNewPrivileges=yes", "NoNewPrivilegs=yes"), ("ProtectSystem=strict", "ProtectSystem=stirct")],
    ids=["misspelt-key", "bad-value"],
)
def test_verify_reports_a_mistake(tmp_path: Path, edit: tuple[str, str]) -> None:
    """systemd only warns about these (and ignores the line): the check above treats any output as failure."""
    result = verify(tmp_path, staged(tmp_path, UNITS[0], edit=edit))
    assert result.stdout + result.stderr != ""


@pytest.mark.parametrize("name", UNITS)
def test_units_are_hardened(tmp_path: Path, name: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text())
    service = parser["Service"]
    assert service["User"] == "slurmless" and service["Group"] == "slurmless"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"].startswith("/etc/slurmless/")
    assert service["CapabilityBoundingSet"] == ""
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=yes",
            f"--threshold={EXPOSURE_THRESHOLD}",
            str(staged(tmp_path, name)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_the_security_threshold_can_fail(tmp_path: Path) -> None:
    bare = tmp_path / "bare.service"
    bare.write_text(f"[Service]\nExecStart={Path(sys.executable).parent / 'slurmless'} gateway\n")
    assert security(bare).returncode != 0


def test_sysusers_creates_the_service_user() -> None:
    lines = [ln for ln in (SYSTEMD / "slurmless.sysusers.conf").read_text().splitlines() if ln and ln[0] != "#"]
    assert lines and lines[0].split()[:2] == ["u", "slurmless"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def test_image_runs_as_a_non_root_user() -> None:
    steps = dockerfile_instructions()
    users = [i for i, (word, _) in enumerate(steps) if word == "USER"]
    assert users, "the Dockerfile never leaves root"
    last_user = steps[users[-1]][1]
    assert last_user.split(":")[0] not in {"root", "0"}
    # Nothing after the switch runs as root again, and the user is created in the image.
    assert all(word != "USER" or i == users[-1] for i, (word, _) in enumerate(steps[users[-1] :], users[-1]))
    assert any(word == "RUN" and "useradd" in args and last_user.split(":")[0] in args for word, args in steps)
    assert not any(word == "RUN" for word, _ in steps[users[-1] :])
