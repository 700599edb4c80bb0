"""A 3D image on a regular grid in patient coordinates: what reconstruction produces and models read.

No DICOM here (so ``dicomnode infer`` on a NIfTI file does not load a DICOM reader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dicomnode.dicom.geometry import Excluded


@dataclass
class Volume:
    """A 3D image on a regular grid in patient coordinates (LPS, mm).

    ``array`` is indexed ``[z, y, x]`` (slice, row, column).  Column ``i`` of
    ``direction`` is the patient-space direction of axis ``i`` (x, y, z),
    as in ITK; ``spacing`` and ``origin`` are ``(x, y, z)``.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    sop_uids: list[str] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix from voxel index (x, y, z) to LPS millimetres."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 matrix from voxel index (x, y, z) to RAS millimetres (NIfTI's convention)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine

    def to_sitk(self) -> Any:
        """A SimpleITK image with the same voxels and geometry."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetDirection(tuple(float(v) for v in self.direction.flatten()))
        return img

    def write_nifti(self, path: Path) -> None:
        """Write NIfTI (``.nii`` or ``.nii.gz``) with the RAS affine as both qform and sform (scanner coordinates).

        Through nibabel, not SimpleITK: the same header, and ``dicomnode infer`` does not pay SimpleITK's
        1.8 s import to write one label map.
        """
        import nibabel as nib

        affine = self.affine_ras
        img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(self.array, (2, 1, 0))), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(path))
