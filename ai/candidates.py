"""Lesion candidates judged by a small classifier: the false-positive reduction stage of a CAD system.

The network's lesion components are *candidates*.  Each one is described by
a few numbers that a radiologist would also look at: its size and shape
(a vessel is long, a nodule round), its density against the lung around it,
how much soft tissue it touches (a vessel cross-section continues on both
sides, a hilar lymph node sits in the mediastinum, a nodule sits in air),
how much lung surrounds it and where it lies in the chest (the hila are
medial and mid-height), and how sure the network was.  A logistic regression
on those numbers, fitted on phantoms that trained neither the network nor
anything else (``scripts/train_candidate_classifier.py``), gives each
candidate a probability; candidates under the bundle's cut go to the organ
around them, and the most probable kept one gives the scan its score.

``candidates`` in a bundle's manifest (under ``postprocessing``)::

    "candidates": {"3": {"features": ["log_volume", ...], "mean": [...], "scale": [...],
                         "weights": [...], "bias": -1.2, "cut": 0.3, "core_threshold": 0.35, "fitted_on": "..."}}

Candidates are cut at a low probability, so that faint nodules become
candidates at all; with ``core_threshold`` a kept candidate then keeps only
its voxels of at least that probability (or at least half its peak, when
that is lower), so that its outline and volume are not those of the loose
candidate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np

from ai.boosted_trees import BoostedTrees, TreesError
from ai.boosted_trees import from_manifest as boosted_from_manifest
from ai.errors import AIError
from ai.lesion_volume import GROWN_RING_MM, background
from ai.measure import LabelMeasurement
from ai.postprocess import border_fraction, components
from ai.shape import shape_of, sq_distance, surrounding_label

logger = logging.getLogger(__name__)

FEATURES = (
    "log_volume",  # log of the component's volume, mm3
    "peak",  # the network's highest probability in it
    "mean_prob",  # and its mean
    "log_elongation",  # log of longest / shortest axis of its ellipsoid (ai.shape)
    "fill",  # volume / ellipsoid volume: low for bent or branching tubes
    "border_lung",  # share of its one-voxel shell in a lung
    "hu_median",  # its median density, HU
    "contrast_noise",  # (median - the lung 4-8 mm away) / that lung's noise SD, clipped to +-50
    "attached",  # share of the 2-5 mm shell around it denser than -500 HU (vessels, wall, mediastinum)
    "lung_context",  # share of lung within 15 mm of its centre
    "medial",  # |left-right offset from the lungs' midline| / their half width (0: midline, 1: the ribs)
    "height",  # cranio-caudal position within the lungs (0: base, 1: apex)
    "slice_mm",  # the coarsest voxel spacing
    "mediastinum_mm",  # distance of its centre from the mediastinum (the gap between the lungs), mm, at most 100
    "above_blood",  # its median density minus the blood's (the mediastinum's), HU: about 0 for a vessel, contrast or not
)
RING_MM = GROWN_RING_MM  # the lung background of the contrast: 4-8 mm away, as for ai.measure's grown regions
SHELL_MM = (2.0, 5.0)  # where attached soft tissue is looked for
CONTEXT_MM = 15.0
SOFT_TISSUE_HU = -500.0
CONTRAST_CLIP = 50.0
MEDIASTINUM_CLIP_MM = 100.0  # mediastinum_mm at most this (also where no two lungs show a mediastinum)
BLOOD_HU = (0.0, 600.0)  # the mediastinum's voxels that are blood, heart or vessel wall (not fat, air nor cortex)
BLOOD_DEFAULT_HU = 40.0  # unenhanced blood: where no mediastinum shows
BLOOD_MIN_VOXELS = 200
MAX_CANDIDATES = 200  # judged per lesion label and scan; a chest CT has far fewer (about 3 in the default model's phantoms)


class CandidateError(AIError):
    """A manifest's ``candidates`` entry is malformed."""


@dataclass(frozen=True)
class CandidateModel:
    """A classifier over :data:`FEATURES` and its cut: a logistic regression (on features standardised by ``mean``
    and ``scale``), or, with ``trees``, gradient-boosted trees (:mod:`ai.boosted_trees`) on the raw features."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    cut: float
    core_threshold: float | None = None
    trees: BoostedTrees | None = None

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(nodule) of each row of ``x`` (one column per :attr:`features`)."""
        if self.trees is not None:
            logit = self.trees.log_odds(np.asarray(x, dtype=np.float64).reshape(-1, len(self.features)))
        else:
            z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
            logit = z @ np.asarray(self.weights) + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50))))

    def as_manifest(self, fitted_on: str) -> dict[str, Any]:
        """The manifest entry of this model."""
        core = {} if self.core_threshold is None else {"core_threshold": self.core_threshold}
        if self.trees is not None:
            return {"features": list(self.features), "trees": self.trees.as_manifest(), "cut": self.cut, **core, "fitted_on": fitted_on}
        return {"features": list(self.features), "mean": [round(v, 6) for v in self.mean],
                "scale": [round(v, 6) for v in self.scale], "weights": [round(v, 6) for v in self.weights],
                "bias": round(self.bias, 6), "cut": self.cut, **core, "fitted_on": fitted_on}


def from_manifest(entry: Mapping[str, Any], known: Sequence[str] = FEATURES) -> CandidateModel:
    """The :class:`CandidateModel` of one ``postprocessing.candidates`` entry (over the features ``known``).

    Raises
    ------
    CandidateError
        Unknown features, lengths that differ, or values that are not finite numbers.
    """
    if "trees" in entry:
        return _boosted(entry, known)
    try:
        feats = tuple(str(f) for f in entry["features"])
        cols = [tuple(float(v) for v in entry[k]) for k in ("mean", "scale", "weights")]
        bias, cut = float(entry["bias"]), float(entry["cut"])
        core = None if entry.get("core_threshold") is None else float(entry["core_threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CandidateError(f"candidates needs features, mean, scale, weights, bias and cut (or features, trees and cut): {exc}") from exc
    _known(feats, known)
    if any(len(c) != len(feats) for c in cols):
        raise CandidateError("candidates: features, mean, scale and weights must have the same length")
    if not all(math.isfinite(v) for c in cols for v in c) or not math.isfinite(bias) or not 0.0 <= cut <= 1.0:
        raise CandidateError("candidates: mean, scale, weights and bias must be finite, and cut within 0..1")
    if any(s <= 0 for s in cols[1]):
        raise CandidateError("candidates: every scale must be positive")
    _core(core)
    return CandidateModel(feats, cols[0], cols[1], cols[2], bias, cut, core)


def _boosted(entry: Mapping[str, Any], known: Sequence[str]) -> CandidateModel:
    """A ``candidates`` entry with ``trees``: gradient-boosted trees over ``features``."""
    try:
        feats = tuple(str(f) for f in entry["features"])
        cut = float(entry["cut"])
        core = None if entry.get("core_threshold") is None else float(entry["core_threshold"])
        trees = boosted_from_manifest(entry["trees"], len(feats))
    except (KeyError, TypeError, ValueError) as exc:
        raise CandidateError(f"candidates with trees needs features, trees and cut: {exc}") from exc
    except TreesError as exc:
        raise CandidateError(f"candidates: {exc}") from exc
    _known(feats, known)
    if not 0.0 <= cut <= 1.0:
        raise CandidateError(f"candidates: cut must be within 0..1, not {cut!r}")
    _core(core)
    return CandidateModel(feats, (), (), (), 0.0, cut, core, trees)


def _known(feats: Sequence[str], known: Sequence[str]) -> None:
    unknown = [f for f in feats if f not in known]
    if unknown:
        raise CandidateError(f"candidates has unknown features {unknown} (known: {', '.join(known)})")


def _core(core: float | None) -> None:
    if core is not None and not 0.0 < core <= 1.0:
        raise CandidateError(f"candidates: core_threshold must be within 0..1, not {core!r}")


@dataclass(frozen=True)
class Kept:
    """A candidate the classifier kept: its voxels (its core) in its box, and its probability."""

    box: tuple[slice, slice, slice]
    mask: np.ndarray
    probability: float

    def holds(self, voxel: Sequence[int]) -> bool:
        """Whether voxel ``[z, y, x]`` (of the volume) is one of its voxels."""
        local = [int(v) - b.start for v, b in zip(voxel, self.box)]
        return all(0 <= v < n for v, n in zip(local, self.mask.shape)) and bool(self.mask[tuple(local)])


@dataclass(frozen=True)
class _Lungs:
    """Where the lungs are, in patient mm: the left-right midline and half width, and the cranio-caudal range."""

    mid_x: float
    half_width: float
    z_low: float
    z_high: float


def _lungs(labels: np.ndarray, organs: Sequence[int], spacing_zyx: np.ndarray, direction: np.ndarray) -> _Lungs | None:
    pts = np.argwhere(np.isin(labels[::2, ::2, ::2], organs)) * 2
    if not len(pts):
        return None
    patient = _to_patient(pts, spacing_zyx, direction)
    lo, hi = patient.min(axis=0), patient.max(axis=0)
    return _Lungs(float(lo[0] + hi[0]) / 2, max(float(hi[0] - lo[0]) / 2, 1.0), float(lo[2]), max(float(hi[2]), float(lo[2]) + 1.0))


def _facing_edges(labels: np.ndarray, right: int, left: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per ``[z, y]`` row, the last voxel of the organ on the image's left and the first of the one on its right
    (whichever of ``right`` and ``left`` each is), and whether the row holds both with a gap between them."""
    a, b = labels == right, labels == left
    xs = np.arange(labels.shape[2])
    ca, cb = a.sum(axis=(0, 1)), b.sum(axis=(0, 1))
    if not ca.any() or not cb.any():
        return None
    if float(ca @ xs) / float(ca.sum()) > float(cb @ xs) / float(cb.sum()):
        a, b = b, a  # a: the organ on the image's left
    w = labels.shape[2]
    a_edge = (w - 1) - np.argmax(a[..., ::-1], axis=2)  # argmax of booleans: no volume-sized index array
    b_edge = np.argmax(b, axis=2)
    return a_edge, b_edge, a.any(axis=2) & b.any(axis=2) & (b_edge > a_edge + 1)


def mediastinum(labels: np.ndarray, right: int, left: int) -> np.ndarray:
    """The voxels between two organs (the lungs), row by row: on each ``[z, y]`` row that holds both, those between
    the facing edges of the two, whichever side of the image each lies on.  Where the hila are, the mediastinum is
    nearest."""
    edges = _facing_edges(labels, right, left)
    if edges is None:
        return np.zeros(labels.shape, dtype=bool)
    a_edge, b_edge, both = edges
    xs = np.arange(labels.shape[2])
    return both[..., None] & (xs > a_edge[..., None]) & (xs < b_edge[..., None])


def _mediastinum_edges(labels: np.ndarray, organs: Sequence[int], spacing_zyx: np.ndarray) -> np.ndarray | None:
    """The mediastinum's two lateral edges on every second row and slice, in mm (``[z, y, x]`` times the spacing), or
    ``None`` without two organs: a candidate's distance from the mediastinum is its distance from the nearest."""
    if len(organs) != 2:
        return None
    edges = _facing_edges(labels[::2, ::2], organs[0], organs[1])
    if edges is None or not edges[2].any():
        return None
    a_edge, b_edge, both = edges
    z, y = np.nonzero(both)
    pts = np.concatenate([np.stack([2 * z, 2 * y, a_edge[z, y] + 1], axis=1), np.stack([2 * z, 2 * y, b_edge[z, y] - 1], axis=1)])
    return pts.astype(np.float64) * spacing_zyx


def blood_hu(labels: np.ndarray, image: np.ndarray, organs: Sequence[int]) -> float:
    """The blood's density in this scan, HU: the median of the mediastinum's voxels between 0 and 600 HU (on every
    second voxel), which the heart and the great vessels dominate; :data:`BLOOD_DEFAULT_HU` without a mediastinum.

    A vessel at the hilum is as dense as that, enhanced or not; a nodule is near it only without contrast.
    """
    if len(organs) != 2:
        return BLOOD_DEFAULT_HU
    sub = (slice(None, None, 2),) * 3
    between = mediastinum(labels[sub], organs[0], organs[1])
    vals = image[sub][between]
    vals = vals[(vals >= BLOOD_HU[0]) & (vals <= BLOOD_HU[1])]
    return float(np.median(vals)) if vals.size >= BLOOD_MIN_VOXELS else BLOOD_DEFAULT_HU


def _to_patient(idx_zyx: np.ndarray, spacing_zyx: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Patient (LPS) mm of voxel indices ``[z, y, x]``, origin at voxel 0."""
    xyz = np.asarray(idx_zyx, dtype=np.float64)[:, ::-1] * spacing_zyx[::-1]
    return np.asarray(xyz @ np.asarray(direction, dtype=np.float64).T)


def features(
    labels: np.ndarray, value: int, prob: np.ndarray, image: np.ndarray, spacing_zyx: Sequence[float],
    direction: np.ndarray, organs: Sequence[int],
) -> tuple[list[tuple[tuple[slice, slice, slice], np.ndarray]], np.ndarray]:
    """Each component of ``value`` (26-connected) in its box, and its row of :data:`FEATURES`.

    Parameters
    ----------
    labels : ndarray ``[z, y, x]``
        The post-processed label map.
    value : int
        The lesion label.
    prob : ndarray
        That label's probability on the same grid.
    image : ndarray
        The source intensities (HU) on the same grid.
    spacing_zyx : sequence of float
        Voxel spacing in mm.
    direction : ndarray
        The 3x3 direction cosines (columns: the array's x, y, z axes in LPS).
    organs : sequence of int
        The labels of the organ the lesions lie in (the lungs).

    Returns
    -------
    (list, ndarray)
        ``(box, voxels in box)`` of each component, and a ``(components, len(FEATURES))`` array.
    """
    s = np.asarray(spacing_zyx, dtype=np.float64)
    sp = [float(v) for v in s]
    lungs = _lungs(labels, organs, s, direction)
    gap = _mediastinum_edges(labels, organs, s) if (labels == value).any() else None
    blood = blood_hu(labels, image, organs) if gap is not None else BLOOD_DEFAULT_HU
    pad = [int(math.ceil(CONTEXT_MM / v)) + 1 for v in s]
    comps: list[tuple[tuple[slice, slice, slice], np.ndarray]] = []
    rows: list[list[float]] = []
    for _, box, comp in components(labels == value, pad):
        lab, img = labels[box], image[box].astype(np.float64)
        organ = np.isin(lab, organs)
        vals, p = img[comp], prob[box][comp].astype(np.float64)
        shape = shape_of(comp, sp)
        d2 = sq_distance(comp, CONTEXT_MM, sp)
        ring = (d2 > RING_MM[0] ** 2) & (d2 <= RING_MM[1] ** 2) & organ
        median = float(np.median(vals))
        found = background(img, ring, comp)
        if found is not None:
            bg, noise, _ = found
            cnr = float(np.clip((median - bg) / max(noise, 1.0), -CONTRAST_CLIP, CONTRAST_CLIP))
        else:
            cnr = CONTRAST_CLIP  # nothing of the organ around it: as far from lung as a lesion gets
        shell = (d2 > SHELL_MM[0] ** 2) & (d2 <= SHELL_MM[1] ** 2)
        attached = float(np.mean(img[shell] > SOFT_TISSUE_HU)) if shell.any() else 1.0
        near = d2 <= CONTEXT_MM**2
        context = float(np.mean(organ[near] | (lab[near] == value)))  # other candidates count as organ: judging one leaves this as is
        centre = np.argwhere(comp).mean(axis=0) + [b.start for b in box]
        if lungs is not None:
            c = _to_patient(centre[None, :], s, direction)[0]
            medial = abs(float(c[0]) - lungs.mid_x) / lungs.half_width
            height = (float(c[2]) - lungs.z_low) / (lungs.z_high - lungs.z_low)
        else:
            medial, height = 0.5, 0.5
        hilum = MEDIASTINUM_CLIP_MM
        if gap is not None:
            hilum = min(float(np.sqrt(((gap - centre * s) ** 2).sum(axis=1).min())), MEDIASTINUM_CLIP_MM)
        rows.append([
            math.log(max(shape.volume_mm3, 1e-3)), float(p.max()), float(p.mean()), math.log(max(shape.elongation, 1.0)),
            float(shape.fill), border_fraction(comp, organ), median, cnr, attached, context, medial, height, float(s.max()),
            hilum, median - blood,
        ])
        comps.append((box, comp))
    return comps, np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))


def judge(
    labels: np.ndarray, value: int, prob: np.ndarray, image: np.ndarray, spacing_zyx: Sequence[float], direction: np.ndarray,
    organs: Sequence[int], model: CandidateModel, lesion_values: Sequence[int] = (),
) -> tuple[np.ndarray, list[Kept]]:
    """Drop the candidates of ``value`` that ``model`` puts under its cut; the probabilities of those kept.

    A dropped candidate's voxels take the label around it (lung, for a
    vessel in a lung), never another lesion label; so do a kept one's voxels
    outside its core, with a ``core_threshold``.

    At most :data:`MAX_CANDIDATES` are judged, those the network was
    surest of: a scan (or a hostile input) that breaks into thousands of
    specks costs a bounded time, and the rest are dropped unjudged.

    Returns
    -------
    (ndarray, list of Kept)
        The new label map, and the kept candidates.
    """
    labels = _at_most(labels, value, prob, MAX_CANDIDATES, [value, *lesion_values])
    comps, x = features(labels, value, prob, image, spacing_zyx, direction, organs)
    if not comps:
        return labels, []
    cols = [FEATURES.index(f) for f in model.features]
    p = model.probability(x[:, cols])
    out = labels.copy()
    kept: list[Kept] = []
    for (box, comp), pk in zip(comps, p):
        drop = comp
        if pk >= model.cut:
            drop = np.zeros_like(comp)
            if model.core_threshold is not None:
                prob_box = prob[box]
                peak = float(prob_box[comp].max())
                drop = comp & (prob_box < min(model.core_threshold, 0.5 * peak))  # outside its core
            kept.append(Kept(box, comp & ~drop, float(pk)))
            if not drop.any():
                continue
        view = out[box]
        view[drop] = surrounding_label(labels[box], comp, [value, *lesion_values])
    logger.info("label %d: the candidate classifier kept %d of %d candidates (cut %g)", value, len(kept), len(comps), model.cut)
    return out, kept


def _at_most(labels: np.ndarray, value: int, prob: np.ndarray, limit: int, lesion_values: Sequence[int]) -> np.ndarray:
    """``labels`` with only the ``limit`` components of ``value`` of highest peak probability; the others go to the label around."""
    cc, n = cc3d.connected_components(labels == value, connectivity=26, return_N=True)
    if n <= limit:
        return labels
    peaks = np.zeros(n + 1)
    inside = cc > 0
    np.maximum.at(peaks, cc[inside], prob[inside])
    peaks[0] = np.inf
    dropped = np.zeros(n + 1, dtype=bool)
    dropped[np.argsort(peaks)[: n - limit]] = True  # the least probable (never 0, the background: its peak is inf)
    logger.warning("label %d: %d candidates, more than %d; the %d least probable were dropped unjudged", value, n, limit, n - limit)
    from scipy import ndimage  # only here, as in ai.measure

    mask = dropped[cc]
    host = np.where(np.isin(labels, lesion_values), 0, labels)
    for _ in range(4):  # each speck takes the (largest) label around it, a voxel a step: one loop for thousands of them
        host = np.where(mask & (host == 0), ndimage.grey_dilation(host, size=(3, 3, 3)), host)
    out = labels.copy()
    out[mask] = host[mask]
    return out


def with_probabilities(measurements: Sequence[LabelMeasurement], kept: Mapping[int, Sequence[Kept]]) -> list[LabelMeasurement]:
    """``measurements`` with each lesion of a judged label carrying the probability of the candidate it came from."""
    out = []
    for m in measurements:
        verdicts = kept.get(m.value)
        if verdicts is None or not m.lesions:
            out.append(m)
            continue
        lesions = []
        for les in m.lesions:
            voxel = _a_voxel(les)
            owner = next((k for k in verdicts if voxel is not None and k.holds(voxel)), None)
            lesions.append(dataclasses.replace(les, probability=owner.probability if owner is not None else None))
        out.append(dataclasses.replace(m, lesions=lesions))
    return out


def _a_voxel(lesion: Any) -> tuple[int, int, int] | None:
    """One voxel ``[z, y, x]`` of a lesion (None when it carries no voxels)."""
    if lesion.mask is None or lesion.box is None or not lesion.mask.any():
        return None
    z, y, x = (int(v) + b.start for v, b in zip(np.argwhere(lesion.mask)[0], lesion.box))
    return z, y, x
