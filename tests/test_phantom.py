"""``dicomnode phantom``: a training-family phantom written as DICOM reconstructs exactly, in any patient position."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from ai.phantoms import generate
from dicomnode.volume.reconstruct import reconstruct
from tests.volume_helpers import assert_matches_dcm2niix


@pytest.mark.parametrize(("seed", "position"), [(2, "HFP"), (4, "FFS")])
def test_phantom_command_writes_dicom_that_reconstructs_exactly(tmp_path: Path, seed: int, position: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "dicomnode", "phantom", str(tmp_path), "--seed", str(seed), "--matrix", "64", "--slices", "24",
         "--format", "both"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    p = generate(seed, matrix=64, slices=24)
    assert p.position == position
    folder = tmp_path / f"phantom_{seed:04d}_dicom"
    assert {str(dcmread(f, stop_before_pixels=True).PatientPosition) for f in folder.iterdir()} == {position}
    vol = reconstruct(folder)
    np.testing.assert_array_equal(vol.array, p.hu)
    np.testing.assert_allclose(vol.spacing, p.spacing, atol=1e-6)
    np.testing.assert_allclose(vol.direction, p.direction, atol=1e-6)
    img = nib.load(tmp_path / f"phantom_{seed:04d}_image.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), p.hu)
    assert nib.load(tmp_path / f"phantom_{seed:04d}_labels.nii.gz").shape == (64, 64, 24)
    assert_matches_dcm2niix(vol, folder, tmp_path / "nii")
