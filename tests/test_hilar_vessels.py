"""Hilar vessel confluences in the training-family phantoms (:mod:`ai.phantoms.hilar_vessels`): the large vessels at the
lung root widen into ovals that are no nodule, drawn without changing anything else."""

from __future__ import annotations

import numpy as np
import pytest

import ai.phantoms.hilar_vessels as hv
from ai.phantoms import VESSEL, generate
from ai.phantoms.raster import Ch
from ai.phantoms.trees import Branches
from ai.phantoms.vessels import Bundle
from tests.test_hilar_nodes import _nodule_at, changed_near_hila


def _bundle(kind: str, root: np.ndarray, end: np.ndarray, r: float) -> Bundle:
    """A tree of a root branch (``root -> end``, radius ``r`` tapering to 0.9 r) and one child."""
    m = 4
    t = np.linspace(0.0, 1.0, m)[:, None]
    child_end = end + (end - root) * 0.8
    path = np.stack([root + (end - root) * t, end + (child_end - end) * t])
    radii = np.stack([r * np.linspace(1.0, 0.9, m), 0.7 * r * np.linspace(1.0, 0.9, m)])
    br = Branches(np.stack([root, end]), np.stack([end, child_end]), np.array([r, 0.7 * r]), np.array([-1, 0]),
                  np.array([0, 1]), np.zeros((2, 6)))
    return Bundle(f"right {kind}", "right", kind, br, path, radii, None, None)


def test_widenings_lie_on_the_root_branches_in_their_trees_channel_and_clear_of_nodules() -> None:
    root, end, r = np.array([-35.0, -20.0, -80.0]), np.array([-60.0, -25.0, -90.0]), 6.0
    bundles = [_bundle("artery", root, end, r), _bundle("vein", root + [0, 20, -20], end + [0, 20, -20], 5.0)]
    kept = []
    for seed in range(400):
        caps = hv.hilar_vessels(np.random.default_rng(seed), bundles, [])
        kept.append(len(caps))
        for a, b, ra, rb, ch in zip(caps.a, caps.b, caps.ra, caps.rb, caps.ch):
            assert ra == rb
            tree = bundles[0] if ch == Ch.ART else bundles[1]
            assert ch in (Ch.ART, Ch.VEIN)
            p0, p1 = tree.vessel_path[0, 0], tree.vessel_path[0, -1]
            d = (p1 - p0) / np.linalg.norm(p1 - p0)
            centre = (a + b) / 2
            along = float((centre - p0) @ d) / float(np.linalg.norm(p1 - p0))
            assert hv.ALONG[0] - 1e-9 <= along <= hv.ALONG[1] + 1e-9
            assert np.linalg.norm(centre - p0 - along * (p1 - p0)) < 1e-6  # on the branch's axis
            assert np.allclose(np.cross(b - a, d), 0.0, atol=1e-6)  # elongated along it
            base = float(np.interp(along, [0.0, 1.0], [tree.vessel_r[0, 0], tree.vessel_r[0, -1]]))
            assert hv.WIDTH[0] * base - 1e-6 <= ra <= hv.WIDTH[1] * base + 1e-6  # wider than the vessel: an oval
            assert np.linalg.norm(b - a) / 2 <= hv.HALF_LENGTH[1] * ra + 1e-6
    assert set(kept) == {0, 1, 2} and abs(np.mean(kept) / 2 - hv.CHANCE) < 0.06  # only root branches widen
    plan = _nodule_at((root + end) / 2 + [0.0, 4.0, 0.0], 12.0)
    for seed in range(200):
        caps = hv.hilar_vessels(np.random.default_rng(seed), bundles[:1], [plan])
        for a, b, ra in zip(caps.a, caps.b, caps.ra):
            reach = ra + float(np.linalg.norm(b - a)) / 2
            assert np.linalg.norm((a + b) / 2 - plan.blob.centre) >= plan.blob.bound + reach + hv.CLEAR_MM


@pytest.mark.parametrize("seed", [6005, 6010])
def test_widenings_change_only_the_lung_root_and_are_vessels_not_nodules(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same phantom without the widenings has the same labels and nodules; the image differs only near the hila,
    and where a widening lies in the lung it is labelled lung and marked a vessel (a hard negative)."""
    kw = {"matrix": 128, "slice_mm": (2.5, 2.5), "hard_negatives": True, "noise": False}
    monkeypatch.setattr(hv, "CHANCE", 1.0)
    widened = generate(seed, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(hv, "CHANCE", 0.0)
    plain = generate(seed, **kw)  # type: ignore[arg-type]
    changed, near = changed_near_hila(widened, plain)
    # The root branches run about 25-35 mm from the roots (which lie up to 45 mm from the bronchi's ends); the widening
    # reaches 2 x 1.9 x 7.2 mm beyond its centre, plus the slices' blur.
    assert near.max() < 45.0 + 35.0 + 2 * hv.WIDTH[1] * 7.2 + 6.0
    in_lung = changed & (widened.labels > 0) & (widened.hu > plain.hu + 400)  # lung turned vessel, not its blurred edge
    assert in_lung.sum() > 20  # some widening lies in the lung
    assert widened.structures is not None
    assert ((widened.structures[in_lung] & VESSEL) > 0).mean() > 0.8
    assert not (widened.labels[changed] == 3).any()  # no widening is a nodule
