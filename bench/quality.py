"""Scoring a chest-CT model against phantom ground truth: lungs, nodules by kind and size, volumes, FROC, calibration.

Used by ``bench/model_quality.py``.  A case is anything with ``hu``,
``labels`` (0 background, 1 right lung, 2 left lung, 3 nodule), ``spacing``
``(x, y, z)`` mm, ``direction`` and ``nodules`` (each with ``centre_mm``,
``diameter_mm``, ``kind``, ``site`` and ``volume_mm3``): the training
family (:mod:`ai.phantoms`) and the independent one (:mod:`bench.evalset`)
both are.

Matching: a true nodule is *found* when a predicted nodule voxel falls in
its labelled component; a predicted component that touches no true nodule
is a false positive.  Each predicted component's score is its highest
nodule probability, which gives the FROC curve below the operating point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cc3d
import numpy as np

RIGHT, LEFT, NODULE = 1, 2, 3
SIZE_BINS = {"6-8 mm": (6.0, 8.0), "8-12 mm": (8.0, 12.0), "12-30 mm": (12.0, float("inf"))}
GROUPS = {"solid": ("solid",), "part-solid and ground-glass": ("part-solid", "ground-glass"), "calcified": ("calcified",)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (1.0 when both are empty)."""
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


@dataclass
class TrueNodule:
    """One true nodule of one case, and what the model made of it."""

    case: int
    diameter_mm: float
    kind: str
    site: str
    volume_mm3: float
    found: bool
    score: float  # the highest score of a predicted component touching it (0 when none)
    measured_mm3: float | None  # the model's volume of the lesion found there


@dataclass
class Scores:
    """Everything scored over a family of cases."""

    name: str
    lung_dice: dict[str, list[float]] = field(default_factory=lambda: {"right": [], "left": []})
    nodules: list[TrueNodule] = field(default_factory=list)
    fp_scores: list[list[float]] = field(default_factory=list)  # per case: scores of false-positive components
    classifier: list[tuple[float, bool]] = field(default_factory=list)  # (P(nodule present), truth)
    not_applicable: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    estimators: dict[str, list[float]] = field(default_factory=dict)  # lesion volume method -> relative volume errors
    false_positives: list[Any] = field(default_factory=list)  # bench.fp_census.FalsePositive, when score_case describes them

    @property
    def cases(self) -> int:
        """Scans scored."""
        return len(self.fp_scores)

    def big(self, kinds: Sequence[str] | None = None, lo: float = 6.0, hi: float = float("inf")) -> list[TrueNodule]:
        """True nodules of at least ``lo`` mm (below ``hi``), of the given kinds."""
        return [n for n in self.nodules if lo <= n.diameter_mm < hi and (kinds is None or n.kind in kinds)]

    def fp_per_scan(self, threshold: float = 0.0) -> list[int]:
        """False positives per scan, counting components scoring at least ``threshold``."""
        return [sum(1 for s in case if s >= threshold) for case in self.fp_scores]


def nodule_component(truth_cc: np.ndarray, spacing_xyz: Sequence[float], centre_mm: Sequence[float], diameter_mm: float) -> int:
    """The labelled component (of ``truth_cc``, ``[z, y, x]``) of the nodule centred at ``centre_mm`` ``(x, y, z)``:
    at its centre, else the nearest nodule voxel within its radius (off-centre shapes); 0 when none."""
    idx = [int(round(c / s)) for c, s in zip(centre_mm, spacing_xyz)]
    nz, ny, nx = truth_cc.shape
    z, y, x = min(max(idx[2], 0), nz - 1), min(max(idx[1], 0), ny - 1), min(max(idx[0], 0), nx - 1)
    if truth_cc[z, y, x]:
        return int(truth_cc[z, y, x])
    pts = np.argwhere(truth_cc > 0)
    if not len(pts):
        return 0
    d = np.linalg.norm((pts - np.array([z, y, x])) * np.array(list(spacing_xyz)[::-1]), axis=1)
    k = int(np.argmin(d))
    return int(truth_cc[tuple(pts[k])]) if d[k] <= max(diameter_mm / 2, 2.0) else 0


def nodule_rules(pp: dict[str, Any], fraction: float, elongation: float, **changes: Any) -> dict[str, Any]:
    """A bundle's ``postprocessing`` ``pp`` with another nodule ``within_fraction`` and shape ``max_elongation``, and ``changes``
    (for :meth:`ai.engine.Engine.with_postprocessing`, in sweeps and fits)."""
    shapes = {k: {**r, "max_elongation": elongation} for k, r in pp.get("lesion_shape", {}).items()}
    return {**pp, "within_fraction": {str(NODULE): fraction}, "lesion_shape": shapes, **changes}


def score_case(scores: Scores, case: Any, labels: np.ndarray, nodule_prob: np.ndarray | None, lesions: Sequence[Any],
               describe_fps: bool = False) -> None:
    """Add one case: lung Dice, each true nodule found or not (with the measured volume), false positives.

    Parameters
    ----------
    scores : Scores
        Where to add.
    case : object
        The ground truth (see the module docstring).
    labels : ndarray
        The model's label map on the case's grid.
    nodule_prob : ndarray, optional
        The nodule probability on the same grid (scores of components; 1.0 without it).
    lesions : sequence
        The model's lesion measurements of the nodule label (``centroid_voxel`` ``[z, y, x]`` and ``volume_ml``).
    describe_fps : bool
        Also describe each false positive (:func:`bench.fp_census.describe`: where, size, density, a crop) into
        ``scores.false_positives``.
    """
    i = scores.cases
    truth = case.labels
    scores.lung_dice["right"].append(dice(labels == RIGHT, truth == RIGHT))
    scores.lung_dice["left"].append(dice(labels == LEFT, truth == LEFT))
    truth_cc = cc3d.connected_components(truth == NODULE, connectivity=26)
    pred_cc, n_pred = cc3d.connected_components(labels == NODULE, connectivity=26, return_N=True)
    comp_score = np.zeros(n_pred + 1)
    if n_pred:
        if nodule_prob is not None:
            np.maximum.at(comp_score, pred_cc.ravel(), nodule_prob.ravel().astype(np.float64))
        else:
            comp_score[1:] = 1.0
    touched: set[int] = set()
    for n in case.nodules:
        comp = nodule_component(truth_cc, case.spacing, n.centre_mm, n.diameter_mm)
        if comp == 0:
            continue
        hit_ids = np.unique(pred_cc[truth_cc == comp])
        hit_ids = hit_ids[hit_ids > 0]
        touched.update(int(h) for h in hit_ids)
        measured = None
        if len(hit_ids):
            inside = truth_cc == comp
            for les in lesions:
                z, y, x = (int(round(c)) for c in les.centroid_voxel)
                if 0 <= z < inside.shape[0] and 0 <= y < inside.shape[1] and 0 <= x < inside.shape[2] and pred_cc[z, y, x] in hit_ids:
                    measured = float(les.volume_ml) * 1000.0
                    break
        scores.nodules.append(TrueNodule(
            i, float(n.diameter_mm), str(n.kind), str(n.site), float(n.volume_mm3), bool(len(hit_ids)),
            float(comp_score[hit_ids].max()) if len(hit_ids) else 0.0, measured,
        ))
    # Predicted components touching a nodule we did not list (e.g. merged ones) are not false positives either.
    touched.update(int(h) for h in np.unique(pred_cc[truth_cc > 0]) if h > 0)
    fp_ids = [k for k in range(1, n_pred + 1) if k not in touched]
    scores.fp_scores.append([float(comp_score[k]) for k in fp_ids])
    if describe_fps:
        from bench.fp_census import describe

        scores.false_positives.extend(describe(i, case.hu, labels, pred_cc, fp_ids, case.spacing))


def froc(scores: Scores, thresholds: Sequence[float]) -> list[tuple[float, float, float]]:
    """``(threshold, sensitivity >= 6 mm, false positives per scan)`` for each threshold."""
    big = scores.big()
    out = []
    for t in thresholds:
        sens = np.mean([n.found and n.score >= t for n in big]) if big else float("nan")
        out.append((float(t), float(sens), float(np.mean(scores.fp_per_scan(t))) if scores.cases else float("nan")))
    return out


def auc(pairs: Sequence[tuple[float, bool]]) -> float:
    """ROC AUC: the chance that a positive scores above a negative (ties count half)."""
    pos = [s for s, t in pairs if t]
    neg = [s for s, t in pairs if not t]
    if not pos or not neg:
        return float("nan")
    return float(sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg)))


def reliability(pairs: Sequence[tuple[float, bool]], bins: int = 5) -> list[tuple[float, float, float, int]]:
    """``(low, mean predicted, observed frequency, count)`` per probability bin, for a reliability diagram."""
    out = []
    edges = np.linspace(0, 1, bins + 1)
    for lo, hi in zip(edges, edges[1:]):
        inside = [(p, t) for p, t in pairs if lo <= p < hi or (hi == 1.0 and p == 1.0)]
        if inside:
            out.append((float(lo), float(np.mean([p for p, _ in inside])), float(np.mean([t for _, t in inside])), len(inside)))
    return out


def expected_calibration_error(pairs: Sequence[tuple[float, bool]], bins: int = 5) -> float:
    """The count-weighted mean gap between predicted probability and observed frequency."""
    rows = reliability(pairs, bins)
    n = sum(r[3] for r in rows)
    return float(sum(r[3] * abs(r[1] - r[2]) for r in rows) / n) if n else float("nan")


def volume_errors(scores: Scores) -> list[float]:
    """Relative volume errors of the found nodules of 6 mm or more that the model measured."""
    return [(n.measured_mm3 - n.volume_mm3) / n.volume_mm3 for n in scores.big() if n.found and n.measured_mm3 and n.volume_mm3 > 0]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion ``k / n`` (``n`` > 0): honest at 0 and n, unlike the normal one."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap(values: Sequence[Any], stat: Any, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of ``stat(resampled values)``, resampling whole scans."""
    rng = np.random.default_rng(seed)
    n = len(values)
    out = [stat([values[i] for i in rng.integers(0, n, n)]) for _ in range(rounds)]
    out = [v for v in out if np.isfinite(v)]
    return (float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))) if out else (float("nan"), float("nan"))


def table(scores: Scores, targets: bool) -> str:
    """The markdown table of one family, with 95 % intervals: Wilson for proportions, bootstrap over scans otherwise.

    On 20-60 scans the intervals are wide; a difference between two models
    inside them is not shown to be real.
    """

    def sens(nodules: list[TrueNodule]) -> str:
        found = sum(n.found for n in nodules)
        if not nodules:
            return "- (0)"
        lo, hi = wilson(found, len(nodules))
        return f"{found / len(nodules):.3f} ({found}/{len(nodules)}; 95 % CI {lo:.2f}-{hi:.2f})"

    def share(k: int, n: int) -> str:
        return "{:.2f} (95 % CI {:.2f}-{:.2f})".format(k / n, *wilson(k, n)) if n else "-"

    fp = scores.fp_per_scan()
    vol = volume_errors(scores)
    healthy = [p for p, t in scores.classifier if not t]
    rows = [
        ("scans (with nodules / healthy)", f"{scores.cases} ({sum(1 for c in set(n.case for n in scores.nodules))} / "
         f"{scores.cases - len(set(n.case for n in scores.nodules))})", ""),
        ("lung Dice, right", f"{np.mean(scores.lung_dice['right']):.3f}", ">= 0.95"),
        ("lung Dice, left", f"{np.mean(scores.lung_dice['left']):.3f}", ">= 0.95"),
        ("sensitivity, solid >= 6 mm", sens(scores.big(GROUPS["solid"])), ">= 0.90"),
        ("sensitivity, part-solid and ground-glass >= 6 mm", sens(scores.big(GROUPS["part-solid and ground-glass"])), ">= 0.80"),
        ("sensitivity, calcified >= 6 mm", sens(scores.big(GROUPS["calcified"])), ""),
        *((f"sensitivity, all kinds, {name}", sens(scores.big(None, lo, hi)), "") for name, (lo, hi) in SIZE_BINS.items()),
        ("sensitivity, nodules < 6 mm", sens([n for n in scores.nodules if n.diameter_mm < 6]), ""),
        ("false-positive nodules per scan (mean)", "{:.2f} (95 % CI {:.2f}-{:.2f})".format(np.mean(fp), *bootstrap(fp, np.mean))
         if fp else "-", "<= 0.5"),
        ("scans with at most 1 false positive", share(sum(f <= 1 for f in fp), len(fp)), ">= 0.90"),
        ("volume within +-15 %, found nodules >= 6 mm", f"{share(sum(abs(e) <= 0.15 for e in vol), len(vol))}; {len(vol)} measured, "
         f"median error {np.median(vol) * 100:+.1f} %" if vol else "-", ">= 0.90"),
    ]
    if scores.classifier:
        rows += [
            ("classifier AUC, nodule present", "{:.3f} (95 % CI {:.2f}-{:.2f})".format(auc(scores.classifier), *bootstrap(scores.classifier, auc)),
             ">= 0.90"),
            ("classifier: healthy scans below 0.5", f"{share(sum(p < 0.5 for p in healthy), len(healthy))}; {len(healthy)} scans"
             if healthy else "-", ">= 0.90"),
            ("classifier expected calibration error", f"{expected_calibration_error(scores.classifier):.3f}", ""),
        ]
    if scores.not_applicable:
        rows.append(("scans the anatomy gate called not applicable", f"{len(scores.not_applicable)}: {'; '.join(scores.not_applicable[:3])}", "0"))
    rows.append(("seconds per scan", f"{np.mean(scores.seconds):.1f}" if scores.seconds else "-", ""))
    head = "| metric | value | target |\n|---|---|---|\n" if targets else "| metric | value |\n|---|---|\n"
    return head + "\n".join(f"| {m} | {v} | {t} |" if targets else f"| {m} | {v} |" for m, v, t in rows)


def plot(families: Sequence[Scores], path: str) -> None:
    """FROC curves of every family, the classifier's reliability diagram and the found nodules' volume errors, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16.5, 4.5))
    thresholds = np.linspace(0.0, 1.0, 41)
    for s in families:
        pts = froc(s, thresholds)
        ax1.plot([p[2] for p in pts], [p[1] for p in pts], marker=".", label=f"{s.name} ({s.cases} scans)")
        ax1.plot([pts[0][2]], [pts[0][1]], "k*", markersize=10)
    ax1.set_xlabel("false-positive nodules per scan")
    ax1.set_ylabel("sensitivity, nodules >= 6 mm")
    ax1.set_title("FROC (star: the shipped operating point)")
    ax1.set_ylim(0, 1.02)
    ax1.axhline(0.9, color="grey", lw=0.5, ls="--")
    ax1.axvline(0.5, color="grey", lw=0.5, ls="--")
    ax1.legend(loc="lower right")
    ax2.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for s in families:
        if s.classifier:
            rows = reliability(s.classifier)
            ax2.plot([r[1] for r in rows], [r[2] for r in rows], marker="o", label=f"{s.name}")
            for r in rows:
                ax2.annotate(str(r[3]), (r[1], r[2]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax2.set_xlabel("predicted P(nodule present)")
    ax2.set_ylabel("observed fraction with a nodule")
    ax2.set_title("classifier reliability (numbers: scans per bin)")
    ax2.legend(loc="upper left")
    _volume_panel(ax3, families)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


KIND_COLOURS = {"solid": "tab:blue", "part-solid": "tab:orange", "ground-glass": "tab:green", "calcified": "tab:grey"}


def _volume_panel(ax: Any, families: Sequence[Scores]) -> None:
    """Measured against true volume of each found nodule of 6 mm or more, by kind (colour) and family (marker)."""
    for s, marker in zip(families, "o^sD"):
        for kind, colour in KIND_COLOURS.items():
            pts = [(n.diameter_mm, 100.0 * (n.measured_mm3 - n.volume_mm3) / n.volume_mm3) for n in s.big()
                   if n.kind == kind and n.found and n.measured_mm3 and n.volume_mm3 > 0]
            if pts:
                ax.scatter([p[0] for p in pts], [float(np.clip(p[1], -95, 95)) for p in pts], marker=marker, color=colour, s=22,
                           label=f"{kind}, {s.name.split(',')[0].split(' (')[0]}")
    ax.axhspan(-15, 15, color="green", alpha=0.08)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks([6, 8, 12, 20, 30], ["6", "8", "12", "20", "30"])
    ax.set_ylim(-100, 100)
    ax.set_xlabel("true diameter, mm")
    ax.set_ylabel("volume error, % (band: +-15 %)")
    ax.set_title("found nodules >= 6 mm: measured volume")
    ax.legend(loc="lower left", fontsize=6, ncol=2)
