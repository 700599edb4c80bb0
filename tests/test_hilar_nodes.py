"""Hilar lymph nodes in the training-family phantoms (:mod:`ai.phantoms.hilar_nodes`): soft tissue in the lung root
that is no nodule, drawn without changing anything else."""

from __future__ import annotations

import numpy as np
import pytest

import ai.phantoms.hilar_nodes as hn
from ai.phantoms import CONFOUNDER, generate
from ai.phantoms.lesions import Blob, NodulePlan
from ai.phantoms.mediastinum import Hilum
from ai.phantoms.records import NoduleKind, NoduleSite, Phantom


def _hilum(side: str, x: float) -> Hilum:
    return Hilum(side, np.array([x, -20.0, -80.0]), np.array([np.sign(x), 0.1, -0.8]), np.array([x, -30.0, -75.0]), 6.0,
                 (np.zeros(3), np.zeros(3)), 5.0, 6.5)


def _nodule_at(centre: np.ndarray, d_mm: float) -> NodulePlan:
    blob = Blob(np.asarray(centre, float), np.eye(3), np.full(3, d_mm / 2), np.zeros((0, 3)), np.zeros(0))
    return NodulePlan(blob, NoduleKind.SOLID, NoduleSite.ISOLATED, "sphere", "right", 30.0, None, 0.0, False,
                      np.pi / 6 * d_mm**3, np.asarray(centre, float))


def test_nodes_lie_along_the_bronchi_at_the_hila_and_clear_of_nodules() -> None:
    hila = {"right": _hilum("right", -40.0), "left": _hilum("left", 40.0)}
    counts = []
    for seed in range(300):
        caps = hn.hilar_nodes(np.random.default_rng(seed), hila, [])
        counts.append(len(caps))
        for a, b, r in zip(caps.a, caps.b, caps.ra):
            assert hn.RADIUS_MM[0] <= r <= hn.RADIUS_MM[1]
            assert np.linalg.norm(b - a) <= 0.8 * r + 1e-9  # ovoid, not a tube
            hil = min(hila.values(), key=lambda h: float(np.linalg.norm(a - h.bronchus)))
            along = float((a - hil.bronchus) @ (hil.bronchus_dir / np.linalg.norm(hil.bronchus_dir)))
            assert hn.ALONG_MM[0] - 1e-6 <= along <= hn.ALONG_MM[1] + 1e-6
            off = np.linalg.norm(a - hil.bronchus - along * hil.bronchus_dir / np.linalg.norm(hil.bronchus_dir))
            assert hil.bronchus_r + r + 1.0 - 1e-6 <= off <= hil.bronchus_r + r + 5.0 + 1e-6  # beside the bronchus, not in it
    assert set(counts) == {0, 1, 2, 3, 4, 5, 6} and 2.6 < np.mean(counts) < 3.4  # 0-3 per hilum
    # A nodule at the right hilum: no node comes within CLEAR_MM of it.
    plan = _nodule_at(hila["right"].bronchus + [-12.0, 0.0, -8.0], 14.0)
    for seed in range(200):
        caps = hn.hilar_nodes(np.random.default_rng(seed), hila, [plan])
        for a, b, r in zip(caps.a, caps.b, caps.ra):
            reach = r + float(np.linalg.norm(b - a))
            assert np.linalg.norm(a - plan.blob.centre) >= plan.blob.bound + reach + hn.CLEAR_MM


def changed_near_hila(a: Phantom, b: Phantom) -> tuple[np.ndarray, np.ndarray]:
    """Two renders of one phantom, with and without a lung-root structure: they must have the same labels and nodules.
    Returns the voxels whose image differs, and the distance (mm) of each from the nearer hilum."""
    assert np.array_equal(a.labels, b.labels)
    assert [n.centre_mm for n in a.nodules] == [n.centre_mm for n in b.nodules]
    changed = a.hu != b.hu
    assert changed.any()
    return changed, a.hilum_distance_mm(np.argwhere(changed)[:, ::-1])


@pytest.mark.parametrize("seed", [6005, 6010])
def test_nodes_change_only_the_lung_root_and_are_no_nodules(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same phantom without the nodes has the same labels and nodules; the image differs only near the hila, and
    where a node lies in the lung it is soft tissue labelled lung and marked a confounder (a hard negative)."""
    kw = {"matrix": 128, "slice_mm": (2.5, 2.5), "hard_negatives": True, "noise": False}
    with_nodes = generate(seed, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(hn, "NODES_PER_HILUM", (0, 0))
    without = generate(seed, **kw)  # type: ignore[arg-type]
    changed, near = changed_near_hila(with_nodes, without)
    reach = hn.ALONG_MM[1] + 1.8 * hn.RADIUS_MM[1] + 5.0 + 12.0  # along the bronchus, the node, the gap, the bronchus's radius
    assert near.max() < reach + 6.0  # plus the slices' blur
    in_lung = changed & (with_nodes.labels > 0) & (with_nodes.hu > -300)
    assert in_lung.sum() > 20  # some node lies in the lung
    assert with_nodes.structures is not None and without.structures is not None
    assert ((with_nodes.structures[in_lung] & CONFOUNDER) > 0).mean() > 0.8
    assert not (with_nodes.labels[changed] == 3).any()  # no node is a nodule
