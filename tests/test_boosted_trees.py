"""Gradient-boosted trees as a candidate classifier (ai/boosted_trees.py): the same probabilities as scikit-learn's,
a manifest round trip, malformed trees refused in words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ai.boosted_trees import BoostedTrees, Tree, TreesError, from_manifest, from_sklearn
from ai.bundle import BundleError, load_bundle
from ai.candidates import CandidateError, CandidateModel, judge
from ai.candidates import from_manifest as candidate_model
from tests.test_anatomy import _three_labels
from tests.test_candidates import SPACING, _chest

sklearn_ensemble = pytest.importorskip("sklearn.ensemble")


def _fitted(seed: int = 0) -> tuple[object, np.ndarray]:
    """A boosted classifier on an XOR-like problem no linear model can solve, and rows to score."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 3))
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0.5)).astype(int)
    model = sklearn_ensemble.HistGradientBoostingClassifier(max_leaf_nodes=8, max_iter=40, random_state=0).fit(x, y)
    return model, rng.normal(size=(300, 3))


def test_the_trees_give_scikit_learns_probabilities() -> None:
    model, x = _fitted()
    trees = from_sklearn(model)
    p = 1.0 / (1.0 + np.exp(-trees.log_odds(x)))
    assert p == pytest.approx(model.predict_proba(x)[:, 1], abs=1e-9)  # type: ignore[attr-defined]
    assert len(trees.trees) == 40 and all(t.feature[0] >= 0 for t in trees.trees)
    for t in trees.trees:  # a leaf has no children: -1, as the manifest documents (not an unsigned -1, 2**32 - 1)
        leaf = t.feature < 0
        assert leaf.any() and (t.left[leaf] == -1).all() and (t.right[leaf] == -1).all()
        assert (t.left[~leaf] > 0).all() and (t.right[~leaf] < len(t.feature)).all()


def test_the_trees_survive_the_manifest() -> None:
    model, x = _fitted(1)
    trees = from_sklearn(model)
    again = from_manifest(json.loads(json.dumps(trees.as_manifest())), n_features=3)
    assert again == trees or np.allclose(again.log_odds(x), trees.log_odds(x), atol=1e-6)
    assert again.log_odds(x) == pytest.approx(trees.log_odds(x), abs=1e-6)


def test_a_missing_value_goes_left() -> None:
    stump = BoostedTrees(0.5, (Tree(np.array([0, -1, -1]), np.array([1.0, 0, 0]), np.array([1, -1, -1]), np.array([2, -1, -1]),
                                    np.array([0.0, -2.0, 3.0])),))
    assert stump.log_odds(np.array([[0.0], [2.0], [np.nan]])).tolist() == [-1.5, 3.5, -1.5]


def _stump(**change: object) -> dict[str, object]:
    tree = {"feature": [0, -1, -1], "threshold": [1.0, 0.0, 0.0], "left": [1, -1, -1], "right": [2, -1, -1], "value": [0.0, -2.0, 3.0]}
    return {"baseline": 0.5, "trees": [{**tree, **change}]}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_stump(feature=[5, -1, -1]), "a feature index outside -1..1"),
        (_stump(left=[0, -1, -1]), "children must come after it"),
        (_stump(right=[7, -1, -1]), "children must come after it"),
        (_stump(value=[0.0, float("inf"), 1.0]), "must be finite"),
        (_stump(threshold=[1.0, 0.0]), "the same length"),
        (_stump(value="many"), "needs feature, threshold, left, right and value lists"),
        ({"baseline": 0.5, "trees": []}, "1 to 2000 trees"),
        ({"trees": []}, "needs baseline and trees"),
    ],
)
def test_malformed_trees_are_refused_in_words(entry: dict[str, object], message: str) -> None:
    with pytest.raises(TreesError, match=message.replace(".", r"\.")):
        from_manifest(entry, n_features=2)


def test_a_candidate_classifier_of_trees(tmp_path: Path) -> None:
    """In a bundle, trees judge the candidates: this stump on elongation keeps the round nodule and drops the tube."""
    stump = BoostedTrees(0.0, (Tree(np.array([0, -1, -1]), np.array([0.7, 0, 0]), np.array([1, -1, -1]), np.array([2, -1, -1]),
                                    np.array([0.0, 4.0, -4.0])),))
    model = CandidateModel(("log_elongation", "mediastinum_mm"), (), (), (), 0.0, 0.5, trees=stump)
    entry = json.loads(json.dumps(model.as_manifest("a test")))
    assert "weights" not in entry and candidate_model(entry) == model
    labels, image, prob = _chest()
    out, kept = judge(labels, 3, prob, image, SPACING, np.eye(3), [1, 2], model)
    assert len(kept) == 1 and kept[0].holds((20, 32, 25)) and kept[0].probability == pytest.approx(1 / (1 + np.exp(-4.0)))
    (tmp_path / "ok").mkdir()
    assert load_bundle(_three_labels(tmp_path / "ok", postprocessing__candidates={"3": entry})).candidates[3] == model
    bad = {**entry, "trees": _stump(feature=[9, -1, -1])}
    with pytest.raises(CandidateError, match="a feature index outside"):
        candidate_model(bad)
    (tmp_path / "bad").mkdir()
    with pytest.raises(BundleError, match="postprocessing.candidates"):
        load_bundle(_three_labels(tmp_path / "bad", postprocessing__candidates={"3": bad}))
