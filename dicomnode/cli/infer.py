"""``dicomnode infer``: run a model bundle on a DICOM series folder or a NIfTI file.

Writes the label map as NIfTI (same grid as the input), the measurements as
JSON and a PNG overlay (axial, coronal and sagittal views through the
largest finding, with coloured contours and a legend; see :mod:`dicomnode.outputs.preview`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ai.engine import Engine
from ai.findings import Finding
from dicomnode.errors import DicomNodeError
from dicomnode.jobs.models import find_bundle
from dicomnode.outputs.preview import overlay_png
from dicomnode.volume.grid import Volume

logger = logging.getLogger(__name__)

def load_input(path: Path) -> Volume:
    """A volume from a DICOM series folder (or file) or a NIfTI file."""
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        if not isinstance(img, nib.spatialimages.SpatialImage):
            raise DicomNodeError(f"{path.name} is not a NIfTI image")
        aff = img.affine
        spacing = np.linalg.norm(aff[:3, :3], axis=0)
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff  # RAS -> LPS
        return Volume(
            array=np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.float32),
            spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            origin=(float(lps[0, 3]), float(lps[1, 3]), float(lps[2, 3])),
            direction=lps[:3, :3] / spacing,
        )
    from dicomnode.volume.reconstruct import reconstruct

    return reconstruct(path)


def _finding_json(f: Finding) -> dict[str, Any]:
    """One finding as ``measurements.json`` lists it (slice numbers are 1-based, in volume order)."""
    les, ax = f.lesion, f.lesion.axes
    return {
        "number": f.number, "name": f.name, "label": f.label.name, "organ": f.where or None,
        "side": f.side.value if f.side is not None else None, "volume_ml": round(les.volume_ml, 4),
        "volume_method": les.method, "long_axis_mm": round(ax.long_mm, 1) if ax else None,
        "short_axis_mm": round(ax.short_mm, 1) if ax else None, "mean_diameter_mm": round(ax.mean_mm, 1) if ax else None,
        "axis_slice": ax.slice_index + 1 if ax else None, "centroid_voxel_zyx": [round(c, 2) for c in les.centroid_voxel],
        "mean": les.mean, "std": les.std, "possibly_truncated_at": [e.value for e in les.edges],
        "probability": None if les.probability is None else round(les.probability, 4),
    }


def infer(
    input_path: Path, out_dir: Path, model: str | None = None, device: str = "auto",
    progress: Callable[[int, int], None] | None = None, models_dir: Path | None = None,
) -> dict[str, Any]:
    """Run a model on ``input_path`` and write ``labels.nii.gz``, ``measurements.json`` and ``overlay.png``.

    ``model`` is a folder, a name installed in ``models_dir``, or a shipped name.
    """
    bundle = find_bundle(model, models_dir)
    if bundle.task != "segmentation":
        raise DicomNodeError(f"bundle {bundle.name} is a {bundle.task} model; infer writes segmentations")
    vol = load_input(input_path)
    res = Engine(bundle, device=device).run(vol.array, vol.spacing, vol.direction, progress=progress)
    assert res.labels is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    Volume(res.labels, vol.spacing, vol.origin, vol.direction).write_nifti(out_dir / "labels.nii.gz")
    summary: dict[str, Any] = {
        "model": {"name": bundle.name, "version": bundle.version, "intended_use": bundle.intended_use},
        "input": str(input_path),
        "device": res.device,
        "timings_s": res.timings,
        "measurements": [
            {k: v for k, v in asdict(replace(m, lesions=[])).items() if k != "lesions"} for m in res.measurements
        ],
        "findings": [_finding_json(f) for f in res.findings],
    }
    (out_dir / "measurements.json").write_text(json.dumps(summary, indent=2))
    overlay_png(vol.array, res.labels, bundle, vol.spacing, out_dir / "overlay.png")
    return summary
