"""The dot filter: a second candidate source that finds round spots in the lung and not tubes (ai.dot_candidates)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ai.bundle import BundleError, load_bundle
from ai.candidates import CandidateError, from_manifest
from ai.dot_candidates import DOT_FEATURES, DotSettings, Grid, grid, judge_dots, maxima, region, settings_from_manifest
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


def _grid(labels: np.ndarray, img: np.ndarray) -> Grid:
    g = grid(img, labels, np.zeros(labels.shape, np.float32), np.zeros(labels.shape, bool), SPACING, [1], _model())
    assert g is not None
    return g


def _at(g: Grid, voxel: tuple[int, int, int]) -> np.ndarray:
    """Source mm (z, y, x; voxel centres) of a grid voxel."""
    return np.array([(b.start + v / f + 0.5) * s for v, f, b, s in zip(voxel, g.per_voxel, g.box, SPACING)])


def test_the_nodule_is_the_strongest_round_spot_and_the_vessel_is_not_one() -> None:
    """The filter's strongest maximum is the nodule's centre (within a voxel), round; the vessel, a tube, gives no maximum
    near the nodule's strength (all three eigenvalues of a ball are alike, a tube has one near zero)."""
    labels, img = _scene()
    g = _grid(labels, img)
    assert g.image.shape == (40, 40, 40)  # 2 mm: 80 mm across
    found = maxima(g, g.labels == 1, _model())
    assert found, "no maximum at all"
    top = found[0]
    assert np.linalg.norm(_at(g, top.voxel) - NODULE_AT) <= 2.5, top
    assert top.roundness > 0.5 and top.dot > 100.0, top  # measured 144 for the 890 HU contrast, about a sixth of it
    on_vessel = [m for m in found if abs(_at(g, m.voxel)[2] - 60.0) < 5.0]
    assert all(m.dot < top.dot / 3 for m in on_vessel), on_vessel[:3]


def test_the_region_of_a_nodule_is_its_own_volume() -> None:
    """Half way from the lung to the nodule's peak, connected to its centre: about the sphere, on the 2 mm grid and back
    on the source grid, where it is where the nodule is."""
    labels, img = _scene()
    g = _grid(labels, img)
    top = maxima(g, g.labels == 1, _model())[0]
    got = region(g, g.labels == 1, np.zeros(g.labels.shape, bool), top)
    assert got is not None
    box, comp = got
    truth = math.pi / 6 * NODULE_D**3
    volume = float(comp.sum()) * 2.0**3  # on the grid (measured: -4.5 %)
    assert abs(volume - truth) / truth < 0.15, (volume, truth)
    sbox, mask = g.to_source(box, comp)  # on the source grid (the same)
    volume = float(mask.sum()) * math.prod(SPACING)
    assert abs(volume - truth) / truth < 0.15, (volume, truth)
    centre = (np.argwhere(mask).mean(axis=0) + [b.start for b in sbox] + 0.5) * SPACING
    assert np.linalg.norm(centre - NODULE_AT) <= 1.5, centre


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
    g = _grid(labels, img)
    assert maxima(g, np.zeros(g.labels.shape, bool), _model()) == []
    assert grid(img, labels, img, labels > 0, SPACING, [2], _model()) is None  # no organ: no grid
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


def test_the_shipped_bundle_does_not_use_it() -> None:
    """Fitted for the default bundle, it found 5 more of 105 validation nodules at no added false positive, but added
    0.44 false positives per scan on the independent family for 2 more of 64 nodules (docs/models.md): not shipped."""
    from tests.test_default_bundle import BUNDLE

    assert load_bundle(BUNDLE).dot_candidates == {}


def test_the_engine_adds_what_the_network_missed_once(tmp_path: Path) -> None:
    """Post-processing with ``dot_candidates``: a nodule the network did not label is found, labelled and carries the dot
    model's probability; one the network did label is not found a second time."""
    from ai.engine import Engine

    entry = {"model": {**_model().model.as_manifest("a test"), "fitted_on": "a test"}, "min_dot": 20}
    engine = Engine(load_bundle(_three_labels(tmp_path, postprocessing__dot_candidates={"3": entry})), device="cpu")
    labels, img = _scene()
    scores = np.zeros((4, *labels.shape), np.float32)
    scores[1] = 1.0  # the network saw lung everywhere, and no nodule
    spacing_xyz = (SPACING[2], SPACING[1], SPACING[0])
    out, kept = engine.postprocess(scores, spacing_xyz, image=img, direction=np.eye(3))
    assert len(kept[3]) == 1 and kept[3][0].probability >= 0.5
    centre = (np.argwhere(out == 3).mean(axis=0) + 0.5) * SPACING
    assert np.linalg.norm(centre - NODULE_AT) <= 1.5
    volume = float((out == 3).sum()) * math.prod(SPACING)
    assert 0.6 < volume / (math.pi / 6 * NODULE_D**3) < 1.4
    seen = scores.copy()
    seen[3][out == 3], seen[1][out == 3] = 1.0, 0.0  # now the network found it
    again, kept_again = engine.postprocess(seen, spacing_xyz, image=img, direction=np.eye(3))
    assert kept_again[3] == [] and np.array_equal(again == 3, out == 3)
    assert engine.postprocess(scores, spacing_xyz)[1] == {}  # no image: no candidates of either kind
