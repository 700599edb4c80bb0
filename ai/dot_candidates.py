"""A second source of lesion candidates: round bright spots in the organ that the network left out.

The network misses some nodules outright: on the training family's
validation scans, most nodules of 6 mm and more that it missed had a peak
probability under 0.05, so no threshold on its output finds them.  A classic
CAD system finds such spots with a *dot filter* (Li, Sone and Doi, Med Phys
2003): at each voxel the Hessian of the image smoothed at a scale sigma has
three eigenvalues; a bright blob has all three negative and alike, a vessel
(a tube) has one near zero, a wall (a plate) two.  The filter's value
``sigma**2 * l3**2 / |l1|`` (``|l1| >= |l2| >= |l3|``, all negative; else 0)
is large on blobs only; it grows with the blob's contrast (about a sixth of
it for a ball), and the scale normalisation makes balls of different sizes
alike.

Each local maximum of the filter within the lungs, beyond the network's own
candidates, becomes a candidate: the region around it brighter than half
way between its peak and the lung around it, connected to it and at most
twice the blob's radius from it.  A logistic regression
(:class:`ai.candidates.CandidateModel`) over :data:`DOT_FEATURES`, fitted
like the network's candidate classifier on phantoms that trained nothing
else (``scripts/train_candidate_classifier.py``), keeps the nodules among
them.  Everything is found and judged on a grid of ``grid_mm`` over the
lungs' box (:class:`Grid`), so that the features read the same whatever the
source's spacing; a kept region goes back to the source grid.  The cost is
bounded: it follows the chest, not the matrix, and at most
``max_candidates`` maxima are judged.

``dot_candidates`` in a bundle's manifest (under ``postprocessing``)::

    "dot_candidates": {"3": {"sigmas_mm": [1.5, 2.5, 4.0], "grid_mm": 2.0, "min_dot": 30,
                             "max_candidates": 150, "model": {<a candidates entry over DOT_FEATURES>}}}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ai.candidates import FEATURES, CandidateError, CandidateModel, Kept, features, from_manifest

logger = logging.getLogger(__name__)

DOT_FEATURES = (
    *FEATURES,
    "dot",  # the filter's value at the maximum (HU; about a sixth of a ball's contrast)
    "dot_sigma",  # the scale it peaked at, mm
    "roundness",  # l3 / l1 at the maximum: 1 for a ball, 0 for a tube
    "tube",  # l2 / l1 at the maximum: 1 for a ball or a tube, 0 for a plate
)
SCRATCH = 255  # the label the candidates' regions take while their features are computed
SOFT_HU = (-1000.0, 400.0)  # the filter sees this range: bone and contrast brighter than soft tissue add nothing


@dataclass(frozen=True)
class DotSettings:
    """Where and how the dot filter looks, and the classifier that judges its candidates."""

    model: CandidateModel
    sigmas_mm: tuple[float, ...] = (1.5, 2.5, 4.0)
    grid_mm: float = 2.0
    min_dot: float = 30.0
    max_candidates: int = 150


def settings_from_manifest(entry: Mapping[str, Any]) -> DotSettings:
    """The :class:`DotSettings` of one ``postprocessing.dot_candidates`` entry.

    Raises
    ------
    CandidateError
        A malformed entry.
    """
    try:
        model = from_manifest(entry["model"], known=DOT_FEATURES)
        sigmas = tuple(float(v) for v in entry.get("sigmas_mm", DotSettings.sigmas_mm))
        grid = float(entry.get("grid_mm", DotSettings.grid_mm))
        min_dot = float(entry.get("min_dot", DotSettings.min_dot))
        limit = int(entry.get("max_candidates", DotSettings.max_candidates))
    except (KeyError, TypeError, ValueError) as exc:
        raise CandidateError(f"dot_candidates needs a model and numeric settings: {exc}") from exc
    if not sigmas or not all(0.5 <= s <= 20.0 for s in sigmas):
        raise CandidateError(f"dot_candidates: sigmas_mm must be within 0.5..20 mm, not {list(sigmas)}")
    if not 0.5 <= grid <= 5.0 or not math.isfinite(min_dot) or min_dot <= 0 or not 1 <= limit <= 1000:
        raise CandidateError("dot_candidates: grid_mm within 0.5..5, min_dot positive, max_candidates within 1..1000")
    return DotSettings(model, sigmas, grid, min_dot, limit)


@dataclass(frozen=True)
class Maximum:
    """One local maximum of the dot filter: a voxel ``[z, y, x]`` of the :class:`Grid`, its value, scale and eigenvalue ratios."""

    voxel: tuple[int, int, int]
    dot: float
    sigma_mm: float
    roundness: float
    tube: float


def _eigenvalues(h: Mapping[tuple[int, int], np.ndarray]) -> np.ndarray:
    """Eigenvalues (ascending, one row per voxel) of the symmetric 3x3 matrices whose entries are ``h[i, j]`` (i <= j).

    In closed form (the trigonometric solution of the characteristic cubic):
    a loop over LAPACK calls would cost a second per million voxels.
    """
    a00, a11, a22 = (h[i, i].astype(np.float64) for i in range(3))
    a01, a02, a12 = (h[k].astype(np.float64) for k in ((0, 1), (0, 2), (1, 2)))
    q = (a00 + a11 + a22) / 3
    p1 = a01**2 + a02**2 + a12**2
    p = np.sqrt(((a00 - q) ** 2 + (a11 - q) ** 2 + (a22 - q) ** 2 + 2 * p1) / 6)
    safe = np.where(p > 0, p, 1.0)
    b00, b11, b22 = (a00 - q) / safe, (a11 - q) / safe, (a22 - q) / safe
    b01, b02, b12 = a01 / safe, a02 / safe, a12 / safe
    det = b00 * (b11 * b22 - b12**2) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    phi = np.arccos(np.clip(det / 2, -1.0, 1.0)) / 3
    high = q + 2 * p * np.cos(phi)
    low = q + 2 * p * np.cos(phi + 2 * np.pi / 3)
    return np.stack([low, 3 * q - high - low, high], axis=1)


def _shifted(img: np.ndarray, idx: tuple[np.ndarray, ...], steps: Mapping[int, int]) -> np.ndarray:
    """``img`` at the voxels ``idx`` moved by ``steps`` (axis -> voxels)."""
    return img[tuple(v + steps.get(a, 0) for a, v in enumerate(idx))]


def _second_differences(img: np.ndarray, idx: tuple[np.ndarray, ...]) -> dict[tuple[int, int], np.ndarray]:
    """The diagonal of the Hessian (central second differences, per voxel step squared) at the voxels ``idx``."""
    c = img[idx]
    return {(a, a): _shifted(img, idx, {a: 1}) + _shifted(img, idx, {a: -1}) - 2 * c for a in range(3)}


def _cross_differences(img: np.ndarray, idx: tuple[np.ndarray, ...]) -> dict[tuple[int, int], np.ndarray]:
    """The Hessian's off-diagonal entries (central differences, per voxel step squared) at the voxels ``idx``."""
    return {(i, j): (_shifted(img, idx, {i: 1, j: 1}) - _shifted(img, idx, {i: 1, j: -1})
                     - _shifted(img, idx, {i: -1, j: 1}) + _shifted(img, idx, {i: -1, j: -1})) / 4
            for i, j in ((0, 1), (0, 2), (1, 2))}


@dataclass(frozen=True)
class Grid:
    """The organ's box of the source volume resampled to about ``mm`` per voxel: where candidates are found and judged.

    Grid voxel ``j`` along an axis lies on source voxel ``box.start + j / per_voxel`` (the ends coincide); the image
    is interpolated linearly, the labels, probabilities and ``exclude`` are taken at the nearest source voxel.
    """

    box: tuple[slice, slice, slice]
    mm: float
    per_voxel: tuple[float, float, float]  # grid voxels per source voxel, per axis
    image: np.ndarray
    labels: np.ndarray
    prob: np.ndarray
    exclude: np.ndarray

    def to_source(self, gbox: tuple[slice, slice, slice], comp: np.ndarray) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """A grid region (``comp`` in grid box ``gbox``) on the source grid: each source voxel takes its nearest grid voxel."""
        ranges, local = [], []
        for b, f, sb in zip(gbox, self.per_voxel, self.box):
            lo = sb.start + max(int(math.floor((b.start - 0.5) / f)), 0)
            hi = min(sb.start + int(math.ceil((b.stop - 0.5) / f)) + 1, sb.stop)
            j = np.rint((np.arange(lo, hi) - sb.start) * f).astype(np.int64) - b.start
            ranges.append(slice(lo, hi))
            local.append(j)
        ok = [(j >= 0) & (j < n) for j, n in zip(local, comp.shape)]
        picked = comp[np.ix_(*[np.clip(j, 0, n - 1) for j, n in zip(local, comp.shape)])]
        mask = picked & ok[0][:, None, None] & ok[1][None, :, None] & ok[2][None, None, :]
        return (ranges[0], ranges[1], ranges[2]), mask


def grid(
    image: np.ndarray, labels: np.ndarray, prob: np.ndarray, exclude: np.ndarray, spacing_zyx: Sequence[float],
    organ_values: Sequence[int], cfg: DotSettings,
) -> Grid | None:
    """The :class:`Grid` over the box of ``organ_values`` (with room for the filter's largest scale); None when there is none."""
    import torch
    import torch.nn.functional as F

    sp = np.asarray(spacing_zyx, dtype=np.float64)
    organ = np.isin(labels, list(organ_values))
    spans = [np.flatnonzero(organ.any(axis=tuple(k for k in range(3) if k != a))) for a in range(3)]  # cheaper than argwhere
    if not len(spans[0]):
        return None
    margin = np.ceil((3 * max(cfg.sigmas_mm) + 4.0) / sp).astype(int)
    lo = [max(int(p[0]) - int(m), 0) for p, m in zip(spans, margin)]
    hi = [min(int(p[-1]) + int(m) + 1, n) for p, m, n in zip(spans, margin, labels.shape)]
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    size = [max(2, int(round((b - a) * s / cfg.grid_mm))) for a, b, s in zip(lo, hi, sp)]
    per = tuple((n - 1) / max(b - 1 - a, 1) for a, b, n in zip(lo, hi, size))
    index = [np.rint(a + np.arange(n) / f).astype(np.int64) for a, n, f in zip(lo, size, per)]
    src = torch.from_numpy(np.clip(image[box], *SOFT_HU).astype(np.float32))[None, None]
    img = F.interpolate(src, size=tuple(size), mode="trilinear", align_corners=True)[0, 0].numpy()
    pick = np.ix_(*index)
    return Grid(box, cfg.grid_mm, (per[0], per[1], per[2]), img, labels[pick], prob[pick].astype(np.float32), exclude[pick])


def maxima(g: Grid, organ: np.ndarray, cfg: DotSettings) -> list[Maximum]:
    """The dot filter's local maxima of at least ``cfg.min_dot`` inside ``organ`` (on the grid), strongest first.

    Each scale's Hessian is the second differences of the grid's image
    smoothed by a Gaussian of that scale, taken only where its trace is negative.
    """
    from scipy import ndimage  # only here: the receiver never needs it

    img = g.image
    inside = organ.copy()
    inside[[0, -1], :, :] = False  # differences need both neighbours
    inside[:, [0, -1], :] = False
    inside[:, :, [0, -1]] = False
    idx = np.nonzero(inside)
    best = np.zeros(len(idx[0]), dtype=np.float32)
    scale = np.zeros_like(best)
    ratios = np.zeros((len(best), 2), dtype=np.float32)
    for s in cfg.sigmas_mm:
        smooth = ndimage.gaussian_filter(img, s / g.mm)
        diagonal = _second_differences(smooth, idx)
        trace = diagonal[0, 0] + diagonal[1, 1] + diagonal[2, 2]
        bright = np.flatnonzero(trace < 0)  # a bright blob's three eigenvalues are negative, so is their sum
        sub = tuple(v[bright] for v in idx)
        h = {k: v[bright] for k, v in diagonal.items()} | _cross_differences(smooth, sub)
        lam = _eigenvalues({k: v / g.mm**2 for k, v in h.items()})  # lam[:, 0] the most negative
        big, mid, small = lam[:, 0], lam[:, 1], lam[:, 2]
        dot = np.where(small < 0, small**2 / np.maximum(-big, 1e-6), 0.0) * s * s
        better = dot > best[bright]
        where = bright[better]
        best[where], scale[where] = dot[better], s
        safe = np.maximum(-big[better], 1e-6)
        ratios[where] = np.stack([np.maximum(-small[better], 0) / safe, np.maximum(-mid[better], 0) / safe], axis=1)
    field = np.zeros(img.shape, dtype=np.float32)
    field[idx] = best
    peak = (field == ndimage.maximum_filter(field, size=3)) & (field >= cfg.min_dot) & inside
    lookup = np.full(img.shape, -1, dtype=np.int64)
    lookup[idx] = np.arange(len(best))
    found = []
    for p in np.argwhere(peak):
        k = int(lookup[tuple(p)])
        found.append(Maximum((int(p[0]), int(p[1]), int(p[2])), float(best[k]), float(scale[k]), float(ratios[k, 0]), float(ratios[k, 1])))
    found.sort(key=lambda m: -m.dot)
    return found


def region(g: Grid, organ: np.ndarray, taken: np.ndarray, m: Maximum) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """The candidate around maximum ``m`` on the grid, in its box: the voxels brighter than half way from the lung around
    to its peak, connected to it, in the organ, not ``taken``, and at most twice the blob's radius away."""
    import cc3d

    radius = max(m.sigma_mm * math.sqrt(3.0), 2.0)
    reach = 2.0 * radius
    half = int(math.ceil((reach + 8.0) / g.mm))
    z, y, x = (slice(max(v - half, 0), min(v + half + 1, n)) for v, n in zip(m.voxel, g.image.shape))
    box = (z, y, x)
    img = g.image[box].astype(np.float64)
    centre = tuple(v - b.start for v, b in zip(m.voxel, box))
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in img.shape)]
    # mm2 from the maximum; float32, so that the radii below compare as they do against ai.shape.sq_distance's distances
    d2 = (((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) * g.mm**2).astype(np.float32)
    org = organ[box] & ~taken[box]
    ring = (d2 > reach**2) & (d2 <= (reach + 6.0) ** 2) & org
    core = d2 <= max(0.5 * radius, g.mm) ** 2
    if np.count_nonzero(ring) < 10:
        return None
    bg = float(np.median(img[ring]))
    peak = float(np.percentile(img[core], 75))
    if peak <= bg:
        return None
    above = (img >= (peak + bg) / 2) & org & (d2 <= reach**2)
    if not above.any():
        return None
    cc = cc3d.connected_components(above, connectivity=26)
    seed = cc[centre]
    if not seed:  # the maximum itself fell under half way (noise): the component nearest to it
        near = np.where(above, d2, np.inf)
        seed = cc[np.unravel_index(int(np.argmin(near)), near.shape)]
        if d2[cc == seed].min() > max(0.5 * radius, g.mm) ** 2:
            return None
    return box, cc == seed


def propose(
    labels: np.ndarray, value: int, prob: np.ndarray, image: np.ndarray, spacing_zyx: Sequence[float], direction: np.ndarray,
    organs: Sequence[int], exclude: np.ndarray, cfg: DotSettings,
) -> tuple[Grid | None, list[tuple[tuple[slice, slice, slice], np.ndarray]], np.ndarray]:
    """The dot filter's candidates in ``organs`` outside ``exclude`` (the network's candidates), and their features.

    Everything is found and measured on the :class:`Grid` (``cfg.grid_mm``), so that the features read the same
    whatever the source's spacing, and the cost follows the chest, not the matrix.

    Returns
    -------
    (Grid, list, ndarray)
        The grid (None without organs), ``(box, voxels in box)`` of each candidate on it, and a
        ``(candidates, len(DOT_FEATURES))`` array.
    """
    from scipy import ndimage

    empty = np.zeros((0, len(DOT_FEATURES)))
    g = grid(image, labels, prob, exclude, spacing_zyx, [*organs, value], cfg)
    if g is None:
        return None, [], empty
    organ = np.isin(g.labels, [*organs, value])
    organ = ndimage.binary_closing(organ, iterations=2) | organ  # nodules at the lung's edge lie in it too
    found = [m for m in maxima(g, organ, cfg) if not g.exclude[m.voxel]][: cfg.max_candidates]
    scratch = g.labels.copy()
    scratch[g.labels == value] = organs[0] if organs else 0  # the network's candidates count as lung around these
    taken = g.exclude.copy()
    kept_max: list[Maximum] = []
    for m in found:
        got = region(g, organ, taken, m)
        if got is None:
            continue
        box, comp = got
        taken[box] |= comp
        scratch[box][comp] = SCRATCH
        kept_max.append(m)
    if not kept_max:
        return g, [], empty
    regions, x = features(scratch, SCRATCH, g.prob, g.image, [g.mm] * 3, direction, list(organs))
    order = [_owner(box, comp, kept_max) for box, comp in regions]  # features() walks the regions in its own order
    extra = np.array([[kept_max[i].dot, kept_max[i].sigma_mm, kept_max[i].roundness, kept_max[i].tube] for i in order])
    return g, regions, np.hstack([x, extra.reshape(len(order), 4)])


def _owner(box: tuple[slice, slice, slice], comp: np.ndarray, found: Sequence[Maximum]) -> int:
    """The strongest maximum in a region (regions that touch merge), else the one nearest to it."""
    for i, m in enumerate(found):  # strongest first
        local = [int(v) - b.start for v, b in zip(m.voxel, box)]
        if all(0 <= v < n for v, n in zip(local, comp.shape)) and comp[tuple(local)]:
            return i
    centre = np.argwhere(comp).mean(axis=0) + [b.start for b in box]
    return int(np.argmin([float(np.sum((np.asarray(m.voxel) - centre) ** 2)) for m in found]))


def judge_dots(
    labels: np.ndarray, value: int, prob: np.ndarray, image: np.ndarray, spacing_zyx: Sequence[float], direction: np.ndarray,
    organs: Sequence[int], exclude: np.ndarray, cfg: DotSettings,
) -> tuple[np.ndarray, list[Kept]]:
    """``labels`` with the dot filter's candidates that ``cfg.model`` keeps labelled ``value`` (on the source grid); those kept.

    A kept region takes the source voxels nearest to its grid voxels, where they are in the organ (or unlabelled).
    """
    g, regions, x = propose(labels, value, prob, image, spacing_zyx, direction, organs, exclude, cfg)
    if g is None or not regions:
        return labels, []
    cols = [DOT_FEATURES.index(f) for f in cfg.model.features]
    p = cfg.model.probability(x[:, cols])
    out = labels.copy()
    kept = []
    for (box, comp), pk in zip(regions, p):
        if pk < cfg.model.cut:
            continue
        sbox, mask = g.to_source(box, comp)
        mask &= np.isin(labels[sbox], [*organs, 0])
        out[sbox][mask] = value
        kept.append(Kept(sbox, mask, float(pk)))
    logger.info("label %d: the dot filter kept %d of %d candidates (cut %g)", value, len(kept), len(regions), cfg.model.cut)
    return out, kept
