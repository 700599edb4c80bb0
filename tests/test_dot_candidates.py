"""The dot filter: a second candidate source that finds round spots in the lung and not tubes (ai.dot_candidates)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ai.bundle import BundleError, load_bundle
from ai.candidates import CandidateError, from_manifest
from ai.dot_candidates import DOT_FEATURES, DotSettings, judge_dots, maxima, region, settings_from_manifest
from tests.test_anatomy import _three_labels

LUNG, SOFT = -850.0, 40.0
SPACING = (2.0, 1.0, 1.0)  # z, y, x mm
NODULE_AT, NODULE_D = (40.0, 30.0, 30.0), 8.0  # mm, z y x


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A lung block (label 1) with an 8 mm nodule and, 30 mm away, a vessel 4 mm across running the whole height.

    Returns the labels and the image (HU, noise 20 HU SD, partial volume on the boundaries).
    """
    shape = (40, 80, 80)
    sub = 3
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    nod = np.zeros(shape, np.float32)
    ves = np.zeros(shape, np.float32)
    for oz in offs:
        for oy in offs:
            for ox in offs:
                pos = (idx + [oz, oy, ox] + 0.5) * SPACING
                nod += np.linalg.norm(pos - NODULE_AT, axis=-1) <= NODULE_D / 2
                ves += np.hypot(pos[..., 1] - 30.0, pos[..., 2] - 60.0) <= 2.0
    nod /= sub**3
    ves = np.clip(ves / sub**3 - nod, 0, 1)
    img = LUNG + (SOFT - LUNG) * np.clip(nod + ves, 0, 1)
    img += np.random.default_rng(seed).normal(0, 20, shape)
    return np.ones(shape, np.uint8), img.astype(np.float32)


def _model(cut: float = 0.5) -> DotSettings:
    """A hand-set classifier: round and bright is a nodule."""
    entry = {"features": ["roundness", "dot"], "mean": [0.5, 100.0], "scale": [0.2, 100.0], "weights": [4.0, 2.0],
             "bias": -1.0, "cut": cut}
    return DotSettings(from_manifest(entry, known=DOT_FEATURES), min_dot=20.0)


def _at(voxel: tuple[int, int, int]) -> np.ndarray:
    return (np.asarray(voxel) + 0.5) * SPACING


def test_the_nodule_is_the_strongest_round_spot_and_the_vessel_is_not_one() -> None:
    """The filter's strongest maximum is the nodule's centre (within a voxel), round; the vessel, a tube, gives no maximum
    near the nodule's strength (all three eigenvalues of a ball are alike, a tube has one near zero)."""
    labels, img = _scene()
    found = maxima(img, SPACING, labels == 1, _model())
    assert found, "no maximum at all"
    top = found[0]
    assert np.linalg.norm(_at(top.voxel) - NODULE_AT) <= 2.5, top
    assert top.roundness > 0.5 and top.dot > 100.0, top  # measured 144 for the 890 HU contrast, about a sixth of it
    on_vessel = [m for m in found if abs(_at(m.voxel)[2] - 60.0) < 5.0]
    assert all(m.dot < top.dot / 3 for m in on_vessel), on_vessel[:3]


def test_the_region_of_a_nodule_is_its_own_volume() -> None:
    """Half way from the lung to the nodule's peak, connected to its centre: the sphere's volume within 25 %."""
    labels, img = _scene()
    top = maxima(img, SPACING, labels == 1, _model())[0]
    got = region(img, labels == 1, np.zeros(labels.shape, bool), top, SPACING)
    assert got is not None
    box, comp = got
    volume = float(comp.sum()) * math.prod(SPACING)
    truth = math.pi / 6 * NODULE_D**3
    assert abs(volume - truth) / truth < 0.25, (volume, truth)


def test_judge_keeps_the_nodule_and_not_the_vessel_nor_what_the_network_had() -> None:
    """The kept candidate is the nodule and is labelled; with the nodule excluded (the network's own candidate) none is."""
    labels, img = _scene()
    prob = np.zeros(labels.shape, np.float32)
    direction = np.eye(3)
    none = np.zeros(labels.shape, bool)
    out, kept = judge_dots(labels, 3, prob, img, SPACING, direction, [1], none, _model())
    assert len(kept) == 1, [k.probability for k in kept]
    centre = np.argwhere(out == 3).mean(axis=0)
    assert np.linalg.norm((centre + 0.5) * SPACING - NODULE_AT) <= 2.0
    assert not (out[:, :, 55:66] == 3).any(), "the vessel was called a nodule"
    excluded = np.zeros(labels.shape, bool)
    excluded[tuple(slice(int(c / s) - 4, int(c / s) + 5) for c, s in zip(NODULE_AT, SPACING))] = True
    out2, kept2 = judge_dots(labels, 3, prob, img, SPACING, direction, [1], excluded, _model())
    assert kept2 == [] and not (out2 == 3).any()


def test_no_organ_no_candidates_and_a_bounded_count() -> None:
    labels, img = _scene()
    assert maxima(img, SPACING, np.zeros(labels.shape, bool), _model()) == []
    noise = np.random.default_rng(3).normal(LUNG, 200, labels.shape).astype(np.float32)  # speckle: many maxima
    cfg = DotSettings(_model().model, min_dot=1.0, max_candidates=5)
    out, kept = judge_dots(labels, 3, np.zeros(labels.shape, np.float32), noise, SPACING, np.eye(3), [1],
                           np.zeros(labels.shape, bool), cfg)
    assert len(kept) <= 5


@pytest.mark.parametrize(("change", "message"), [
    ({"sigmas_mm": [0.1]}, "sigmas_mm"),
    ({"grid_mm": 9}, "grid_mm"),
    ({"max_candidates": 0}, "max_candidates"),
    ({"model": {"features": ["nonsense"], "mean": [0], "scale": [1], "weights": [1], "bias": 0, "cut": 0.5}}, "unknown features"),
])
def test_a_malformed_entry_says_what_is_wrong(change: dict[str, object], message: str) -> None:
    entry = {"sigmas_mm": [1.5, 2.5], "model": {"features": ["dot"], "mean": [0], "scale": [1], "weights": [1], "bias": 0,
                                                 "cut": 0.5}}
    assert settings_from_manifest(entry).sigmas_mm == (1.5, 2.5)
    with pytest.raises(CandidateError, match=message):
        settings_from_manifest({**entry, **change})


def test_a_bundle_refuses_a_malformed_dot_filter_in_words(tmp_path: Path) -> None:
    entry = {"model": {"features": ["dot", "colour"], "mean": [0, 0], "scale": [1, 1], "weights": [1, 1], "bias": 0, "cut": 0.5}}
    with pytest.raises(BundleError, match=r"postprocessing.dot_candidates\['3'\]: .*unknown features \['colour'\]"):
        load_bundle(_three_labels(tmp_path, postprocessing__dot_candidates={"3": entry}))


def test_the_shipped_bundle_looks_for_what_the_network_missed() -> None:
    from tests.test_default_bundle import BUNDLE

    b = load_bundle(BUNDLE)
    assert set(b.dot_candidates) == {3}
    cfg = b.dot_candidates[3]
    assert 0.0 < cfg.model.cut < 1.0 and set(cfg.model.features) <= set(DOT_FEATURES)
