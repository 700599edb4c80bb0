"""The false-positive census of bench/model_quality.py: where each false positive lies, its size and density."""

from __future__ import annotations

import numpy as np
import pytest
from bench.fp_census import FalsePositive, census, describe, mediastinum, montage
from bench.quality import NODULE, Scores, score_case
from PIL import Image

SPACING = (1.0, 1.0, 2.0)  # x, y, z mm


def _chest(flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two box lungs with a 30 mm mediastinum between them, on 1 x 1 x 2 mm voxels; ``flip``: the left lung on the
    image's left (a feet-first or prone scan)."""
    labels = np.zeros((20, 80, 140), np.uint8)
    labels[2:18, 10:70, 10:65] = 1
    labels[2:18, 10:70, 95:130] = 2
    if flip:
        labels = labels[:, :, ::-1].copy()
    hu = np.where(labels > 0, -850, 40).astype(np.int16)
    return labels, hu


def _ball(shape: tuple[int, ...], centre: tuple[int, int, int], r_mm: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - centre[0]) * 2.0) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r_mm**2


@pytest.mark.parametrize("flip", [False, True])
def test_the_mediastinum_is_the_gap_between_the_lungs(flip: bool) -> None:
    labels, _ = _chest(flip)
    med = mediastinum(labels)
    assert med.sum() == 16 * 60 * 30  # every row with both lungs, the 30 columns between them
    assert not (med & (labels > 0)).any()
    assert not med[:, :10].any() and not med[:, 70:].any()  # no lungs on the row: nothing between them


def test_false_positives_are_described_by_where_size_and_density() -> None:
    labels, hu = _chest()
    cc = np.zeros(labels.shape, np.int32)
    hilar = _ball(labels.shape, (10, 40, 58), 9.0)  # 7 mm from the mediastinum (x 65..94), 18 mm across: 3 mL
    far = _ball(labels.shape, (10, 40, 25), 4.0)  # 40 mm from it, 8 mm across
    dense = _ball(labels.shape, (10, 20, 110), 3.0)  # in the left lung, 15 mm from the mediastinum
    cc[hilar], cc[far], cc[dense] = 1, 2, 3
    hu[hilar | far] = 30
    hu[dense] = 600
    fps = describe(4, hu, labels, cc, [1, 2, 3], SPACING)
    assert [f.case for f in fps] == [4, 4, 4]
    a, b, c = fps
    assert a.hilar and not b.hilar and c.hilar
    assert a.mediastinum_mm == pytest.approx(7.0) and b.mediastinum_mm == pytest.approx(40.0)
    assert a.volume_ml == pytest.approx(4 / 3 * np.pi * 9**3 / 1000, rel=0.1)
    assert (a.size, b.size, c.size) == (">= 2 mL", "< 0.5 mL", "< 0.5 mL")
    assert (a.density, b.density, c.density) == ("soft tissue", "soft tissue", "dense")
    assert a.crop is not None and a.outline is not None and a.crop.shape == a.outline.shape == (60, 60)
    assert a.outline.sum() == hilar[10].sum()  # the crop is centred on it and holds its whole section


def test_census_counts_per_scan() -> None:
    fps = [FalsePositive(0, 3.0, 40.0, 5.0), FalsePositive(0, 0.1, -500.0, 50.0), FalsePositive(1, 0.8, 400.0, 12.0)]
    lines = census(fps, scans=4).splitlines()
    assert lines[0] == ("| false positives per scan | < 0.5 mL | 0.5-2 mL | >= 2 mL | faint | soft tissue | dense | all |")
    assert lines[2] == "| hilar (centre within 20 mm of the mediastinum) | 0.00 | 0.25 | 0.25 | 0.00 | 0.25 | 0.25 | 0.50 |"
    assert lines[3] == "| peripheral | 0.25 | 0.00 | 0.00 | 0.25 | 0.00 | 0.00 | 0.25 |"
    assert lines[4] == "| all | 0.25 | 0.25 | 0.25 | 0.25 | 0.25 | 0.25 | 0.75 |"


def test_score_case_describes_only_false_positives() -> None:
    """A predicted component on the true nodule is no false positive; the one elsewhere is described."""
    labels, hu = _chest()

    class Case:
        pass

    case = Case()
    truth = labels.copy()
    nod = _ball(labels.shape, (10, 40, 30), 5.0)
    truth[nod] = NODULE
    case.labels, case.hu, case.spacing = truth, hu, SPACING  # type: ignore[attr-defined]
    case.nodules = []  # type: ignore[attr-defined]
    pred = labels.copy()
    pred[nod] = NODULE
    pred[_ball(labels.shape, (10, 40, 60), 4.0)] = NODULE
    scores = Scores("test")
    score_case(scores, case, pred, None, [], describe_fps=True)
    assert scores.fp_scores == [[1.0]]
    assert len(scores.false_positives) == 1 and scores.false_positives[0].hilar
    quiet = Scores("test")
    score_case(quiet, case, pred, None, [])
    assert quiet.fp_scores == [[1.0]] and quiet.false_positives == []


def test_montage_draws_each_false_positive(tmp_path) -> None:  # type: ignore[no-untyped-def]
    labels, hu = _chest()
    cc = np.zeros(labels.shape, np.int32)
    cc[_ball(labels.shape, (10, 40, 58), 6.0)] = 1
    cc[_ball(labels.shape, (10, 40, 25), 4.0)] = 2
    fps = describe(0, hu, labels, cc, [1, 2], SPACING)
    path = tmp_path / "fp.png"
    montage(fps, str(path), "test family")
    with Image.open(path) as im:
        assert im.size[0] > 600 and im.size[1] > 150
        px = np.asarray(im.convert("RGB")).astype(int)
    red = (px[..., 0] > 180) & (px[..., 1] < 80) & (px[..., 2] < 80)
    assert red.sum() > 50  # the outlines are drawn
    montage([], str(tmp_path / "none.png"), "no false positives")  # an empty family still gets its picture
    assert (tmp_path / "none.png").exists()
