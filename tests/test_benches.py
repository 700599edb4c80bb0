"""Smoke runs of every benchmark in ``bench/`` with ``--quick``, so that they cannot rot.

Each bench runs in a subprocess on tiny data; the test checks that it exits 0
and prints its table (the header line and the reference or ratio row).
Timings are never asserted: they say nothing on a shared 2-core machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import dcmtk_env, require_tool

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# bench: (tools it needs, lines its table must have: the header, then the reference/ratio rows).
# Optional references (Orthanc, dcm2niix) have their row either way: timed, or "not installed".
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ingest": (
        ("storescu", "storescp", "echoscu"),
        ("| receiver | TCP_NODELAY | seconds | images/s | dicomnode (FULL) speed / receiver speed |",
         "| dcmtk storescp | on |", "| Orthanc | on |", "| dicomnode (fsync, SQLite FULL) | on |"),
    ),
    "volume": (
        (),
        ("| | uncompressed |", "| dicomnode |", "| SimpleITK |", "| dcm2niix |", "| dicomnode / SimpleITK |"),
    ),
    "inference": (
        (),
        ("| | seconds |", "| MONAI sliding_window_inference |", "| ratio ours / MONAI |"),
    ),
    "models": (
        (),
        ("| format (reference tool) |", "| MONAI bundle", "| nnU-Net v2"),
    ),
    "engine_device": (
        (),
        ("| device | preprocess s |", "| cpu |", "| cuda"),
    ),
    "e2e": (
        ("storescu", "storescp"),
        ("| stage | seconds |", "| send (storescu,", "| **last instance acknowledged -> SEG and SR at the PACS** |"),
    ),
    "model_quality": (
        (),
        ("| metric | value | target |", "| lung Dice, right |", "| sensitivity, solid >= 6 mm |", "| volume estimator, same label maps |",
         "| false-positive nodules per scan (mean) |", "| classifier AUC, nodule present |",
         "| false positives per scan | < 0.5 mL |", "| hilar (centre within 20 mm of the mediastinum) |"),
    ),
    "fetch": (
        ("storescu", "storescp", "echoscu", "Orthanc"),
        ("| transfer | seconds | studies per minute |", "| Orthanc -> dcmtk storescp (C-STORE, reference) |",
         "| dicomnode fetch, C-MOVE", "| dicomnode fetch, WADO-RS"),
    ),
    "volume_sweep": (
        (),
        ("| setting | found nodules >= 6 mm |", "| bundle (reference) |", "| voxels |"),
    ),
    "calcified_volume": (
        (),
        ("| calcification | renders |", "| throughout |", "| central |", "| eccentric |"),
    ),
    "train_epoch": (
        (),
        ("| precision | seconds per epoch | ms per step | loss | peak GPU memory |", "| fp32 |"),
    ),
}


def run_bench(name: str, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def assert_table(r: subprocess.CompletedProcess[str], lines: tuple[str, ...]) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    printed = r.stdout.splitlines()
    for line in lines:
        assert any(p.startswith(line) for p in printed), f"no line starting {line!r} in:\n{r.stdout[-3000:]}"


@pytest.mark.parametrize("name", list(TABLES))
def test_quick_run_prints_its_table(name: str, tmp_path: Path) -> None:
    tools, lines = TABLES[name]
    for tool in tools:
        require_tool(tool)
    out = tmp_path / "out"
    env = dict(dcmtk_env(), DICOMNODE_BENCH_OUT=str(out), TMPDIR=str(tmp_path))
    r = run_bench(name, env, "--quick")
    assert_table(r, lines)
    if name == "train_epoch":  # no GPU here: says so instead of a ratio; with one, the ratio
        assert "AMP is " in r.stdout or "no CUDA device" in r.stdout, r.stdout
    if name in ("ingest", "volume", "e2e", "train_epoch"):  # their data went where they were told
        assert any((out / "data").iterdir())


def test_quick_run_without_an_output_folder_leaves_bench_out_alone(tmp_path: Path) -> None:
    """With ``--quick`` alone, data goes to a temporary folder that is removed at exit."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(dcmtk_env(), TMPDIR=str(tmp))
    env.pop("DICOMNODE_BENCH_OUT", None)
    before = sorted((BENCH / "out" / "data").glob("*")) if (BENCH / "out" / "data").exists() else []
    r = run_bench("volume", env, "--quick")
    assert_table(r, TABLES["volume"][1])
    after = sorted((BENCH / "out" / "data").glob("*")) if (BENCH / "out" / "data").exists() else []
    assert after == before
    assert not [p for p in tmp.iterdir() if p.name.startswith("dicomnode-bench-")]


@pytest.mark.parametrize("name", ["ingest", "volume", "e2e"])
def test_missing_reference_tools_are_named_in_the_table(name: str, tmp_path: Path) -> None:
    """Without dcmtk and dcm2niix on the PATH the bench says so and still exits 0."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(dcmtk_env(), DICOMNODE_BENCH_OUT=str(tmp_path / "out"), TMPDIR=str(tmp_path),
               PATH=str(empty))
    r = run_bench(name, env, "--quick")
    assert_table(r, (TABLES[name][1][0],))
    assert "not installed" in r.stdout, r.stdout
