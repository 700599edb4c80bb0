"""What the false positives are: where each lies, how large and how dense, and a picture of each.

Used by ``bench/model_quality.py``.  A false positive (a predicted nodule
component that touches no true nodule, as :func:`bench.quality.score_case`
counts it) is described by what a reader would first ask of it:

- **where**: *hilar* when its centre lies within :data:`HILAR_MM` of the
  mediastinum (the non-lung tissue between the two lungs, found row by row
  on the label map: right lung, gap, left lung), where the large pulmonary
  arteries and veins, the main bronchi and the hilar lymph nodes enter the
  lung; *peripheral* otherwise;
- **size**: its volume, in the bins of :data:`SIZE_ML` (0.5 mL is a 10 mm
  ball, 2 mL a 16 mm one);
- **density**: its median in HU, *dense* from :data:`DENSE_HU` (calcium or
  contrast), *faint* under :data:`FAINT_HU` (ground-glass-like), else soft
  tissue.

The table says, per family, how many of each there are per scan, so that
two families' errors can be told apart (the training family's against the
independent one's), and :func:`montage` draws one axial crop of each, with
its outline, for a person to look at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ai.candidates import mediastinum as ai_mediastinum

HILAR_MM = 20.0  # a false positive whose centre lies this close to the mediastinum is hilar
SIZE_ML = (0.5, 2.0)  # size bins: under 0.5 mL, 0.5-2 mL, 2 mL and more
DENSE_HU = 300.0  # median at or above this: calcium or contrast
FAINT_HU = -300.0  # median below this: ground-glass-like
CROP_MM = 60.0  # the montage's crops are this wide
MAX_CROPS = 64  # the montage draws at most this many (the largest first)
RIGHT, LEFT = 1, 2


@dataclass
class FalsePositive:
    """One false-positive component of one case."""

    case: int
    volume_ml: float
    hu_median: float
    mediastinum_mm: float  # its centre's distance from the mediastinum (inf when the scan shows no mediastinum)
    crop: np.ndarray | None = field(default=None, repr=False)  # axial HU crop through its centre
    outline: np.ndarray | None = field(default=None, repr=False)  # its mask on that crop

    @property
    def hilar(self) -> bool:
        return self.mediastinum_mm <= HILAR_MM

    @property
    def size(self) -> str:
        lo, hi = SIZE_ML
        return f"< {lo:g} mL" if self.volume_ml < lo else (f"{lo:g}-{hi:g} mL" if self.volume_ml < hi else f">= {hi:g} mL")

    @property
    def density(self) -> str:
        return "dense" if self.hu_median >= DENSE_HU else ("faint" if self.hu_median < FAINT_HU else "soft tissue")


def mediastinum(labels: np.ndarray) -> np.ndarray:
    """The voxels between the two lungs, row by row (:func:`ai.candidates.mediastinum`, which the candidate classifier's
    ``mediastinum_mm`` feature uses too)."""
    return ai_mediastinum(labels, RIGHT, LEFT)


def describe(case_index: int, hu: np.ndarray, labels: np.ndarray, components: np.ndarray, ids: Sequence[int],
             spacing_xyz: Sequence[float], crops: bool = True) -> list[FalsePositive]:
    """The false positives ``ids`` (labels of ``components``, a connected-component map of the predicted nodules) of one
    case, with an axial crop of each when ``crops``."""
    if not len(ids):
        return []
    sz = np.asarray(spacing_xyz, dtype=float)[::-1]
    med = mediastinum(labels)
    dist = ndimage.distance_transform_edt(~med, sampling=sz) if med.any() else None
    objects = ndimage.find_objects(components)
    out = []
    for k in ids:
        box = objects[k - 1]
        if box is None:
            continue
        mask = components[box] == k
        idx = np.argwhere(mask) + [s.start for s in box]
        centre = tuple(int(round(v)) for v in idx.mean(0))
        fp = FalsePositive(case_index, float(len(idx) * np.prod(sz) / 1000.0), float(np.median(hu[box][mask])),
                           float(dist[centre]) if dist is not None else float("inf"))
        if crops:
            z, y, x = centre
            ry, rx = int(CROP_MM / 2 / sz[1]), int(CROP_MM / 2 / sz[2])
            ys, xs = slice(max(0, y - ry), y + ry), slice(max(0, x - rx), x + rx)
            fp.crop = hu[z, ys, xs].astype(np.float32)
            fp.outline = components[z, ys, xs] == k
        out.append(fp)
    return out


def census(fps: Sequence[FalsePositive], scans: int) -> str:
    """The markdown table of one family's false positives: per scan, by where, size and density."""
    sizes = [f"< {SIZE_ML[0]:g} mL", f"{SIZE_ML[0]:g}-{SIZE_ML[1]:g} mL", f">= {SIZE_ML[1]:g} mL"]
    dens = ["faint", "soft tissue", "dense"]
    lines = ["| false positives per scan | " + " | ".join(sizes) + " | " + " | ".join(dens) + " | all |",
             "|---" * (len(sizes) + len(dens) + 2) + "|"]
    n = max(scans, 1)
    for name, group in ((f"hilar (centre within {HILAR_MM:g} mm of the mediastinum)", [f for f in fps if f.hilar]),
                        ("peripheral", [f for f in fps if not f.hilar]), ("all", list(fps))):
        cells = [sum(f.size == s for f in group) / n for s in sizes] + [sum(f.density == d for f in group) / n for d in dens]
        lines.append(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {len(group) / n:.2f} |")
    return "\n".join(lines)


def montage(fps: Sequence[FalsePositive], path: str, title: str) -> None:
    """One axial crop per false positive (the largest :data:`MAX_CROPS`), its outline in red, lung window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown: list[Any] = sorted((f for f in fps if f.crop is not None and f.crop.size), key=lambda f: -f.volume_ml)[:MAX_CROPS]
    cols = 8
    rows = max(1, (len(shown) + cols - 1) // cols)
    height = 2.2 * rows + 0.6
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, height), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, f in zip(axes.ravel(), shown):
        ax.imshow(f.crop, cmap="gray", vmin=-1000, vmax=300)
        if f.outline is not None and f.outline.any():
            ax.contour(f.outline, [0.5], colors="r", linewidths=0.7)
        where = "hilar" if f.hilar else "peripheral"
        ax.set_title(f"scan {f.case}: {f.volume_ml:.2f} mL\n{f.hu_median:+.0f} HU, {where}", fontsize=7)
    fig.suptitle(f"{title}: {len(fps)} false positives" + (f", the {len(shown)} largest shown" if len(shown) < len(fps) else "")
                 + f" ({CROP_MM:g} mm crops)", fontsize=10)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.45 / height))  # the title above the first row's captions
    fig.savefig(path, dpi=80)
    plt.close(fig)
