"""The chest-CT phantom: anatomy in plausible HU, nodules as drawn, and a DICOM round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ai.phantom import LUNG, NODULE, generate
from dicomnode.volume.reconstruct import reconstruct
from tests.volume_helpers import assert_matches_dcm2niix


@pytest.mark.parametrize("seed", [0, 2, 5])
def test_anatomy_and_labels(seed: int) -> None:
    p = generate(seed, matrix=96, slice_mm=(3.0, 5.0))
    hu, lab = p.hu.astype(float), p.labels
    assert 250 <= p.hu.shape[0] * p.spacing[2] <= 330  # a chest's length
    assert 310 <= 96 * p.spacing[0] <= 500  # field of view
    assert (lab == LUNG).sum() > 0.02 * lab.size
    assert -900 < hu[lab == LUNG].mean() < -780
    assert hu.max() > 400  # bone (spine cortex)
    assert hu.min() < -950  # air around the body
    for n in p.nodules:
        assert 3 <= n.diameter_mm <= 25
    if p.nodules:
        assert hu[lab == NODULE].mean() > -300


def test_same_seed_same_phantom_and_variety() -> None:
    a, b = generate(7, matrix=64, slices=20), generate(7, matrix=64, slices=20)
    np.testing.assert_array_equal(a.hu, b.hu)
    spacings = {round(generate(s, matrix=64, slices=8).spacing[0], 3) for s in range(5)}
    assert len(spacings) == 5


def test_nodule_counts_vary_from_zero_to_six() -> None:
    counts = {len(generate(s, matrix=64, slice_mm=(4.0, 5.0)).nodules) for s in range(12)}
    assert min(counts) >= 0 and max(counts) <= 6 and len(counts) >= 3


def test_phantom_command_writes_dicom_that_reconstructs_exactly(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "dicomnode", "phantom", str(tmp_path), "--seed", "2", "--matrix", "64", "--slices", "24", "--format", "both"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    p = generate(2, matrix=64, slices=24)
    vol = reconstruct(tmp_path / "phantom_0002_dicom")
    np.testing.assert_array_equal(vol.array, p.hu)
    np.testing.assert_allclose(vol.spacing, p.spacing, atol=1e-6)
    img = nib.load(tmp_path / "phantom_0002_image.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), p.hu)
    assert nib.load(tmp_path / "phantom_0002_labels.nii.gz").shape == (64, 64, 24)
    assert_matches_dcm2niix(vol, tmp_path / "phantom_0002_dicom", tmp_path / "nii")
