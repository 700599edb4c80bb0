"""The design card's rules: packages, dependency direction, a receiver without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_packages(package: str) -> set[str]:
    found: set[str] = set()
    for py in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(("package", "forbidden"), [("ai", {"dicomnode", "storage"}), ("storage", {"dicomnode", "ai"})])
def test_dependencies_point_one_way(package: str, forbidden: set[str]) -> None:
    assert not imported_packages(package) & forbidden


def test_receiver_does_not_import_torch() -> None:
    code = "import sys, dicomnode.node, dicomnode.cli.main; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_python_dash_m_works() -> None:
    r = subprocess.run([sys.executable, "-m", "dicomnode", "--version"], capture_output=True, text=True)
    assert r.returncode == 0


def test_modules_stay_small() -> None:
    for package in ("dicomnode", "ai", "storage"):
        for py in (ROOT / package).rglob("*.py"):
            n = len(py.read_text().splitlines())
            assert n <= 550, f"{py.relative_to(ROOT)} has {n} lines: split it (one concept per module)"


def test_no_pyflakes_errors() -> None:
    """Undefined names, unused imports and syntax errors fail the build (ruff's F and E9 rules)."""
    import shutil

    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(exe).exists():
        pytest.skip("ruff is not installed (scripts/test.sh installs it)")
    r = subprocess.run([exe, "check", "--select", "F,E9", "dicomnode", "ai", "storage", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
