"""Gradient-boosted decision trees, evaluated with numpy: a candidate classifier that need not be linear.

A logistic regression can only weigh each feature one way; a lymph node at
the hilum and a nodule beside it differ by where they lie *and* what they
look like together, which trees can split on.  The trees are fitted
elsewhere (``scripts/train_candidate_classifier.py fit --model boosted``,
with scikit-learn's ``HistGradientBoostingClassifier``) and stored in the
bundle's manifest as plain lists, so that running them needs nothing but
numpy::

    "trees": {"baseline": -0.7, "trees": [{"feature": [0, -1, -1], "threshold": [2.5, 0, 0],
                                          "left": [1, -1, -1], "right": [2, -1, -1], "value": [0, -0.1, 0.2]}, ...]}

Node 0 is each tree's root; a node with ``feature`` -1 is a leaf and gives
``value``; any other sends a row to ``left`` when its feature is at most
``threshold`` (or is not a number), else to ``right``.  The log-odds of a row
are ``baseline`` plus the values of the leaves it reaches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ai.errors import AIError

MAX_TREES = 2000  # a manifest with more is refused: each costs a pass over the candidates
MAX_NODES = 4096  # per tree


class TreesError(AIError):
    """A manifest's trees are malformed."""


@dataclass(frozen=True, eq=False)
class Tree:
    """One regression tree as parallel arrays over its nodes (see the module docstring)."""

    feature: np.ndarray  # int, -1 at leaves
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tree) and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in ("feature", "threshold", "left", "right", "value"))

    __hash__ = None  # type: ignore[assignment]

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """The value of the leaf each row of ``x`` reaches."""
        node = np.zeros(len(x), dtype=np.int64)
        rows = np.arange(len(x))
        while True:
            inner = self.feature[node] >= 0
            if not inner.any():
                return np.asarray(self.value[node], dtype=np.float64)
            at = node[inner]
            v = x[rows[inner], self.feature[at]]
            go_left = ~(v > self.threshold[at])  # NaN goes left
            node[inner] = np.where(go_left, self.left[at], self.right[at])


@dataclass(frozen=True)
class BoostedTrees:
    """A sum of :class:`Tree` s on top of ``baseline``: log-odds."""

    baseline: float
    trees: tuple[Tree, ...]

    def log_odds(self, x: np.ndarray) -> np.ndarray:
        """The log-odds of each row of ``x`` (one column per feature, in the order the trees index them)."""
        x = np.asarray(x, dtype=np.float64)
        out = np.full(len(x), self.baseline, dtype=np.float64)
        for tree in self.trees:
            out += tree.leaves(x)
        return out

    def as_manifest(self) -> dict[str, Any]:
        """The manifest's ``trees`` entry."""
        return {"baseline": round(self.baseline, 8), "trees": [
            {"feature": t.feature.tolist(), "threshold": [round(float(v), 8) for v in t.threshold],
             "left": t.left.tolist(), "right": t.right.tolist(), "value": [round(float(v), 8) for v in t.value]}
            for t in self.trees]}


def from_manifest(entry: Mapping[str, Any], n_features: int) -> BoostedTrees:
    """The :class:`BoostedTrees` of a manifest's ``trees`` entry over ``n_features`` features.

    Raises
    ------
    TreesError
        Missing keys, arrays of different lengths, a feature index out of range, a child that does not come after
        its parent (a loop), numbers that are not finite, or too many trees or nodes.
    """
    try:
        baseline = float(entry["baseline"])
        raw = list(entry["trees"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TreesError(f"trees needs baseline and trees: {exc}") from exc
    if not math.isfinite(baseline):
        raise TreesError("trees: baseline must be a finite number")
    if not 1 <= len(raw) <= MAX_TREES:
        raise TreesError(f"trees: 1 to {MAX_TREES} trees, not {len(raw)}")
    return BoostedTrees(baseline, tuple(_tree(t, i, n_features) for i, t in enumerate(raw)))


def _tree(t: Any, i: int, n_features: int) -> Tree:
    try:
        feature, left, right = (np.asarray(t[k], dtype=np.int64) for k in ("feature", "left", "right"))
        threshold, value = (np.asarray(t[k], dtype=np.float64) for k in ("threshold", "value"))
    except (KeyError, TypeError, ValueError) as exc:
        raise TreesError(f"tree {i} needs feature, threshold, left, right and value lists: {exc}") from exc
    n = len(feature)
    if any(a.ndim != 1 or len(a) != n for a in (threshold, left, right, value)) or not 1 <= n <= MAX_NODES:
        raise TreesError(f"tree {i}: feature, threshold, left, right and value must be lists of the same length, 1 to {MAX_NODES}")
    inner = feature >= 0
    if (feature < -1).any() or (feature >= n_features).any():
        raise TreesError(f"tree {i}: a feature index outside -1..{n_features - 1}")
    idx = np.arange(n)
    if (inner & ((left <= idx) | (right <= idx) | (left >= n) | (right >= n))).any():
        raise TreesError(f"tree {i}: each inner node's children must come after it, within the tree")
    if not (np.isfinite(threshold[inner]).all() and np.isfinite(value[~inner]).all()):
        raise TreesError(f"tree {i}: thresholds and leaf values must be finite")
    return Tree(feature, threshold, left, right, value)


def from_sklearn(model: Any) -> BoostedTrees:
    """The trees of a fitted binary ``sklearn.ensemble.HistGradientBoostingClassifier`` (fitting is not done here)."""
    trees = []
    for (predictor,) in model._predictors:
        nodes = predictor.nodes
        leaf = nodes["is_leaf"].astype(bool)
        # The node fields are unsigned: cast before writing -1 for a leaf, or it wraps to 2**32 - 1.
        index = {k: nodes[k].astype(np.int64) for k in ("feature_idx", "left", "right")}
        trees.append(Tree(np.where(leaf, -1, index["feature_idx"]), nodes["num_threshold"].astype(np.float64),
                          np.where(leaf, -1, index["left"]), np.where(leaf, -1, index["right"]),
                          np.where(leaf, nodes["value"], 0.0).astype(np.float64)))
    return BoostedTrees(float(np.ravel(model._baseline_prediction)[0]), tuple(trees))
