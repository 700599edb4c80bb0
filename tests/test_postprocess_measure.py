"""Post-processing and measurements on analytic shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ai.measure import max_diameter_mm, measure
from ai.postprocess import fill_holes, keep_largest, keep_within, remove_small, to_labels


def sphere(shape: tuple[int, int, int], centre_mm: tuple[float, float, float], radius_mm: float, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    z, y, x = np.indices(shape).astype(float)
    d2 = ((z * spacing_zyx[0] - centre_mm[0]) ** 2 + (y * spacing_zyx[1] - centre_mm[1]) ** 2 + (x * spacing_zyx[2] - centre_mm[2]) ** 2)
    return d2 <= radius_mm**2


@pytest.mark.parametrize("spacing_zyx", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8)])
def test_sphere_volume_and_diameter_within_2_percent(spacing_zyx: tuple[float, float, float]) -> None:
    r = 15.0
    shape = tuple(int(60 / s) for s in spacing_zyx)
    mask = sphere(shape, (30.0, 30.0, 30.0), r, spacing_zyx)  # type: ignore[arg-type]
    labels = mask.astype(np.uint8) * 2
    image = np.where(mask, 40.0, -1000.0)
    [lesion_label] = measure(labels, spacing_zyx[::-1], {2: "nodule"}, image=image, lesion_values=[2])
    true_ml = 4 / 3 * np.pi * r**3 / 1000
    assert lesion_label.volume_ml == pytest.approx(true_ml, rel=0.02)
    assert lesion_label.mean == pytest.approx(40.0) and lesion_label.std == pytest.approx(0.0)
    [les] = lesion_label.lesions
    assert les.max_diameter_mm == pytest.approx(2 * r, rel=0.02)


def test_lesions_are_counted_and_sorted() -> None:
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[sphere((40, 40, 40), (10, 10, 10), 4, (1, 1, 1))] = 1
    labels[sphere((40, 40, 40), (28, 28, 28), 7, (1, 1, 1))] = 1
    [m] = measure(labels, (1, 1, 1), {1: "nodule"}, lesion_values=[1])
    assert len(m.lesions) == 2 and m.lesions[0].max_diameter_mm > m.lesions[1].max_diameter_mm
    # Each lesion names the slices it lies on (the SR's source-image references come from here, not from a recount).
    for les in m.lesions:
        zs = np.flatnonzero(labels.any(axis=(1, 2)) & (np.abs(np.arange(40) - les.centroid_voxel[0]) < 10))
        assert les.slices == (int(zs.min()), int(zs.max()) + 1)


def test_keep_largest_remove_small_fill_holes() -> None:
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:20, 2:20, 2:20] = 1
    labels[8:12, 8:12, 8:12] = 0  # a hole
    labels[25:27, 25:27, 25:27] = 1  # a small island
    labels[24:29, 0:3, 0:3] = 2
    assert (keep_largest(labels, [1])[25:27, 25:27, 25:27] == 0).all()
    assert (remove_small(labels, 10)[25:27, 25:27, 25:27] == 0).all()
    assert (remove_small(labels, 10)[24:29, 0:3, 0:3] == 2).all()
    filled = fill_holes(labels, [1])
    assert (filled[8:12, 8:12, 8:12] == 1).all() and (filled[0] == 0).all()


def test_argmax_and_threshold() -> None:
    scores = torch.zeros(3, 2, 2, 2)
    scores[0] = 0.5
    scores[1, 0] = 0.6
    scores[2, 1] = 0.4
    assert to_labels(scores).tolist()[0] == [[1, 1], [1, 1]]
    assert to_labels(scores, threshold=0.3)[1].tolist() == [[2, 2], [2, 2]]
    assert to_labels(scores, threshold=0.7).max() == 0


def test_diameter_of_an_empty_mask() -> None:
    assert max_diameter_mm(np.zeros((3, 3, 3), bool), (1, 1, 1)) == 0.0


def test_label_and_detection_thresholds_find_faint_lesions_without_inflating_others() -> None:
    shape = (20, 20, 20)
    p = np.zeros((3, *shape), dtype=np.float32)
    p[0] = 1.0
    p[2][2:8, 2:8, 2:8] = 0.4  # a confident lesion: argmax says background, the label threshold 0.35 takes it
    p[2][3:7, 3:7, 3:7] = 0.6
    p[2][14:17, 14:17, 14:17] = 0.06  # a faint one: found by the detection threshold, its core kept
    p[2][15, 15, 15] = 0.1
    scores = torch.from_numpy(p)
    plain = to_labels(scores)
    assert not (plain == 2).any()
    labelled = to_labels(scores, label_thresholds={2: 0.35})
    assert (labelled == 2).sum() == 6**3 and not (labelled[14:17, 14:17, 14:17] == 2).any()
    found = to_labels(scores, label_thresholds={2: 0.35}, detection_thresholds={2: 0.05})
    assert (found[2:8, 2:8, 2:8] == 2).all() and (found == 2).sum() == 6**3 + 27  # core: >= half of 0.1
    assert to_labels(scores, label_thresholds={2: 0.35}, detection_thresholds={2: 0.2}).sum() == labelled.sum()


def test_lesions_away_from_their_organ_are_dropped() -> None:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:10, 2:10, 2:10] = 1  # lung
    labels[5:7, 5:7, 10:12] = 2  # nodule on the lung's wall: kept
    labels[15:17, 15:17, 15:17] = 2  # "nodule" on the table: dropped
    out = keep_within(labels, child=2, parent=1, margin=2)
    assert (out[5:7, 5:7, 10:12] == 2).all() and not (out[15:17, 15:17, 15:17] == 2).any()
    assert (out == 1).sum() == (labels == 1).sum()
