"""How a lesion's volume is measured with sub-voxel care: the estimators behind :class:`LesionVolume`.

Counting the voxels of a small component misjudges it by a good part of
its boundary shell, which is most of a small nodule.  The estimators here
measure one component (:class:`Component`) of a label map from the image
(``partial_volume``, ``grown``) or from the network's probability
(``probability``); :func:`ai.measure.measure` chooses among them as
:class:`LesionVolume` says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import cc3d
import numpy as np

from ai.lesion_calcium import calcification, soft_core
from ai.organ_surface import inside_share
from ai.postprocess import dilate_box
from ai.shape import sq_distance

METHODS = ("auto", "grown", "partial_volume", "probability", "voxels")
Method = Literal["auto", "grown", "partial_volume", "probability", "voxels"]
GROWN_RING_MM = (4.0, 8.0)  # "grown": the background is sampled this far from the component (beyond grow_mm)


@dataclass(frozen=True)
class LesionVolume:
    """How a lesion's volume is measured (``measurement.lesion_volume`` of a bundle).

    Attributes
    ----------
    method : str
        ``partial_volume``: from the intensities, every voxel of the lesion
        and of a shell around it counts with the fraction of lesion that its
        intensity shows, between the local background (the organ around it)
        and the lesion's core.  ``probability``: the sum of the lesion
        class's probability over the lesion and the low-probability tail
        around it.  ``voxels``: the voxel count.  ``auto`` (default):
        partial volume where the lesion stands out from its background by
        ``min_contrast`` noise standard deviations, else probability where
        there are probabilities, else voxels.  ``grown``: the voxels of the
        source grid, within ``grow_mm`` of the component and in the same
        organ, that are brighter than halfway between the background and
        the lesion's level (connected to the component), so the network's
        boundary only seeds the region; else as ``auto``.
    shell_mm : float
        How far around the component partial-volume fractions are collected
        (a box of this half-width); the background is sampled from the next
        ``shell_mm`` out.
    tail_mm : float
        How far around the component the probability tail is summed: a
        network's probability fades over a few of its own voxels.
    core : float, optional
        The intensity of the lesion's own tissue, for lesions too small to
        show it (fewer than ``MIN_CORE_VOXELS`` voxels whose neighbours are
        all lesion), e.g. 0 HU for solid lung nodules.  Without it, such a
        lesion is measured by probability (or voxels): every one of its voxels
        is partial, so its brightest voxel would understate its core and
        inflate its volume.
    min_contrast : float
        Partial volume needs |core - background| of at least this many robust
        noise standard deviations of the background.
    thresholds : mapping of int to float
        Per lesion label, the probability at which the network calls a voxel
        that label (default 0.5): outside the component, only voxels below it
        are the lesion's tail; above it they belong to another finding.
    grow_mm : float
        ``grown``: how far beyond the network's component the region may
        reach (a network on a coarser grid misplaces the boundary by about a
        voxel of its own); the limit also keeps vessels and the chest wall
        that touch the lesion from being grown into.
    grow_max_mm : float
        ``grown``: how far the region may reach in all, when the lesion goes
        on past ``grow_mm`` (0: no further).  Where most of what stopped the
        region (at least ``grow_on_share`` of the organ's voxels just outside
        it) is as bright as the region and lies past the limit, the network's
        component covered only part of the lesion (a part-solid nodule's
        ground glass, a faint nodule of which the network saw only the
        core); the region is grown again ``grow_mm`` further, with the
        background sampled further out too, until it stops on its own or
        reaches ``grow_max_mm``.  A touching vessel or the chest wall stops
        the region on a small share of its outside only.
    grow_on_share : float
        See ``grow_max_mm``.
    level : float
        ``grown``: the percentile of the component's intensities taken as the
        lesion's level; the region's threshold is halfway from the
        background to it.
    grow_contrast : float
        ``grown`` needs level and background to differ by this many robust
        noise standard deviations.
    open_mm : float
        ``grown``: the largest radius of the ball that opens the region, so
        that a vessel or strand thinner than the ball, grown into where it
        touches the lesion, comes off (0: no opening).  The ball is at most
        ``open_fraction`` of the region's equivalent-sphere radius, so a
        small lesion is never opened away, and there is no opening where the
        ball would be flat (smaller than the coarsest spacing: on thick
        slices it would shave whole slices off the lesion's caps).  What lies
        within one ball radius of the opened lesion stays: on a coarse grid
        an opening shaves a round lesion's rim too, and dropping that rim
        would bias every volume down.
    open_fraction : float
        See ``open_mm``.
    open_contrast : float
        ``grown``: the opening runs only on a lesion whose level stands this
        many noise SDs above the background (0: always).  A faint lesion in
        heavy noise (ground glass at 250 HU of contrast and 50-80 HU of
        noise) thresholds into a ragged region that any ball erodes apart,
        and the vessels an opening is for are solid, far above that.
    open_rim : str
        What of the opening's leftovers is given back.  ``ball`` (0.5.1):
        everything within one ball radius of the opened lesion (a vessel
        keeps a stub that long).  ``adjacent``: each piece the opening took
        off that lies wholly within one voxel step of the opened lesion (the
        rim a coarse grid shaves off a round lesion); a piece that reaches
        further is an attachment and goes whole.
    shell_edge_only : bool
        ``grown``: the one-voxel shell around the region counts only the
        lesion's own edge.  A shell voxel past the region's threshold with
        another such voxel just beyond it belongs to a structure that goes
        on past the lesion (a vessel the region stopped at, ``grow_mm`` from
        the component) and counts nothing; a lone bright shell voxel, such as
        a nodule's cap on the next thick slice, still counts its fraction.
    surface_cut : bool
        ``grown``: a lesion that touches what lies beyond its organ (a
        juxtapleural nodule, the chest wall) counts only on the organ's side
        of the organ's surface, fitted around it (:mod:`ai.organ_surface`):
        the wall has the lesion's density, and the network's component
        spills into it.
    ground_glass_share : float
        ``grown``: when at least this share of the component's intensities
        lie 20-65 % of the way from the background to the lesion's level (a
        part-solid nodule: ground glass around a solid core, the core alone
        setting the 75th percentile), the lesion's level is their median, so
        that the region takes in the ground glass, and the ground glass is the
        core its voxels' fractions are taken against (the solid part counts
        whole).  0: off.
    small_core : str
        ``grown``, for a region too small to show its own intensity (fewer
        than ``MIN_CORE_VOXELS`` pure voxels) and no ``core`` given:
        ``none`` falls back as ``auto`` does; ``brightest`` takes the
        brighter of the lesion's level and the region's 95th percentile as
        its core (a slight overestimate on thick slices, where even the
        brightest voxel is partial, instead of the probability's
        inheritance of the network's errors).
    calcium : float, optional
        ``grown``: the densest a lesion's soft tissue is (e.g. 150 HU);
        voxels brighter than this by two noise SDs are calcification
        (:mod:`ai.lesion_calcium`).  A lesion with calcification is never
        taken for a part-solid one, whose solid part is soft tissue: its
        partial rim, most of a small nodule on thick slices, fills the
        ground-glass band.  A partly calcified one takes its level and core
        from its soft tissue alone: the calcified part counts whole, and its
        edge's fractions are taken against the soft tissue that the edge
        is, not against a core that the calcium raised, which counts the
        edge short.  None: off.
    """

    method: Method = "auto"
    shell_mm: float = 3.0
    tail_mm: float = 5.0
    core: float | None = None
    min_contrast: float = 10.0
    thresholds: Mapping[int, float] = field(default_factory=dict)
    grow_mm: float = 2.0
    grow_max_mm: float = 0.0
    grow_on_share: float = 0.5
    level: float = 75.0
    grow_contrast: float = 3.0
    open_mm: float = 0.0
    open_fraction: float = 0.5
    open_contrast: float = 0.0
    open_rim: Literal["ball", "adjacent"] = "ball"
    surface_cut: bool = False
    shell_edge_only: bool = False
    ground_glass_share: float = 0.0
    small_core: Literal["none", "brightest"] = "none"
    calcium: float | None = None


MIN_CORE_VOXELS = 8
SMALL_CORES = ("none", "brightest")
OPEN_RIMS = ("ball", "adjacent")


def inner_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` whose 26 neighbours are all in ``mask``."""
    return mask & ~dilate_box(~np.pad(mask, 1), (1, 1, 1))[1:-1, 1:-1, 1:-1]


@dataclass
class Component:
    """One lesion component and its neighbourhood, while it is measured."""

    box: tuple[slice, slice, slice]  # the neighbourhood in the volume
    comp: np.ndarray  # the component's voxels in ``box``
    border: np.ndarray  # label counts on its one-voxel shell


def background(img: np.ndarray, ring: np.ndarray, comp: np.ndarray) -> tuple[float, float, float] | None:
    """The organ's intensity on ``ring`` (its median), its robust noise SD (from the median absolute deviation), and +1
    if the lesion ``comp`` is brighter (else -1).

    None when the ring holds fewer than 10 voxels.
    """
    if np.count_nonzero(ring) < 10:
        return None
    bg_vals = img[ring]
    bg = float(np.median(bg_vals))
    noise = max(1.4826 * float(np.median(np.abs(bg_vals - bg))), 1e-6)
    return bg, noise, 1.0 if float(np.median(img[comp])) >= bg else -1.0


def partial_volume(
    c: Component, labels: np.ndarray, image: np.ndarray, free: np.ndarray, cfg: LesionVolume, half: Sequence[int]
) -> float | None:
    """Lesion voxels (a fraction each) from intensities, or None where the contrast is too low to tell.

    ``free``: the voxels of ``c.box`` that no lesion holds and no larger lesion's shell has counted.
    """
    host = int(c.border.argmax())  # the label around the lesion: its background
    lab = labels[c.box]
    img = image[c.box].astype(np.float64)
    near = dilate_box(c.comp, half)
    ring = dilate_box(near, half) & ~near & (lab == host)
    found = background(img, ring, c.comp)
    if found is None:
        return None
    bg, noise, sign = found
    vals = img[c.comp]
    # The lesion's pure voxels: those whose neighbours all show more than half its peak contrast (the
    # component may be a little off the lesion: a network's boundary on a coarser grid).
    peak = float(np.percentile(vals, 95 if sign > 0 else 5))
    region = c.comp | (near & (lab == host))
    inner = inner_voxels(region & ((img - (bg + peak) / 2) * sign > 0))
    if np.count_nonzero(inner) >= MIN_CORE_VOXELS:
        core = float(np.median(img[inner]))
    elif cfg.core is not None and (cfg.core - bg) * sign > 0:
        core = float(cfg.core)
    else:
        return None  # too small to show its own intensity, and none given: every voxel is partial
    contrast = core - bg
    if abs(contrast) < cfg.min_contrast * noise:
        return None
    frac = (img - bg) / contrast
    edge = c.comp & ~inner
    shell = near & ~c.comp & free & (lab == host)
    tail = frac[shell]
    floor = 2 * noise / abs(contrast)  # below two noise SDs a shell voxel is background: no bias from clipping noise
    return float(
        np.count_nonzero(inner & c.comp) + np.clip(frac[edge], 0, 1).sum() + np.clip(tail[tail > floor], 0, 1).sum()
    )


def grown(
    c: Component, labels: np.ndarray, image: np.ndarray, free: np.ndarray, cfg: LesionVolume, spacing_zyx: Sequence[float]
) -> tuple[float, np.ndarray, tuple[slice, ...]] | None:
    """Lesion voxels (a fraction each) over a region grown from the component on the source grid, the region and its box.

    None where it cannot be told.  ``free`` as for partial volume.  The
    region is the 6-connected set of voxels, within ``cfg.grow_mm`` of the
    component and in its organ (or the component itself), whose intensity is
    past halfway from the organ's background to the lesion's level, that
    touches the component; where the limit rather than the image stopped it,
    it is grown further, up to ``cfg.grow_max_mm`` (the box returned is then
    wider than the component's).  Its pure voxels count 1; its other voxels and
    those of its one-voxel shell count with their partial-volume fraction,
    as in :func:`partial_volume`: a count of voxels misses a whole slice's
    worth on thick slices.
    """
    from scipy import ndimage  # only here: the rest of the node's measuring needs no scipy

    host = int(c.border.argmax())
    box: tuple[slice, ...] = c.box
    comp = c.comp
    in_host = labels[box] == host
    img = image[box].astype(np.float64)
    dist = ndimage.distance_transform_edt(~comp, sampling=spacing_zyx)
    organ = in_host & free
    reach = cfg.grow_mm
    step = _grow(comp, img, in_host, organ, dist, reach, cfg)
    if step is None:
        return None
    if reach < cfg.grow_max_mm and step.stopped >= cfg.grow_on_share:
        # The lesion goes on past the limit: the component was a part of it.  Grow further, in a box with room for the
        # region and the background beyond it; the last growth that could be told stands.
        box, at = _wider_box(c, labels.shape, spacing_zyx, max(GROWN_RING_MM[1], cfg.grow_max_mm + 4.0))
        wide = tuple(b.stop - b.start for b in box)
        comp = _pasted(c.comp, at, wide, fill=False)
        free = _pasted(free, at, wide, fill=True)  # beyond c.box the organ's label alone keeps other lesions out
        step = replace(step, region=_pasted(step.region, at, wide, fill=False),
                       bright=_pasted(step.bright, at, wide, fill=False))
        in_host = labels[box] == host
        img = image[box].astype(np.float64)
        dist = ndimage.distance_transform_edt(~comp, sampling=spacing_zyx)
        organ = in_host & free
        while reach < cfg.grow_max_mm and step.stopped >= cfg.grow_on_share:
            reach = min(reach + cfg.grow_mm, cfg.grow_max_mm)
            further = _grow(comp, img, in_host, organ, dist, reach, cfg)
            if further is None:
                break
            step = further
    region, bright = step.region, step.bright
    bg, noise, sign, level, glass = step.background, step.noise, step.sign, step.level, step.glass
    if cfg.open_mm > 0 and sign > 0 and level - bg >= cfg.open_contrast * noise:
        region = _without_attachments(region, comp, cfg, spacing_zyx)
    share = None
    if cfg.surface_cut and sign > 0:
        share = inside_share(comp, in_host, free & ~in_host, img, dist, spacing_zyx, bg, noise)
        if share is not None:
            region &= share > 0
            if not region.any():
                return None  # all of it beyond the organ's surface: nothing of the image to measure it by
    inner = inner_voxels(region)
    if glass is not None:
        core = glass  # ground glass counts whole; the solid part, brighter, too (fractions are clipped at 1)
    elif step.calcified is not None:  # the calcified part counts whole (fractions are clipped at 1)
        core = soft_core(img, region, inner, step.calcified, level, cfg.core, MIN_CORE_VOXELS)
    elif np.count_nonzero(inner) >= MIN_CORE_VOXELS:
        core = float(np.median(img[inner]))
    elif cfg.core is not None:
        core = float(cfg.core) if (cfg.core - level) * sign > 0 else level  # never dimmer than what the lesion shows
    elif cfg.small_core == "brightest":
        core = max(level, float(np.percentile(img[region], 95))) if sign > 0 else min(level, float(np.percentile(img[region], 5)))
    else:
        return None  # too small to show its own intensity, and none given (as for partial volume)
    frac = np.clip((img - bg) / (core - bg), 0.0, 1.0)
    shell = dilate_box(region, (1, 1, 1)) & ~region & organ
    pure = float(np.count_nonzero(inner))
    if share is not None:  # each voxel counts only with its share on the organ's side of the surface
        frac, pure = frac * share, float(share[inner].sum())
    frac_shell = frac[shell]
    if cfg.shell_edge_only:  # a bright shell voxel beside another further out: a structure going on past the lesion
        beyond = dilate_box(region | shell, (1, 1, 1)) & ~region & ~shell & organ & bright
        frac_shell = np.where((dilate_box(beyond, (1, 1, 1)) & bright)[shell], 0.0, frac_shell)
    voxels = pure + float(frac[region & ~inner].sum() + frac_shell.sum())
    return voxels, region | shell, box


def _wider_box(c: Component, shape: Sequence[int], spacing_zyx: Sequence[float],
               mm: float) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """A box reaching ``mm`` beyond component ``c`` and holding ``c.box``, and where ``c.box`` lies in it."""
    hit = np.argwhere(c.comp)
    lo = [max(0, min(b.start, b.start + int(h) - math.ceil(mm / s) - 1)) for b, h, s in zip(c.box, hit.min(0), spacing_zyx)]
    hi = [min(n, max(b.stop, b.start + int(h) + math.ceil(mm / s) + 2)) for b, h, s, n in zip(c.box, hit.max(0), spacing_zyx, shape)]
    return tuple(slice(a, b) for a, b in zip(lo, hi)), tuple(slice(b.start - a, b.stop - a) for b, a in zip(c.box, lo))


def _pasted(a: np.ndarray, inner: tuple[slice, ...], shape: Sequence[int], fill: bool) -> np.ndarray:
    """Boolean ``a`` at ``inner`` of a new array of ``shape``, ``fill`` elsewhere."""
    out = np.full(tuple(shape), fill, dtype=bool)
    out[inner] = a
    return out


@dataclass(frozen=True)
class Growth:
    """One growth of :func:`grown`'s region and what it was grown against."""

    region: np.ndarray  # the region, in its box
    bright: np.ndarray  # the box's voxels past the region's threshold
    background: float  # the organ's intensity around the lesion
    noise: float  # its robust noise SD
    sign: float  # +1 where the lesion is brighter than its organ, else -1
    level: float  # the lesion's level (its ground glass for a part-solid one)
    glass: float | None  # the ground-glass level of a part-solid lesion
    calcified: float | None  # a partly calcified lesion: the intensity above which its voxels are calcification
    stopped: float  # share of the organ's voxels just outside the region past its threshold and beyond the reach


def _grow(comp: np.ndarray, img: np.ndarray, host: np.ndarray, organ: np.ndarray, dist: np.ndarray, reach: float,
          cfg: LesionVolume) -> Growth | None:
    """One growth of :func:`grown`'s region, to ``reach`` mm from the component ``comp`` (``dist``: the distance to it).

    None where it cannot be told: too little organ around it, or too little contrast.
    """
    ring = (dist > max(GROWN_RING_MM[0], reach)) & (dist < max(GROWN_RING_MM[1], reach + 4.0)) & host
    found = background(img, ring, comp)
    if found is None:
        return None
    bg, noise, sign = found
    vals = img[comp]
    has_calcium, calcified = calcification(img, comp, vals, dist, cfg.calcium, noise) if sign > 0 else (False, None)
    if calcified is not None:
        vals = vals[vals <= calcified]  # the level of its soft tissue
    level = float(np.percentile(vals, cfg.level if sign > 0 else 100.0 - cfg.level))
    if (level - bg) * sign < cfg.grow_contrast * noise:
        return None
    # A calcified lesion is no part-solid one (whose solid part is soft tissue): the band holds its partial rim, which
    # on thick slices is most of a small nodule.
    glass = _ground_glass(vals, bg, level, cfg.ground_glass_share) if sign > 0 and not has_calcium else None
    if glass is not None:
        level = glass
    allowed = comp | ((dist <= reach) & organ)
    bright = (img - (bg + level) / 2) * sign > 0  # past halfway from the background to the level
    above = allowed & bright
    cc = cc3d.connected_components(above, connectivity=6)
    ids = np.unique(cc[comp & above])
    ids = ids[ids > 0]
    if not len(ids):
        return None
    region = np.isin(cc, ids)
    outside = dilate_box(region, (1, 1, 1)) & ~region & organ
    n_out = int(np.count_nonzero(outside))
    stopped = float(np.count_nonzero(outside & bright & (dist > reach))) / n_out if n_out else 0.0
    return Growth(region, bright, bg, noise, sign, level, glass, calcified, stopped)



GLASS_BAND = (0.2, 0.65)  # where ground glass lies, as a fraction of the way from the background to the solid level


def _ground_glass(vals: np.ndarray, bg: float, level: float, share: float) -> float | None:
    """The ground-glass level of a part-solid lesion (the median of its intensities in :data:`GLASS_BAND`), or None.

    None unless ``share`` > 0 and at least that share of ``vals`` lies in the band: a solid lesion's partial-volume
    rim spreads thinly over the band, a part-solid one's ground glass fills it.
    """
    if share <= 0 or level <= bg:
        return None
    rel = (vals - bg) / (level - bg)
    band = (rel >= GLASS_BAND[0]) & (rel <= GLASS_BAND[1])
    return float(np.median(vals[band])) if np.count_nonzero(band) and float(band.mean()) >= share else None


def _without_attachments(region: np.ndarray, comp: np.ndarray, cfg: LesionVolume, spacing_zyx: Sequence[float]) -> np.ndarray:
    """``region`` less what an opening detaches from the lesion: vessels and strands thinner than the ball (``cfg.open_mm``).

    The region is eroded by the ball; the eroded piece that overlaps the
    network's component most is the lesion's body; the body dilated by the
    ball (the opening) is kept, and of the rest what ``cfg.open_rim``
    gives back: the rim that the opening of a round lesion shaves off on a
    coarse grid.  ``ball`` dilates the opened body by the ball again, within
    the region (a vessel keeps a stub one ball radius long); ``adjacent``
    gives back each piece taken off that lies wholly within one voxel step
    of the opened body (a rim), and none of a piece that reaches further
    (an attachment).
    """
    r_eq = (3.0 * np.count_nonzero(region) * float(np.prod(spacing_zyx)) / (4.0 * math.pi)) ** (1.0 / 3.0)
    radius = min(cfg.open_mm, cfg.open_fraction * r_eq)
    if radius < max(spacing_zyx):
        return region  # a flat ball: it would shave whole slices off a lesion's caps
    r2 = radius**2 + 1e-6
    # Ball erosion and dilation as ai.shape does them (sq_distance); the pad makes the box's edge erode as outside.
    # The erosion runs on the region with its enclosed holes filled: in a noisy, faint lesion (ground glass at 50-80
    # HU of noise) single voxels below the threshold are scattered all through it, and a ball erodes away everything
    # within its radius of any of them.
    from scipy import ndimage

    solid = ndimage.binary_fill_holes(region)
    eroded = (sq_distance(~np.pad(solid, 1), radius, spacing_zyx) > r2)[1:-1, 1:-1, 1:-1]
    pieces, n = cc3d.connected_components(eroded, connectivity=6, return_N=True)
    if n == 0:
        return region
    overlap = np.bincount(pieces[comp].ravel(), minlength=n + 1)
    overlap[0] = 0
    if overlap.max() == 0:
        return region
    body = (sq_distance(pieces == int(overlap.argmax()), radius, spacing_zyx) <= r2) & region
    if cfg.open_rim == "adjacent":
        removed = region & ~body
        taken = cc3d.connected_components(removed, connectivity=26)
        far = np.unique(taken[removed & ~dilate_box(body, (1, 1, 1))])
        return np.asarray(body | (removed & ~np.isin(taken, far[far > 0])))
    return np.asarray((sq_distance(body, radius, spacing_zyx) <= r2) & region)


def probability_volume(c: Component, prob: np.ndarray, free: np.ndarray, threshold: float, half: Sequence[int]) -> float:
    """Lesion voxels as the sum of the lesion's probability over it and its tail (``free`` as for partial volume)."""
    p = prob[c.box]
    tail = dilate_box(c.comp, half) & ~c.comp & free & (p < threshold)
    return float(p[c.comp].sum() + p[tail].sum())
