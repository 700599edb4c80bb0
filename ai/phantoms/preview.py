"""Render a few axial, coronal and sagittal slices of a phantom to PNG (headless matplotlib).

``python -m ai.phantoms.preview OUT.png --seed 3 --matrix 512`` writes a
sheet: top row in the lung window, bottom row in the mediastinal window with
the labels outlined (right lung green, left lung blue, nodules red,
hard negatives yellow).  Slices are shown in the radiological convention
(patient right on the left, anterior up, head up) whatever the position.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ai.phantoms.records import LEFT_LUNG, NODULE, RIGHT_LUNG, Phantom

logger = logging.getLogger(__name__)


def to_lps(p: Phantom, arr: np.ndarray) -> np.ndarray:
    """An image-array ``[z, y, x]`` flipped so its axes run along +L, +P, +S (HFS layout)."""
    signs = np.sign(np.diag(p.direction))
    axes = tuple(ax for ax, s in ((2, signs[0]), (1, signs[1]), (0, signs[2])) if s < 0)
    return np.flip(arr, axes) if axes else arr


def render_preview(p: Phantom, path: Path, levels: tuple[float, ...] = (0.2, 0.38, 0.55, 0.75), zoom: int = 0) -> Path:
    """Write a PNG sheet of slices of ``p`` to ``path``.

    Parameters
    ----------
    p : Phantom
        The phantom to show.
    path : Path
        Output PNG.
    levels : tuple of float
        Axial levels as fractions of the lungs' height from their top.
    zoom : int
        Also add a row of ``zoom``-times enlarged lung crops (0: none).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hu = to_lps(p, p.hu).astype(np.float32)
    lab = to_lps(p, p.labels)
    hn = to_lps(p, p.hard_negatives) if p.hard_negatives is not None else None
    lung_z = np.flatnonzero((lab > 0).any(axis=(1, 2)))
    z_top, z_bot = (lung_z.max(), lung_z.min()) if len(lung_z) else (hu.shape[0] - 1, 0)
    ks = [round(z_top - f * (z_top - z_bot)) for f in levels]
    nod = np.argwhere(lab == NODULE)
    if len(nod):
        ks[-1] = int(nod[0][0])
    cy = int(np.median(np.flatnonzero((lab > 0).any(axis=(0, 2))))) if len(lung_z) else hu.shape[1] // 2
    left_x = np.flatnonzero((lab == LEFT_LUNG).any(axis=(0, 1)))
    cx = int(np.median(left_x)) if len(left_x) else hu.shape[2] // 2 + int(0.22 * hu.shape[2])
    px, _, dz = p.spacing
    views: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, float]] = []
    for k in ks:
        views.append((f"axial z={k}", hu[k], lab[k], hn[k] if hn is not None else None, 1.0))
    views.append(("coronal", hu[::-1, cy, :], lab[::-1, cy, :], hn[::-1, cy, :] if hn is not None else None, dz / px))
    views.append(("sagittal L", hu[::-1, :, cx], lab[::-1, :, cx], hn[::-1, :, cx] if hn is not None else None, dz / px))
    rows = 3 if zoom else 2
    fig, axs = plt.subplots(rows, len(views), figsize=(4.2 * len(views), 4.4 * rows), dpi=110)
    for j, (name, img, lb, hm, aspect) in enumerate(views):
        axs[0, j].imshow(img, cmap="gray", vmin=-1350, vmax=150, aspect=aspect, interpolation="nearest")
        axs[0, j].set_title(name, fontsize=9)
        axs[1, j].imshow(img, cmap="gray", vmin=-160, vmax=240, aspect=aspect, interpolation="nearest")
        for val, col in ((RIGHT_LUNG, "lime"), (LEFT_LUNG, "deepskyblue"), (NODULE, "red")):
            if (lb == val).any():
                axs[1, j].contour(lb == val, levels=[0.5], colors=col, linewidths=0.6)
        if hm is not None and hm.any():
            axs[1, j].contour(hm, levels=[0.5], colors="yellow", linewidths=0.3)
        if zoom:
            h, w = img.shape
            crop = img[h // 5: h // 5 + h // 2, w // 8: w // 8 + w // 2] if j < len(ks) else img
            axs[2, j].imshow(crop, cmap="gray", vmin=-1100, vmax=100, aspect=aspect, interpolation="bilinear")
        for r in range(rows):
            axs[r, j].axis("off")
    m = p.meta
    fig.suptitle(
        f"seed {p.seed}  {m.get('position')}  {p.hu.shape[2]}x{p.hu.shape[1]}x{p.hu.shape[0]} "
        f"({px:.2f} mm, {dz:.2f} mm)  kernel {m.get('kernel')}  noise {m.get('noise_hu', 0):.0f} HU  "
        f"contrast {m.get('contrast')}  {m.get('body_size')}  arms {m.get('arms')}  nodules "
        f"{', '.join(f'{n.kind}/{n.site} {n.diameter_mm:.0f}mm' for n in p.nodules) or 'none'}  "
        f"confounders {', '.join(m.get('confounders', [])) or 'none'}",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: generate one phantom and write its preview sheet."""
    from ai.phantoms.generator import generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--slices", type=int, default=None)
    ap.add_argument("--slice-mm", type=float, nargs=2, default=(0.625, 5.0))
    ap.add_argument("--zoom", type=int, default=0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # configured here: this is the command line
    p = generate(a.seed, matrix=a.matrix, slices=a.slices, slice_mm=tuple(a.slice_mm), hard_negatives=True)
    logger.info("wrote %s", render_preview(p, a.out, zoom=a.zoom))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
