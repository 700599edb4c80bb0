"""The scan-level "nodule present" probability derived from a segmentation's kept lesions (ai/scan_score.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ai.bundle import BundleError, load_bundle
from ai.engine import Engine
from ai.scan_score import ScanScore, fit_platt
from tests.test_anatomy import _three_labels

SCORE = {"label": 3, "calibration": {"a": 1.0, "b": 0.0}}


def test_platt_fit_recovers_a_known_calibration() -> None:
    rng = np.random.default_rng(0)
    peaks = rng.uniform(0.001, 0.999, 4000)
    x = np.log(peaks / (1 - peaks))
    truth = rng.uniform(size=x.size) < 1 / (1 + np.exp(-(0.7 * x - 1.5)))
    a, b = fit_platt(peaks.tolist(), truth.tolist(), l2=0.0)
    assert a == pytest.approx(0.7, abs=0.08) and b == pytest.approx(-1.5, abs=0.15)


def test_platt_fit_stays_finite_on_separated_scans_and_refuses_one_class() -> None:
    a, b = fit_platt([0.0, 0.0, 0.0, 0.9, 0.95, 0.99], [False, False, False, True, True, True])
    s = ScanScore(label=3, a=a, b=b)
    assert np.isfinite([a, b]).all() and s.probability(0.0) < 0.1 and s.probability(0.95) > 0.9
    with pytest.raises(ValueError, match="with and without lesions"):
        fit_platt([0.1, 0.2], [True, True])


def test_peak_is_the_best_kept_lesion_and_zero_without_one() -> None:
    labels = np.zeros((4, 8, 8), np.uint8)
    scores = np.zeros((4, 4, 8, 8), np.float32)
    scores[3, 0, 0, 0] = 0.99  # a probable voxel that post-processing did not keep (a vessel, say)
    s = ScanScore(label=3)
    assert s.peak(labels, scores) == 0.0
    labels[2, 2:4, 2:4] = 3
    scores[3, 2, 2:4, 2:4] = [[0.4, 0.7], [0.6, 0.5]]
    assert s.peak(labels, scores) == pytest.approx(0.7)
    probs = s.classes(labels, scores)
    assert list(probs) == ["no nodule", "nodule present"] and probs["nodule present"] == pytest.approx(0.7)


def test_engine_reports_the_derived_probability(tmp_path: Path) -> None:
    b = load_bundle(_three_labels(tmp_path, scan_score={**SCORE, "calibration": {"a": 2.0, "b": -1.0}}))
    assert b.scan_score == ScanScore(label=3, a=2.0, b=-1.0)
    res = Engine(b, device="cpu").run(np.zeros((20, 24, 24), np.float32), (2.0, 2.0, 2.0), np.eye(3))
    p = res.class_probabilities
    assert set(p) == {"no nodule", "nodule present"} and sum(p.values()) == pytest.approx(1.0)
    assert p["nodule present"] == pytest.approx(ScanScore(label=3, a=2.0, b=-1.0).probability(0.0))


@pytest.mark.parametrize(
    ("score", "message"),
    [
        ({"label": 1}, "scan_score.label must be a lesion label (3), not 1"),
        ({"label": 3, "calibration": {"a": "x"}}, "scan_score.calibration must hold numbers a and b"),
        ({"label": 3, "threshold": 0.5}, "scan_score has an unknown key 'threshold'"),
    ],
)
def test_bad_scan_scores_are_refused_in_words(tmp_path: Path, score: dict[str, object], message: str) -> None:
    path = _three_labels(tmp_path, scan_score=score)
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_bundle(path)
    m = json.loads((path / "manifest.json").read_text())
    assert m["scan_score"] == score


def test_a_classifier_cannot_carry_a_scan_score(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="anatomy, scan_score apply to segmentation bundles only"):
        load_bundle(_three_labels(tmp_path, task="classification", scan_score=SCORE))
