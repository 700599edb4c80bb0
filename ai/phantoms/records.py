"""What a generated phantom is: labels, nodule records and the :class:`Phantom` volume.

Labels (uint8): 0 background, 1 right lung, 2 left lung, 3 nodule.  Right
and left are the patient's.  A clinical lung volume is the lung label plus
the nodules inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

RIGHT_LUNG, LEFT_LUNG, NODULE = 1, 2, 3
LABEL_NAMES = {RIGHT_LUNG: "right lung", LEFT_LUNG: "left lung", NODULE: "nodule"}

#: Bits of :attr:`Phantom.structures`: what each hard-negative voxel is.
VESSEL, AIRWAY, FISSURE, CONFOUNDER = 1, 2, 4, 8
STRUCTURE_NAMES = {VESSEL: "vessel", AIRWAY: "airway wall", FISSURE: "fissure", CONFOUNDER: "confounder"}


class NoduleKind(StrEnum):
    """Attenuation class of a nodule."""

    SOLID = "solid"
    PART_SOLID = "part-solid"
    GROUND_GLASS = "ground-glass"
    CALCIFIED = "calcified"


class NoduleSite(StrEnum):
    """Where a nodule sits relative to its surroundings."""

    ISOLATED = "isolated"
    JUXTAVASCULAR = "juxtavascular"
    JUXTAPLEURAL = "juxtapleural"


@dataclass(frozen=True)
class Nodule:
    """One nodule drawn into a phantom.

    Attributes
    ----------
    centre_mm : (float, float, float)
        Centre (x, y, z) in the volume's voxel frame: millimetres from the
        centre of voxel 0 along the array's index axes, so the voxel index is
        ``centre_mm / spacing`` (use :meth:`Phantom.nodule_index`).
    diameter_mm : float
        Equivalent-sphere diameter of the true (labelled) volume.
    kind : NoduleKind
        Solid, part-solid, ground-glass or calcified.
    site : NoduleSite
        Isolated, juxtavascular (touching a vessel) or juxtapleural (touching
        the chest wall; the part beyond the pleura is clipped).
    side : str
        ``"right"`` or ``"left"``: the patient's lung that holds it.
    volume_mm3 : float
        True volume inside the lung, analytic or from a supersampled grid.
    shape : str
        ``"sphere"``, ``"ellipsoid"`` or ``"lobulated"``.
    """

    centre_mm: tuple[float, float, float]
    diameter_mm: float
    kind: NoduleKind = NoduleKind.SOLID
    site: NoduleSite = NoduleSite.ISOLATED
    side: str = "right"
    volume_mm3: float = 0.0
    shape: str = "sphere"


@dataclass
class Tree:
    """The centreline segments of one pulmonary vessel or airway tree (anatomical millimetres).

    Attributes
    ----------
    name : str
        For example ``"right artery"`` or ``"left vein (inferior)"``.
    side : str
        ``"right"`` or ``"left"``.
    start, end : ndarray
        ``(N, 3)`` segment end points, LPS millimetres.
    radius : ndarray
        ``(N,)`` radius at the segment's start, mm (it tapers slightly to its end).
    parent : ndarray
        ``(N,)`` index of the parent segment, -1 for the root.
    """

    name: str
    side: str
    start: np.ndarray
    end: np.ndarray
    radius: np.ndarray
    parent: np.ndarray

    @property
    def root(self) -> np.ndarray:
        """Where the tree enters the lung (the hilum end of its first segment)."""
        return np.asarray(self.start[0])


@dataclass
class Phantom:
    """A generated chest CT with its ground truth.

    Attributes
    ----------
    hu : ndarray
        int16 ``[z, y, x]`` Hounsfield units (padding values outside the
        reconstruction circle where drawn).
    labels : ndarray
        uint8 ``[z, y, x]``: 0 background, 1 right lung, 2 left lung, 3 nodule.
    spacing : (float, float, float)
        Voxel size (x, y, z), mm.
    nodules : list of Nodule
        The nodules drawn, one labelled component each (touching ones may merge).
    seed : int
        The seed everything derives from.
    direction : ndarray
        3 x 3; columns are the LPS directions of the x, y and z index axes
        (they depend on the patient position: HFS, HFP, FFS, FFP).
    origin : (float, float, float)
        LPS millimetres of the centre of voxel 0.
    hard_negatives : ndarray or None
        bool ``[z, y, x]``: vessels, airway walls, fissures and confounders
        (places a nodule detector must leave alone); None unless requested.
    structures : ndarray or None
        uint8 ``[z, y, x]`` bit flags behind ``hard_negatives``
        (:data:`VESSEL`, :data:`AIRWAY`, :data:`FISSURE`, :data:`CONFOUNDER`).
    meta : dict
        Acquisition and anatomy draws: contrast, kernel, noise, position,
        body size, confounders present, ...
    trees : list of Tree
        The pulmonary vessel trees (centrelines and radii, LPS mm).
    """

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    nodules: list[Nodule] = field(default_factory=list)
    seed: int = 0
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hard_negatives: np.ndarray | None = None
    structures: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    trees: list[Tree] = field(default_factory=list)

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        """LPS millimetres of the centre of voxel 0 (DICOM ImagePositionPatient of the first slice)."""
        return self.origin

    @property
    def position(self) -> str:
        """Patient position: ``"HFS"``, ``"HFP"``, ``"FFS"`` or ``"FFP"``."""
        return str(self.meta.get("position", "HFS"))

    @property
    def affine_lps(self) -> np.ndarray:
        """4 x 4 map from voxel indices (x, y, z) to LPS millimetres."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    @property
    def affine_ras(self) -> np.ndarray:
        """4 x 4 map from voxel indices (x, y, z) to RAS millimetres, for NIfTI."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """LPS millimetres of voxel indices ``(..., 3)`` given as (x, y, z)."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ (self.direction * np.asarray(self.spacing)[None, :]).T + np.asarray(self.origin)

    def hilum_distance_mm(self, ijk: np.ndarray) -> np.ndarray:
        """Distance in mm of voxel indices ``(n, 3)`` given as (x, y, z) from the nearer hilum (``meta["hila_lps"]``)."""
        hila = np.asarray(list(self.meta["hila_lps"].values()), dtype=float)
        lps = self.index_to_lps(np.asarray(ijk).reshape(-1, 3))
        return np.asarray(np.min(np.linalg.norm(lps[:, None, :] - hila[None], axis=2), axis=1))

    def nodule_index(self, nodule: Nodule) -> tuple[int, int, int]:
        """The voxel ``(z, y, x)`` at a nodule's centre."""
        idx = [round(c / s) for c, s in zip(nodule.centre_mm, self.spacing)]
        nz, ny, nx = self.labels.shape
        return (min(max(idx[2], 0), nz - 1), min(max(idx[1], 0), ny - 1), min(max(idx[0], 0), nx - 1))

    def nodule_lps(self, nodule: Nodule) -> np.ndarray:
        """LPS millimetres of a nodule's centre."""
        return np.asarray(self.origin) + self.direction @ np.asarray(nodule.centre_mm)

    def write_nifti(self, image_path: Path, label_path: Path, hard_negative_path: Path | None = None) -> None:
        """Write the image (int16 HU), the labels and optionally the hard-negative mask as NIfTI.

        Parameters
        ----------
        image_path, label_path : Path
            Where the image and the label map go (``.nii`` or ``.nii.gz``).
        hard_negative_path : Path, optional
            Where the hard-negative mask goes (uint8 0/1); needs a phantom
            generated with ``hard_negatives=True``.
        """
        import nibabel as nib

        def save(arr: np.ndarray, dtype: type, path: Path) -> None:
            img = nib.Nifti1Image(np.transpose(arr, (2, 1, 0)).astype(dtype), self.affine_ras)
            img.set_qform(self.affine_ras, code=1)
            img.set_sform(self.affine_ras, code=1)
            nib.save(img, str(path))

        save(self.hu, np.int16, image_path)
        save(self.labels, np.uint8, label_path)
        if hard_negative_path is not None:
            if self.hard_negatives is None:
                raise ValueError("this phantom has no hard-negative mask: generate it with hard_negatives=True")
            save(self.hard_negatives, np.uint8, hard_negative_path)
