"""The design card's rules: packages, pipeline stages, dependency direction, a receiver without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The stages of dicomnode/, in pipeline order, and what each may import besides the
# foundation modules (FOUNDATION) and the `storage` package.  Nothing imports a stage
# above it; the receive and network layers import neither jobs, outputs nor ai.
STAGES: dict[str, set[str]] = {
    "dicom": set(),
    "net": {"dicom"},
    "receive": {"dicom", "net"},
    "volume": {"dicom"},
    "outputs": {"dicom", "volume", "ai"},
    "jobs": {"dicom", "net", "volume", "outputs", "ai"},
    "notify": {"dicom", "net", "jobs"},  # result messages (webhook, HL7 ORU) after a job ends
    "testing": {"dicom", "ai"},
    "web": {"dicom"},  # dicomnode/web.py: the status page
    "node": {"dicom", "net", "receive", "jobs", "notify", "web"},  # dicomnode/node.py wires the stages together
    "cli": {"dicom", "net", "receive", "volume", "outputs", "jobs", "notify", "testing", "web", "node", "ai"},
}
# Top-level modules every stage may use; they import only each other (and storage).
FOUNDATION = {"errors", "config", "routing", "bodypart", "selection", "metrics", "audit", "redaction", "background", "__init__"}
TOP_LEVEL_STAGES = {"web", "node"}


def _imports(py: Path) -> list[tuple[int, str]]:
    """``(line, dotted module)`` of every absolute import in ``py`` (inside functions too)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(py.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def imported_packages(package: str) -> set[str]:
    return {mod.split(".")[0] for py in (ROOT / package).rglob("*.py") for _, mod in _imports(py)}


def _stage_of_module(dotted: str) -> str | None:
    """The stage (or foundation module) a ``dicomnode.*`` module belongs to; ``ai`` for the ai package."""
    parts = dotted.split(".")
    if parts[0] == "ai":
        return "ai"
    if parts[0] != "dicomnode":
        return None
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _stage_of_file(py: Path) -> str:
    rel = py.relative_to(ROOT / "dicomnode")
    if rel.parts == ("__main__.py",):
        return "cli"  # python -m dicomnode is the command line
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize(("package", "forbidden"), [("ai", {"dicomnode", "storage"}), ("storage", {"dicomnode", "ai"})])
def test_dependencies_point_one_way(package: str, forbidden: set[str]) -> None:
    assert not imported_packages(package) & forbidden


def test_the_package_shows_the_pipeline() -> None:
    """Every module of dicomnode/ is in a stage folder or is one of the named top-level modules."""
    for py in (ROOT / "dicomnode").rglob("*.py"):
        stage = _stage_of_file(py)
        assert stage in STAGES or stage in FOUNDATION, f"{py.relative_to(ROOT)} is in no pipeline stage"
        if stage in STAGES and stage not in TOP_LEVEL_STAGES:
            assert (ROOT / "dicomnode" / stage / "__init__.py").read_text().strip(), f"dicomnode/{stage}/__init__.py says nothing"


def test_no_stage_imports_a_stage_above_it() -> None:
    problems = []
    for py in sorted((ROOT / "dicomnode").rglob("*.py")):
        own = _stage_of_file(py)
        for line, mod in _imports(py):
            target = _stage_of_module(mod)
            if target is None or target == own:
                continue
            if own in FOUNDATION:
                ok = target in FOUNDATION
            else:
                ok = target in FOUNDATION or target in STAGES[own]
            if not ok:
                problems.append(f"{py.relative_to(ROOT)}:{line} ({own}) imports {mod} ({target})")
    assert not problems, "imports against the pipeline's direction:\n" + "\n".join(problems)


@pytest.mark.parametrize("stage", ["net", "receive"])
def test_the_receiver_imports_no_jobs_outputs_or_models(stage: str) -> None:
    bad = {"dicomnode.jobs", "dicomnode.outputs", "ai", "torch", "highdicom", "monai"}
    for py in (ROOT / "dicomnode" / stage).rglob("*.py"):
        for line, mod in _imports(py):
            assert not any(mod == b or mod.startswith(b + ".") for b in bad), f"{py.relative_to(ROOT)}:{line} imports {mod}"


def test_receiver_does_not_import_torch() -> None:
    code = "import sys, dicomnode.node, dicomnode.cli; print('torch' in sys.modules)"
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
