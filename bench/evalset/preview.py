"""Pictures of a case for a person to look at: axial slices at the hilum and the base, a coronal slice, a MIP.

Usage: ``python -m bench.evalset.preview SEED [--healthy] [--matrix 256] OUT.png``.
The slices are chosen in patient terms (heights above the lung bases), so
feet-first cases show the same anatomy; images are shown as stored (index
order), titled with the position.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .case import Case


def _height_index(case: Case, frac: float) -> int:
    """Slice index at ``frac`` of the lung extent above the lowest lung slice (patient terms)."""
    zs = np.flatnonzero((case.labels > 0).any(axis=(1, 2)))
    lo, hi = int(zs.min()), int(zs.max())
    up = case.direction[2, 2] > 0
    return int(round(lo + frac * (hi - lo))) if up else int(round(hi - frac * (hi - lo)))


def render(case: Case, path: str | Path, title: str = "") -> Path:
    """Write a 2x3 panel PNG: axial at the hilum and base, coronal, each with and without labels.

    Parameters
    ----------
    case : Case
        The case.
    path : str or Path
        Output PNG.
    title : str
        Figure title.

    Returns
    -------
    Path
        The written file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sx, sy, sz = case.spacing
    k_hil, k_base = _height_index(case, 0.62), _height_index(case, 0.22)
    ny = case.hu.shape[1]
    rows = np.flatnonzero((case.labels > 0).any(axis=(0, 2)))
    j_cor = int((rows.min() + rows.max()) // 2) if rows.size else ny // 2
    panels = [
        ("axial, hilum", case.hu[k_hil], case.labels[k_hil], 1.0),
        ("axial, base", case.hu[k_base], case.labels[k_base], 1.0),
        ("coronal", case.hu[:, j_cor, :][::-1], case.labels[:, j_cor, :][::-1], sz / sx),
    ]
    if case.direction[2, 2] < 0:
        panels[2] = ("coronal", case.hu[:, j_cor, :], case.labels[:, j_cor, :], sz / sx)
    fig, ax = plt.subplots(2, 4, figsize=(28, 14))
    for c, (name, img, lab, aspect) in enumerate(panels):
        ax[0, c].imshow(img, cmap="gray", vmin=-1100, vmax=250, aspect=aspect, interpolation="nearest")
        ax[0, c].set_title(name)
        ax[1, c].imshow(img, cmap="gray", vmin=-1100, vmax=250, aspect=aspect, interpolation="nearest")
        ax[1, c].imshow(np.ma.masked_equal(lab, 0), cmap="brg", vmin=1, vmax=3, alpha=0.35, aspect=aspect,
                        interpolation="nearest")
    slab = max(1, int(round(12 / sz)))
    mip = case.hu[max(k_hil - slab, 0):k_hil + slab + 1].max(axis=0)
    ax[0, 3].imshow(mip, cmap="gray", vmin=-1000, vmax=300)
    ax[0, 3].set_title("MIP 24 mm at the hilum")
    if case.nodules:  # a zoom on the largest nodule, lung window, its label outlined
        n = max(case.nodules, key=lambda n: n.diameter_mm)
        i, j, k = (int(round(c / s)) for c, s in zip(n.centre_mm, case.spacing))
        h = max(8, int(2.2 * n.diameter_mm / sx))
        win = (slice(max(j - h, 0), j + h), slice(max(i - h, 0), i + h))
        ax[1, 3].imshow(case.hu[k][win], cmap="gray", vmin=-1000, vmax=200, interpolation="nearest")
        ax[1, 3].contour((case.labels[k][win] == 3).astype(float), levels=[0.5], colors="lime", linewidths=1)
        ax[1, 3].set_title(f"{n.kind} {n.site} {n.diameter_mm:.1f} mm")
    else:
        ax[1, 3].imshow(case.hu[k_hil], cmap="gray", vmin=-160, vmax=240)
        ax[1, 3].set_title("mediastinal window")
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=48)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: render one case."""
    from .generate import generate_case

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("seed", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--healthy", action="store_true")
    ap.add_argument("--matrix", type=int, default=256)
    a = ap.parse_args(argv)
    case = generate_case(a.seed, healthy=a.healthy, matrix=a.matrix)
    acq = case.meta["acquisition"]
    assert isinstance(acq, dict)
    kinds = ", ".join(f"{n.kind} {n.site} {n.diameter_mm:.0f} mm {n.side}" for n in case.nodules) or "no nodules"
    title = (f"seed {a.seed}: {acq['position']} {acq['thickness_mm']} mm {acq['kernel']} noise {acq['noise_sigma']:.0f} HU "
             f"contrast {acq['contrast']}; {kinds}")
    print(render(case, a.out, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
