"""The case record (:class:`Case`, :class:`EvalNodule`) and its files (:func:`write_case`).

Labels: 0 background, 1 right lung, 2 left lung, 3 nodule (right and left are
the patient's).  ``direction`` columns are the LPS directions of the x, y, z
index axes of ``hu[z, y, x]``; ``origin_lps`` is the LPS position of voxel 0.
Nodule centres are in the volume's own voxel frame: millimetres from voxel 0
along the index axes, ``centre_mm / spacing`` is the (x, y, z) index.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

BACKGROUND, RIGHT_LUNG, LEFT_LUNG, NODULE = 0, 1, 2, 3
LABEL_NAMES = {BACKGROUND: "background", RIGHT_LUNG: "right lung", LEFT_LUNG: "left lung", NODULE: "nodule"}


@dataclass
class EvalNodule:
    """One nodule's ground truth.

    Attributes
    ----------
    centre_mm : tuple of float
        (x, y, z) in the volume's voxel frame, mm from voxel 0; always a voxel labelled 3.
    diameter_mm : float
        Equivalent-sphere diameter of the true (supersampled) volume.
    kind : str
        ``solid``, ``part-solid``, ``ground-glass`` or ``calcified``.
    site : str
        ``isolated``, ``juxtavascular`` or ``juxtapleural``.
    side : str
        ``right`` or ``left`` (the patient's).
    volume_mm3 : float
        True volume of the shape, from supersampling.
    extra : dict
        Shape details (nominal size, lobes, spicules, solid fraction, HU...).
    """

    centre_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str
    site: str
    side: str
    volume_mm3: float
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Case:
    """One evaluation case.

    Attributes
    ----------
    hu : ndarray
        int16 ``[z, y, x]`` Hounsfield units.
    labels : ndarray
        uint8 ``[z, y, x]``.
    spacing : tuple of float
        Voxel size (x, y, z) mm.
    direction : ndarray
        3x3, columns = LPS directions of the x, y, z index axes.
    origin_lps : tuple of float
        LPS position (mm) of voxel (0, 0, 0).
    nodules : list of EvalNodule
    meta : dict
        Everything drawn for the case.
    """

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    direction: np.ndarray
    origin_lps: tuple[float, float, float]
    nodules: list[EvalNodule]
    meta: dict[str, object]

    def affine_ras(self) -> np.ndarray:
        """4x4 RAS affine for nibabel, mapping (x, y, z) indices to RAS mm."""
        lps = np.eye(4)
        lps[:3, :3] = self.direction @ np.diag(self.spacing)
        lps[:3, 3] = self.origin_lps
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    def checksum(self) -> str:
        """sha256 of ``hu.tobytes() + labels.tobytes()``."""
        import hashlib

        return hashlib.sha256(self.hu.tobytes() + self.labels.tobytes()).hexdigest()


def write_case(case: Case, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``{name}_image.nii.gz``, ``{name}_labels.nii.gz`` and ``{name}_nodules.json``.

    The NIfTI arrays are indexed (x, y, z) with the same RAS affine (built from
    direction, origin and spacing) for image and labels.

    Parameters
    ----------
    case : Case
        The case.
    out_dir : str or Path
        Output folder (created).
    name : str
        File name stem.

    Returns
    -------
    list of Path
        The written files.
    """
    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    aff = case.affine_ras()
    paths = [out / f"{name}_image.nii.gz", out / f"{name}_labels.nii.gz", out / f"{name}_nodules.json"]
    for arr, path in ((case.hu, paths[0]), (case.labels, paths[1])):
        img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), aff)
        img.header.set_xyzt_units("mm")
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        nib.save(img, str(path))
    doc = {
        "name": name,
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "spacing": list(case.spacing),
        "direction": case.direction.tolist(),
        "origin_lps": list(case.origin_lps),
        "shape_zyx": list(case.hu.shape),
        "checksum": case.checksum(),
        "nodules": [asdict(n) for n in case.nodules],
        "meta": case.meta,
    }
    paths[2].write_text(json.dumps(doc, indent=1, default=_json_default))
    return paths


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o)!r}")
