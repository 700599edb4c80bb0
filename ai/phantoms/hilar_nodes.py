"""Hilar and interlobar lymph nodes (stations 10 and 11): round soft tissue in the lung root that is no nodule.

At each hilum the lymph nodes lie along the main and lobar bronchi, among
the large arteries and veins, with lung around much of them: in an axial
slice they look like a nodule beside the mediastinum.  Normal ones measure
up to about 10 mm across, reactive or enlarged ones up to 15-20 mm.  They
are drawn after the nodules (from a stream of their own, so that no other
draw changes), keep clear of every nodule, stay in the lung label like the
vessels around them, and are marked as confounders in the hard-negative
structures: places a nodule detector must leave alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ai.phantoms.lesions import NodulePlan
from ai.phantoms.mediastinum import Hilum
from ai.phantoms.raster import Capsules, Ch

NODES_PER_HILUM = (0, 3)  # how many per hilum, inclusive (uniform)
RADIUS_MM = (2.5, 8.0)  # their radius (short axis 5-16 mm)
ALONG_MM = (-4.0, 24.0)  # where along the bronchus from the hilum's root (its main bronchus's end) they lie
CLEAR_MM = 3.0  # their least distance from any nodule


def hilar_nodes(rng: np.random.Generator, hila: dict[str, Hilum], plans: Sequence[NodulePlan]) -> Capsules:
    """The lymph nodes of both hila as soft-tissue capsules (anatomical mm), clear of the nodules ``plans``."""
    parts = []
    for hil in hila.values():
        d = hil.bronchus_dir / max(float(np.linalg.norm(hil.bronchus_dir)), 1e-9)
        for _ in range(int(rng.integers(NODES_PER_HILUM[0], NODES_PER_HILUM[1] + 1))):
            r = float(rng.uniform(*RADIUS_MM))
            perp = np.cross(d, rng.normal(size=3))
            perp /= max(float(np.linalg.norm(perp)), 1e-9)
            centre = hil.bronchus + d * float(rng.uniform(*ALONG_MM)) + perp * (hil.bronchus_r + r + float(rng.uniform(1.0, 5.0)))
            axis = rng.normal(size=3)
            end = centre + axis / max(float(np.linalg.norm(axis)), 1e-9) * r * float(rng.uniform(0.0, 0.8))  # ovoid
            reach = r + float(np.linalg.norm(end - centre))
            if any(float(np.linalg.norm(centre - p.blob.centre)) < p.blob.bound + reach + CLEAR_MM for p in plans):
                continue
            parts.append(Capsules.polyline(np.stack([centre, end]), r, Ch.SOFT))
    return Capsules.concat(parts)
