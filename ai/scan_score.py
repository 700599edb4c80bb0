"""A scan-level probability ("nodule present") derived from a segmentation's own lesions.

Why not a second network: a whole-volume classifier trained on a hundred
training phantoms reached a validation AUC of only 0.44-0.67 over ten epochs
(``dicomnode train --task classification``, see the model card), and two models can
contradict each other: a report that lists no nodule beside "nodule present
0.99" is worse than no probability at all.  So the probability is a
calibrated function of what the report shows: the peak lesion-class
probability of the most probable lesion that post-processing kept.

``scan_score`` in a bundle's manifest::

    "scan_score": {"label": 3, "present": "nodule present", "absent": "no nodule",
                   "calibration": {"a": 1.2, "b": -0.4, "fitted_on": "..."}}

The calibration is Platt scaling, ``p = sigmoid(a * logit(peak) + b)``,
fitted by :func:`fit_platt` on validation scans of the training family
(``bench/model_quality.py --tune``), never on the evaluation family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EPS = 1e-4  # peaks are clipped to [EPS, 1 - EPS] before the logit: a scan with no lesion has peak 0


@dataclass(frozen=True)
class ScanScore:
    """How a segmentation bundle turns its lesions into class probabilities.

    Attributes
    ----------
    label : int
        The lesion label whose components count.
    present, absent : str
        The class names reported (``Result.class_probabilities``).
    a, b : float
        Platt calibration of ``logit(peak)``.
    """

    label: int
    present: str = "nodule present"
    absent: str = "no nodule"
    a: float = 1.0
    b: float = 0.0

    def peak(self, labels: np.ndarray, scores: np.ndarray) -> float:
        """The highest lesion-class probability inside a kept lesion of :attr:`label` (0 when there is none).

        Parameters
        ----------
        labels : ndarray
            The post-processed label map ``[z, y, x]``.
        scores : ndarray
            Per-class probabilities ``[C, z, y, x]`` on the same grid (channel = label value).
        """
        inside = labels == self.label
        return float(scores[self.label][inside].max()) if inside.any() else 0.0

    def probability(self, peak: float) -> float:
        """The calibrated probability that the scan holds a lesion, from :meth:`peak`."""
        return _sigmoid(self.a * _logit(peak) + self.b)

    def classes(self, labels: np.ndarray, scores: np.ndarray, peak: float | None = None) -> dict[str, float]:
        """``{absent: 1 - p, present: p}``, in that order.

        ``peak`` replaces :meth:`peak` where the lesions were judged by a
        candidate classifier (:mod:`ai.candidates`): its highest probability
        over the kept lesions.
        """
        p = self.probability(self.peak(labels, scores) if peak is None else peak)
        return {self.absent: 1.0 - p, self.present: p}


def _logit(p: float) -> float:
    p = min(max(p, EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def fit_platt(peaks: Sequence[float], truth: Sequence[bool], l2: float = 1.0) -> tuple[float, float]:
    """Fit ``a, b`` of :class:`ScanScore` by logistic regression on ``logit(peak)`` (Newton's method).

    An L2 penalty on ``a`` and ``b`` (``l2``, in units of one scan's
    log-loss) keeps the fit finite when the validation scans are perfectly
    separated, which a handful of them often are, and Newton steps are halved
    until the penalised loss falls.

    Returns
    -------
    (a, b) : tuple of float
    """
    x = np.array([_logit(float(p)) for p in peaks])
    y = np.asarray(truth, dtype=float)
    if len(x) == 0 or y.min() == y.max():
        raise ValueError("fitting a calibration needs scans with and without lesions")
    X = np.stack([x, np.ones_like(x)], axis=1)
    a, b = fit_logistic(X, y, np.full(2, l2), start=np.array([1.0, 0.0]))
    return float(a), float(b)


def fit_logistic(X: np.ndarray, y: np.ndarray, penalty: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Weights of an L2-penalised logistic regression of ``y`` (0 or 1) on the columns of ``X`` (Newton's method).

    ``penalty`` holds one L2 weight per column (0 leaves a column, such as
    a bias column of ones, unpenalised); Newton steps are halved until the
    penalised loss falls.  :func:`fit_platt` and the candidate classifier's
    fit (``scripts/train_candidate_classifier.py``) use it.
    """
    pen = np.asarray(penalty, dtype=float)

    def loss(w: np.ndarray) -> float:
        z = X @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(pen * w * w))

    w = np.zeros(X.shape[1]) if start is None else np.asarray(start, dtype=float)
    for _ in range(200):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - y) + pen * w
        hess = (X.T * (p * (1 - p))) @ X + np.diag(pen)
        step = np.linalg.solve(hess, grad)
        t, before = 1.0, loss(w)
        while loss(w - t * step) > before and t > 1e-8:  # backtracking: a full Newton step can overshoot on near-separable data
            t /= 2
        w = w - t * step
        if np.abs(t * step).max() < 1e-10:
            break
    return w


KEYS = ("label", "present", "absent", "calibration")


def problems(m: dict[str, Any], lesion_labels: Sequence[object]) -> list[str]:
    """What is wrong with a manifest's ``scan_score`` (nothing when it has none).

    That it belongs to a segmentation bundle is checked with the other segmentation-only keys (:mod:`ai.bundle`).
    """
    s = m.get("scan_score")
    if s is None:
        return []
    if not isinstance(s, dict):
        return [f"scan_score must be an object, not {s!r}"]
    out = [f"scan_score has an unknown key {k!r} (known: {', '.join(KEYS)})" for k in s if k not in KEYS]
    if s.get("label") not in lesion_labels:
        out.append(f"scan_score.label must be a lesion label ({', '.join(map(str, lesion_labels)) or 'none'}), not {s.get('label')!r}")
    cal = s.get("calibration", {})
    if not isinstance(cal, dict) or not all(
        isinstance(cal.get(k, 0.0), (int, float)) and math.isfinite(cal.get(k, 0.0)) for k in ("a", "b")
    ):
        out.append(f"scan_score.calibration must hold numbers a and b, not {cal!r}")
    return out


def from_manifest(m: dict[str, Any]) -> ScanScore | None:
    """The :class:`ScanScore` of a validated manifest, if it has one."""
    s = m.get("scan_score")
    if s is None:
        return None
    cal = s.get("calibration", {})
    return ScanScore(
        label=int(s["label"]), present=str(s.get("present", "nodule present")), absent=str(s.get("absent", "no nodule")),
        a=float(cal.get("a", 1.0)), b=float(cal.get("b", 0.0)),
    )
