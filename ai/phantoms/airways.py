"""The bronchial tree inside the lungs: air lumen in a thin soft-tissue wall, beside each artery.

The trachea and main bronchi are mediastinal (:mod:`ai.phantoms.mediastinum`);
from each hilum the bronchi follow the arterial tree's bundles
(:func:`ai.phantoms.vessels.lay_out`) while they are at least about 1 mm in
radius, as bronchi become invisible on CT toward the periphery.
"""

from __future__ import annotations

import numpy as np

from ai.phantoms.raster import Capsules, Ch
from ai.phantoms.vessels import Bundle


def bronchus_capsules(bundles: list[Bundle], rng: np.random.Generator) -> Capsules:
    """Wall (:attr:`Ch.AW_WALL`, outer radius) and lumen (:attr:`Ch.AW_LUMEN`) capsules of all bronchi.

    Wall thickness is about a fifth to a third of the outer radius (thicker in
    some patients, as with chronic bronchitis), at least 0.3 mm.
    """
    wall_frac = float(rng.uniform(0.2, 0.34)) * (1.35 if rng.random() < 0.15 else 1.0)
    parts: list[Capsules] = []
    for b in bundles:
        if b.bronchus_path is None or b.bronchus_r is None:
            continue
        keep = b.bronchus_r[:, 0] > 0
        if not keep.any():
            continue
        p, r = b.bronchus_path[keep], b.bronchus_r[keep]
        a, e = p[:, :-1].reshape(-1, 3), p[:, 1:].reshape(-1, 3)
        ra, rb = r[:, :-1].reshape(-1), r[:, 1:].reshape(-1)
        n = len(ra)
        parts.append(Capsules(a, e, ra, rb, np.full(n, int(Ch.AW_WALL), dtype=np.int16)))
        wa, wb = np.maximum(ra * wall_frac, 0.3), np.maximum(rb * wall_frac, 0.3)
        parts.append(Capsules(a.copy(), e.copy(), np.maximum(ra - wa, 0.0), np.maximum(rb - wb, 0.0),
                              np.full(n, int(Ch.AW_LUMEN), dtype=np.int16)))
    return Capsules.concat(parts)
