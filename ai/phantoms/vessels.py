"""Pulmonary vessel trees: arteries beside the bronchi (bronchovascular bundles) and veins between them.

Each lung gets an arterial tree from its hilar artery and two venous trees
from its superior and inferior pulmonary veins, grown lobe by lobe
(:mod:`ai.phantoms.trees`) into points sampled in the lung.  Branches are
curved (quadratic Bezier) and taper from about 7-8 mm radius at the hilum to
about 0.5 mm at the periphery.  The arterial tree's centreline is the
bundle's axis: the artery runs on one side and, while the branch is large
enough, the bronchus (:mod:`ai.phantoms.airways`) on the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ai.phantoms.anatomy import Anatomy
from ai.phantoms.lobes import LOWER, MIDDLE, UPPER, Fissures
from ai.phantoms.lungs import LungGrid, LungQuery
from ai.phantoms.mediastinum import Hilum, Mediastinum
from ai.phantoms.raster import Capsules, Ch
from ai.phantoms.trees import Branches, Plan, grow_tree


@dataclass
class Bundle:
    """One grown tree laid out in space: per branch, the vessel's and the bronchus's curved paths."""

    name: str
    side: str
    kind: str  # "artery" or "vein"
    branches: Branches
    vessel_path: np.ndarray  # (N, m, 3) points along each branch's vessel
    vessel_r: np.ndarray  # (N, m) radius at those points
    bronchus_path: np.ndarray | None  # (N, m, 3) or None (veins)
    bronchus_r: np.ndarray | None  # (N, m) outer radius, 0 where no bronchus


def _bend(start: np.ndarray, end: np.ndarray, rand: np.ndarray, m: int, amount: float) -> np.ndarray:
    """``m`` points on a quadratic Bezier from start to end, its control point pushed sideways (``rand``: uniforms)."""
    d = end - start
    ln = np.linalg.norm(d, axis=1, keepdims=True)
    side = np.cross(d, rand[:, :3] - 0.5)
    side /= np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-9)
    ctrl = (start + end) / 2 + side * ln * (amount * (2 * rand[:, 3:4] - 1))
    t = np.linspace(0, 1, m)[None, :, None]
    return ((1 - t) ** 2) * start[:, None] + 2 * (1 - t) * t * ctrl[:, None] + t * t * end[:, None]


def _node_frames(br: Branches, e_root: np.ndarray) -> np.ndarray:
    """A unit vector normal to each branch, carried smoothly from parent to child (the bundle's side)."""
    e = np.zeros((len(br), 3))
    for i in range(len(br)):  # parents come before their children
        prev = e_root if br.parent[i] < 0 else e[br.parent[i]]
        u = br.end[i] - br.start[i]
        u = u / max(float(np.linalg.norm(u)), 1e-9)
        v = prev - np.dot(prev, u) * u
        nv = float(np.linalg.norm(v))
        if nv < 1e-6:
            v = np.cross(u, [0.3, 0.5, 0.8])
            nv = float(np.linalg.norm(v))
        e[i] = v / nv
    return e


def lay_out(
    name: str, side: str, kind: str, br: Branches, hil_offset: np.ndarray,
    bronchus_min_r: float = 0.0, bronchus_ratio: float = 1.1,
) -> Bundle:
    """Curve the branches and place the vessel (and bronchus) beside each bundle axis.

    ``hil_offset`` is where the vessel root sits relative to the tree's root
    (the hilar artery beside the bronchus); with ``bronchus_min_r > 0`` the
    branches at least that thick carry a bronchus.
    """
    m = 4
    n = len(br)
    axis = _bend(br.start, br.end, br.rand, m, 0.14)
    has_b = br.radius >= bronchus_min_r if bronchus_min_r > 0 else np.zeros(n, bool)
    rb = np.where(has_b, br.radius * bronchus_ratio * (0.9 + 0.2 * br.rand[:, 4]), 0.0)
    h0 = float(np.linalg.norm(hil_offset))
    e_root = hil_offset / h0 if h0 > 1e-6 else np.array([0.0, -1.0, 0.0])
    e = _node_frames(br, e_root)
    # Offsets at each branch's end node; a branch's start node is its parent's end (or the root).
    ha_end = np.where(has_b, rb + 0.15, 0.0)
    hb_end = np.where(has_b, br.radius + 0.15, 0.0)
    par = br.parent
    ha_start = np.where(par >= 0, ha_end[np.maximum(par, 0)], h0)
    hb_start = np.where(par >= 0, hb_end[np.maximum(par, 0)], 0.0)
    e_start = np.where((par >= 0)[:, None], e[np.maximum(par, 0)], e_root[None])
    t = np.linspace(0, 1, m)[None, :, None]
    off_s, off_e = e_start * ha_start[:, None], e * ha_end[:, None]
    vessel = axis + (1 - t) * off_s[:, None] + t * off_e[:, None]
    vr = br.radius[:, None] * np.linspace(1.0, 0.9, m)[None]
    bpath = brr = None
    if bronchus_min_r > 0:
        bpath = axis - (1 - t) * (e_start * hb_start[:, None])[:, None] - t * (e * hb_end[:, None])[:, None]
        brr = rb[:, None] * np.linspace(1.0, 0.93, m)[None]
    return Bundle(name, side, kind, br, vessel, vr, bpath, brr)


def bundle_capsules(b: Bundle) -> Capsules:
    """The vessel of a bundle as capsules (pulmonary artery or vein channel)."""
    ch = Ch.ART if b.kind == "artery" else Ch.VEIN
    p, r = b.vessel_path, b.vessel_r
    return Capsules(
        p[:, :-1].reshape(-1, 3), p[:, 1:].reshape(-1, 3), r[:, :-1].reshape(-1), r[:, 1:].reshape(-1),
        np.full(p.shape[0] * (p.shape[1] - 1), int(ch), dtype=np.int16),
    )


def _side_test(grid: LungGrid, sid: int) -> Callable[[np.ndarray], np.ndarray]:
    def inside(pts: np.ndarray) -> np.ndarray:
        return np.asarray(grid.lookup(pts) == sid)

    return inside


PLANS: dict[str, Plan] = {"right": (UPPER, (MIDDLE, LOWER)), "left": (UPPER, LOWER)}
VEIN_PLANS: dict[str, tuple[Plan, Plan]] = {"right": ((UPPER, MIDDLE), LOWER), "left": (UPPER, LOWER)}


def build_trees(
    rng: np.random.Generator, anat: Anatomy, med: Mediastinum, fis: Fissures, r_min: float, n_points: int = 14000,
) -> list[Bundle]:
    """Grow and lay out the arterial (with bronchi) and venous trees of both lungs.

    Parameters
    ----------
    rng : Generator
        The vessel stream.
    anat, med, fis
        Anatomy, mediastinal structures (hila, exclusions) and fissures.
    r_min : float
        Smallest branch radius (mm), about 0.5 at fine resolution.
    n_points : int
        Samples per lung and tree (the partition's resolution).
    """
    lq = LungQuery(anat, med.excl)
    pts, side = lq.sample(rng, n_points)
    grid = LungGrid(lq)
    lobe = fis.lobe(pts, side)
    bundles: list[Bundle] = []
    aw_min = float(rng.uniform(0.9, 1.3))
    aw_ratio = float(rng.uniform(0.95, 1.25))
    for sname, sid in (("right", 1), ("left", 2)):
        hil: Hilum = med.hila[sname]
        mine = np.flatnonzero(side == sid)
        rng.shuffle(mine)
        half = len(mine) // 2
        art_idx, vein_idx = mine[:half], mine[half:]
        inside = _side_test(grid, sid)
        br = grow_tree(pts[art_idx], lobe[art_idx], PLANS[sname], hil.bronchus, hil.bronchus_dir, hil.artery_r, r_min, rng,
                       inside=inside)
        bundles.append(lay_out(f"{sname} artery", sname, "artery", br, hil.artery - hil.bronchus, aw_min, aw_ratio))
        vp = VEIN_PLANS[sname]
        for which, root, plan in (("superior", hil.veins[0], vp[0]), ("inferior", hil.veins[1], vp[1])):
            d = root - hil.bronchus
            br = grow_tree(pts[vein_idx], lobe[vein_idx], plan, root, d, hil.vein_r, r_min, rng, inside=inside)
            bundles.append(lay_out(f"{sname} vein ({which})", sname, "vein", br, np.zeros(3)))
    return bundles
