"""dicomnode infer on a DICOM series and on a NIfTI file, with the shipped default bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ph")
    r = subprocess.run([sys.executable, "-m", "dicomnode", "phantom", str(d), "--seed", "31", "--matrix", "96", "--format", "both"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return d


@pytest.mark.parametrize("source", ["phantom_0031_dicom", "phantom_0031_image.nii.gz"])
def test_infer_writes_labels_measurements_and_overlay(phantom: Path, tmp_path: Path, source: str) -> None:
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "dicomnode", "infer", str(phantom / source), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "right lung:" in r.stdout and "left lung:" in r.stdout and "mL" in r.stdout
    summary = json.loads((out / "measurements.json").read_text())
    assert summary["model"]["intended_use"] == "demonstration; not for diagnosis"
    for name in ("right lung", "left lung"):
        lung = next(m for m in summary["measurements"] if m["name"] == name)
        assert lung["volume_ml"] > 500 and lung["mean"] < -700
    for n, f in enumerate(summary["findings"], start=1):  # numbered by volume, located, measured
        assert f["number"] == n and f["side"] in ("right", "left") and f["long_axis_mm"] >= f["short_axis_mm"] > 0
        assert f["name"] in r.stdout
    labels = nib.load(out / "labels.nii.gz")
    truth = nib.load(phantom / "phantom_0031_labels.nii.gz")
    assert labels.shape == truth.shape
    np.testing.assert_allclose(labels.affine, truth.affine, atol=1e-3)
    for value in (1, 2):  # right and left lung, on the phantom's own (feet-first) grid
        a, b = np.asarray(labels.dataobj) == value, np.asarray(truth.dataobj) == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_model_is_a_clear_error(phantom: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "dicomnode", "infer", str(phantom / "phantom_0031_dicom"), "--out", str(tmp_path), "--model", "brain-mr"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no model 'brain-mr'" in r.stderr and "chest-ct-lungs-nodules" in r.stderr
