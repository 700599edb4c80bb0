"""Hilar vessel confluences: the large pulmonary arteries and veins where they gather at the lung root.

Close to the hilum, a lobar artery or a pulmonary vein is not a thin tube:
the interlobar artery is 10-17 mm across, the confluence of the inferior
pulmonary veins up to 20 mm and more, and cut at a slant or at a branch
point either looks like a smooth oval of soft tissue or contrast, surrounded
by lung, with smaller vessels leaving it.  The trees of
:mod:`ai.phantoms.vessels` taper evenly from 5-7 mm radius at their root, so
without these a detector never sees such an oval and takes one for a nodule.

Each vessel tree's root branch gets, with probability :data:`CHANCE`, a
widening somewhere between its middle and its first branch point: an ovoid
1.25-1.9 times the branch's radius, elongated along it, in the tree's own
channel (artery or vein, so it takes up contrast as the tree does).  They are
drawn from a stream of their own (so that no other draw changes), keep clear
of every nodule, stay in the lung label like the vessels they belong to, and
are vessels in the hard-negative structures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ai.phantoms.lesions import NodulePlan
from ai.phantoms.raster import Capsules, Ch
from ai.phantoms.vessels import Bundle

CHANCE = 0.4  # the share of root branches (6 per patient: an artery and two veins per lung) that widen
WIDTH = (1.4, 2.4)  # the widening's radius / the root branch's radius
ALONG = (0.15, 0.9)  # where its centre lies along the root branch (0: the root, 1: the first branch point)
HALF_LENGTH = (0.3, 1.2)  # half its length along the branch, in its radius
CLEAR_MM = 3.0  # its least distance from any nodule


def hilar_vessels(rng: np.random.Generator, bundles: Sequence[Bundle], plans: Sequence[NodulePlan]) -> Capsules:
    """The widenings of the trees' root branches as capsules (anatomical mm), clear of the nodules ``plans``.

    Parameters
    ----------
    rng : Generator
        The stream of the hilar vessels.
    bundles : sequence of Bundle
        The laid-out vessel trees (:func:`ai.phantoms.vessels.build_trees`).
    plans : sequence of NodulePlan
        The nodules, which the widenings keep clear of.

    Returns
    -------
    Capsules
        One capsule per widening, in the channel of its tree.
    """
    parts = []
    for b in bundles:
        ch = Ch.ART if b.kind == "artery" else Ch.VEIN
        for i in np.flatnonzero(b.branches.parent < 0):
            # Every draw is made whether or not it is kept, so that one tree's choice leaves the others' alone.
            keep = rng.random() < CHANCE
            width, along, half = rng.uniform(*WIDTH), rng.uniform(*ALONG), rng.uniform(*HALF_LENGTH)
            if not keep:
                continue
            path, radius = b.vessel_path[i], b.vessel_r[i]
            d = path[-1] - path[0]
            d = d / max(float(np.linalg.norm(d)), 1e-9)
            centre = path[0] + (path[-1] - path[0]) * float(along)
            r = float(np.interp(along, np.linspace(0.0, 1.0, len(radius)), radius)) * float(width)
            h = r * float(half)
            if any(float(np.linalg.norm(centre - p.blob.centre)) < p.blob.bound + r + h + CLEAR_MM for p in plans):
                continue
            parts.append(Capsules.polyline(np.stack([centre - d * h, centre + d * h]), r, ch))
    return Capsules.concat(parts)
