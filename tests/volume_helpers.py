"""Oracles for volume tests: pydicom's own decoding, and dcm2niix as an independent tool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from pydicom import dcmread

from dicomnode.volume.reconstruct import Volume
from tests.helpers import require_tool


def pydicom_hu(path: Path) -> np.ndarray:
    """One slice in physical units, decoded by pydicom (independent of our decoder)."""
    ds = dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def dcm2niix(series: Path, out_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Convert with dcm2niix; return (data indexed [i, j, k], RAS affine)."""
    import nibabel as nib

    exe = require_tool("dcm2niix")
    out_dir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([exe, "-z", "n", "-b", "n", "-f", "vol", "-o", str(out_dir), str(series)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    [nii] = sorted(out_dir.glob("vol*.nii"))
    img = nib.load(nii)
    return np.asarray(img.get_fdata(dtype=np.float64)), img.affine


def assert_matches_dcm2niix(vol: Volume, series: Path, out_dir: Path, atol_mm: float = 1e-3) -> None:
    """Same voxels and, after matching axes, affines within ``atol_mm``."""
    theirs, a_theirs = dcm2niix(series, out_dir)
    ours = np.transpose(vol.array, (2, 1, 0)).astype(np.float64)  # [x, y, z] like NIfTI
    assert sorted(ours.shape) == sorted(theirs.shape)
    # Map our voxel grid onto theirs: a signed permutation with an integer shift.
    m = np.linalg.inv(a_theirs) @ vol.affine_ras
    perm = np.rint(m[:3, :3])
    assert np.allclose(m[:3, :3], perm, atol=1e-3), f"grids differ:\n{m}"
    shift = np.rint(m[:3, 3])
    assert np.allclose(m[:3, 3], shift, atol=1e-3)
    idx = np.indices(ours.shape).reshape(3, -1)
    their_idx = (perm @ idx + shift[:, None]).astype(int)
    mapped = theirs[their_idx[0], their_idx[1], their_idx[2]].reshape(ours.shape)
    np.testing.assert_allclose(ours, mapped, atol=1e-3)
    # Affines agree once the axes are matched (within atol_mm at the far corner too).
    corner = np.array([*[s - 1 for s in ours.shape], 1.0])
    far_ours = vol.affine_ras @ corner
    far_theirs = a_theirs @ np.append(perm @ corner[:3] + shift, 1.0)
    assert np.allclose(far_ours, far_theirs, atol=atol_mm * max(ours.shape))
    assert np.allclose(vol.affine_ras[:3, 3], (a_theirs @ np.append(shift, 1.0))[:3], atol=atol_mm)
