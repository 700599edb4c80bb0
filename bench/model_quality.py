"""Quality of the chest-CT bundles on two phantom families: the training family's held-out seeds, and an independent one.

Lesson learned here: a generator cannot grade the model it trained.  So the
bundles are scored on

- ``train``: held-out seeds of the training generator (:mod:`ai.phantoms`,
  seeds 7000+ by default; training used 0-99, tuning 6000+), and
- ``eval``: the frozen, independently written family :mod:`bench.evalset`
  (32 scans with nodules, 24 healthy), whose shapes and parameter ranges
  training never saw.  It was frozen before training (``tests/test_evalset.py``
  pins it) and is never used to tune anything.

For each family: right and left lung Dice; nodule sensitivity by kind
(solid; part-solid and ground-glass; calcified) and size bin for nodules of
6 mm or more; false-positive nodules per scan (mean, and the share of scans
with at most one); the share of found nodules whose measured volume is
within +-15 % of the truth; the "nodule present" probability's AUC, the share of
healthy scans it puts below 0.5 and its calibration: the bundle's own
``scan_score`` (:mod:`ai.scan_score`), or ``--classifier DIR``; and what the
false positives are (:mod:`bench.fp_census`: hilar or peripheral, size,
density, per scan).  ``--plots DIR`` writes the FROC curves and the
classifier's reliability diagram as one PNG, and a montage of each family's
false positives (``false-positives-train.png``, ``false-positives-eval.png``).

``--tune SEED`` sweeps the nodule thresholds on training-family *validation*
seeds SEED.. (use 6000), fits the scan score's calibration at each and prints
the trade-off; the chosen values go into the bundle's manifest.  It sweeps
the network's thresholds without a candidate classifier; the default
bundle's classifier, its candidate settings and its cut are fitted and
chosen by ``scripts/train_candidate_classifier.py``.  Cases are cached under the bench output folder.

``--quick`` is a smoke run: one small scan per family (the table has the
same rows); its figures say nothing about the bundles' quality.

Usage: ``python bench/model_quality.py [--bundle DIR] [--classifier DIR] [--family both|train|eval] [--count 40] [--plots DIR] [--tune 6000] [--quick]``
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from ai.bundle import load_bundle  # noqa: E402
from ai.engine import Engine, Result  # noqa: E402
from ai.lesion_volume import LesionVolume  # noqa: E402
from bench.common import out_dir, use_quick_out  # noqa: E402
from bench.fp_census import census, montage  # noqa: E402
from bench.quality import NODULE, Scores, auc, froc, nodule_rules, plot, score_case, table, volume_errors  # noqa: E402
from dicomnode.jobs.models import DEFAULT_MODEL, SHIPPED_BUNDLES  # noqa: E402

DEFAULT = SHIPPED_BUNDLES / DEFAULT_MODEL
TRAIN_HELD_OUT = 7000  # seeds of the training family that no training or tuning step uses
TUNE_SEEDS = 6000  # validation seeds of the training family, for --tune


@functools.lru_cache(maxsize=None)
def _source_digest(package: str) -> str:
    """A short digest of a package's Python sources: a cached case is stale once its generator changes."""
    import hashlib
    import importlib

    root = Path(importlib.import_module(package).__file__ or "").parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _cached(kind: str, seed: int, matrix: int, make: Any, generator: str) -> Any:
    """A generated case, from the cache when the same generator made it before (generation takes seconds each).

    The file's name holds the digest of ``generator``'s sources, so a changed generator never reads an old case.
    """
    import pickle

    path = out_dir() / "quality-cache" / f"{kind}-{seed}-{matrix}-{_source_digest(generator)}.pkl"
    if path.exists():
        with path.open("rb") as f:
            return pickle.load(f)
    case = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        pickle.dump(case, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return case


def train_cases(first: int, count: int, matrix: int) -> Iterator[Any]:
    """Seeds ``first..`` of the training family (about a third of them healthy)."""
    from ai.phantoms import generate

    for seed in range(first, first + count):
        yield _cached("train", seed, matrix, lambda seed=seed: generate(seed, matrix=matrix), "ai.phantoms")


def eval_cases(matrix: int, limit: int | None = None) -> Iterator[Any]:
    """The frozen independent family (:func:`bench.evalset.frozen_set`)."""
    from bench.evalset import frozen_set, generate_case

    cases = frozen_set("eval")
    if limit is not None:  # a smoke run: some with nodules and some without
        cases = [c for c in cases if not c[1]][: (limit + 1) // 2] + [c for c in cases if c[1]][: limit // 2]
    for seed, healthy in cases:
        yield _cached("eval", seed, matrix, lambda seed=seed, healthy=healthy: generate_case(seed, healthy=healthy, matrix=matrix),
                      "bench.evalset")


def run(engine: Engine, case: Any) -> tuple[Result, float]:
    """The bundle on one case, on its own grid and orientation; seconds taken."""
    t = time.perf_counter()
    res = engine.run(case.hu.astype(np.float32), tuple(case.spacing), np.asarray(case.direction), keep_probabilities=True)
    return res, time.perf_counter() - t


ESTIMATORS = ("voxels", "probability", "auto", "grown")  # lesion volume methods compared on the same label maps


def nodule_lesions(engine: Engine, case: Any, labels: np.ndarray, probabilities: np.ndarray | None, image: np.ndarray,
                   lesion_volume: LesionVolume) -> list[Any]:
    """The nodules of a label map of ``case``, measured with ``lesion_volume`` (the engine's network is not run)."""
    from ai.measure import measure

    b = engine.bundle
    names = {lb.value: lb.name for lb in b.labels}
    ms = measure(labels, tuple(case.spacing), names, image=image, lesion_values=[NODULE], probabilities=probabilities,
                 contains=b.contains, lesion_volume=lesion_volume)
    return next((m.lesions for m in ms if m.value == NODULE), [])


def estimator_errors(engine: Engine, case: Any, res: Result, errors: dict[str, list[float]]) -> None:
    """Add the volume errors of each estimator in :data:`ESTIMATORS` on this case's label map to ``errors``."""
    assert res.labels is not None
    image = case.hu.astype(np.float32)
    for method in ESTIMATORS:
        lv = dataclasses.replace(engine.bundle.lesion_volume, method=method, thresholds=engine.tail_thresholds())
        one = Scores(method)
        score_case(one, case, res.labels, None, nodule_lesions(engine, case, res.labels, res.probabilities, image, lv))
        errors.setdefault(method, []).extend(volume_errors(one))


def estimator_table(errors: dict[str, list[float]], shipped: str) -> str:
    """Each volume estimator's accuracy on the same found nodules of 6 mm or more."""
    lines = ["| volume estimator, same label maps | found nodules >= 6 mm | within +-15 % | median error | median absolute error |",
             "|---|---|---|---|---|"]
    for method, e in errors.items():
        a = np.asarray(e)
        mark = " (the bundle's)" if method == shipped else ""
        if len(a):
            lines.append(f"| {method}{mark} | {len(a)} | {np.mean(np.abs(a) <= 0.15):.2f} | {np.median(a):+.0%} | {np.median(np.abs(a)):.0%} |")
        else:
            lines.append(f"| {method}{mark} | 0 | - | - | - |")
    return "\n".join(lines)


def component_scores(res: Result) -> np.ndarray:
    """Each kept nodule's score for the FROC curve: the candidate classifier's probability that the engine gave it, where
    the bundle has a classifier, else the network's probability (``score_case`` takes each component's highest voxel)."""
    assert res.labels is not None and res.probabilities is not None
    if NODULE not in res.candidates:
        return res.probabilities[NODULE]
    out = np.zeros(res.labels.shape, dtype=np.float32)
    for les in next((m.lesions for m in res.measurements if m.value == NODULE), []):
        if les.box is not None and les.mask is not None and les.probability is not None:
            view = out[les.box]
            view[les.mask] = les.probability
    return out


def score(name: str, cases: Iterator[Any], engine: Engine, classifier: Engine | None) -> Scores:
    """Score one family (and its volume estimators, in ``Scores.estimators``)."""
    s = Scores(name)
    for case in cases:
        res, seconds = run(engine, case)
        estimator_errors(engine, case, res, s.estimators)
        s.seconds.append(seconds)
        anatomy = getattr(res, "anatomy", None)
        if anatomy is not None and not anatomy.applicable:
            s.not_applicable.append(anatomy.reason)
        assert res.labels is not None and res.probabilities is not None
        lesions = next((m.lesions for m in res.measurements if m.value == NODULE), [])
        score_case(s, case, res.labels, component_scores(res), lesions, describe_fps=True)
        probs = res.class_probabilities  # the bundle's own scan score, when its manifest has one
        if classifier is not None:
            probs = classifier.run(case.hu.astype(np.float32), tuple(case.spacing), np.asarray(case.direction)).class_probabilities
        if probs:
            s.classifier.append((probs.get("nodule present", max(probs.values())), bool((case.labels == NODULE).any())))
        print(f"  {name} scan {s.cases}: {sum(n.found for n in s.nodules if n.case == s.cases - 1)}/"
              f"{sum(1 for n in s.nodules if n.case == s.cases - 1)} nodules found, {len(s.fp_scores[-1])} FP, {seconds:.1f} s",
              file=sys.stderr)
    return s


def _variant(engine: Engine, fraction: float, elongation: float) -> Engine:
    """``engine`` with another nodule ``within_fraction`` and shape ``max_elongation`` (the network is shared)."""
    return engine.with_postprocessing(nodule_rules(engine.bundle.postprocessing, fraction, elongation))


Setting = tuple[float, float | None, float, float, float]  # label and detection thresholds, floor, border share, elongation


def tune(engine: Engine, first: int, count: int, matrix: int) -> None:
    """Sweep the nodule thresholds, the lung-border share and the elongation limit on training-family validation seeds.

    The scan score's calibration is fitted at each setting.  The size floor
    stays at the bundle's (65 mm3): 10, 30 and 65 gave the same nodules on
    this family for versions 0.3.0 and 0.4.0.
    """
    from ai.scan_score import ScanScore, fit_platt

    floor = float(engine.bundle.postprocessing.get("min_size_mm3", 65.0))
    grid: list[Setting] = [
        (lab, det, floor, frac, elong)
        for lab, det in ((0.35, None), (0.5, None), (0.35, 0.1), (0.5, 0.2), (0.7, None))
        for frac in (0.0, 0.5, 0.6)
        for elong in (3.0, 2.5)
    ]
    tallies = {g: Scores(f"{g}") for g in grid}
    peaks: dict[Setting, list[tuple[float, bool]]] = {g: [] for g in grid}
    variants = {(f, e): _variant(engine, f, e) for _, _, _, f, e in grid}
    raw = ScanScore(label=NODULE)
    for case in train_cases(first, count, matrix):
        res, _ = run(engine, case)
        assert res.probabilities is not None
        spacing = tuple(case.spacing)
        for g in grid:
            lab, det, _, frac, elong = g
            labels, _ = variants[(frac, elong)].postprocess(res.probabilities, spacing, {NODULE: lab}, {} if det is None else {NODULE: det})
            score_case(tallies[g], case, labels, res.probabilities[NODULE], [])
            peaks[g].append((raw.peak(labels, res.probabilities), bool((case.labels == NODULE).any())))
        print(f"  tuning scan {case.seed} done", file=sys.stderr)
    print(f"\nnodule post-processing sweep on {count} validation phantoms of the training family (seeds {first}-{first + count - 1})\n")
    print("| nodule label threshold | detection threshold | size floor mm3 | lung border share | max elongation | sensitivity >= 6 mm "
          "| part-solid/GGO >= 6 mm | FP per scan | scans with <= 1 FP | scan score AUC | calibration a, b |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (lab, det, fl, frac, elong), t in tallies.items():
        big, sub = t.big(), t.big(("part-solid", "ground-glass"))
        fp = t.fp_per_scan()
        pairs = peaks[(lab, det, fl, frac, elong)]
        try:
            a, b = fit_platt([p for p, _ in pairs], [y for _, y in pairs])
            cal = f"{a:.3f}, {b:.3f}"
        except ValueError:
            cal = "-"
        print(f"| {lab} | {det or '-'} | {fl:g} | {frac:g} | {elong:g} | {np.mean([n.found for n in big]):.3f} ({len(big)}) | "
              f"{np.mean([n.found for n in sub]) if sub else float('nan'):.3f} ({len(sub)}) | {np.mean(fp):.2f} | "
              f"{np.mean([f <= 1 for f in fp]):.2f} | {auc(pairs):.3f} | {cal} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=DEFAULT)
    ap.add_argument("--classifier", type=Path,
                    help="a separate nodule present/absent classification bundle to score instead of the bundle's own scan score")
    ap.add_argument("--family", choices=["both", "train", "eval"], default="both")
    ap.add_argument("--count", type=int, default=40, help="held-out scans of the training family (default: %(default)s)")
    ap.add_argument("--first-seed", type=int, default=TRAIN_HELD_OUT)
    ap.add_argument("--matrix", type=int, default=256, help="rows and columns of both families' scans (default: %(default)s)")
    ap.add_argument("--plots", type=Path, help="write FROC and reliability plots (quality.png) into this folder")
    ap.add_argument("--tune", type=int, metavar="SEED", help="sweep the nodule thresholds on validation seeds SEED.. (use 6000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: one small scan per family")
    args = ap.parse_args()
    limit = None
    if args.quick:
        use_quick_out()
        args.count, args.matrix, limit = 1, 128, 1
    engine = Engine(load_bundle(args.bundle), device="auto")
    if args.tune is not None:
        tune(engine, args.tune, args.count, args.matrix)
        return 0
    clf_path = args.classifier
    classifier = Engine(load_bundle(clf_path), device="auto") if clf_path is not None else None
    families = []
    if args.family in ("both", "train"):
        families.append(score(f"training family, held-out seeds {args.first_seed}-{args.first_seed + args.count - 1}",
                              train_cases(args.first_seed, args.count, args.matrix), engine, classifier))
    if args.family in ("both", "eval"):
        families.append(score("independent family (bench/evalset, frozen)", eval_cases(args.matrix, limit), engine, classifier))
    print(f"\nbundle {args.bundle.name}" + (f", classifier {clf_path.name}" if clf_path else "") + f", {args.matrix}x{args.matrix} scans\n")
    for s in families:
        print(f"### {s.name}\n")
        print(table(s, targets=True))
        op = froc(s, [0.0])[0]
        print(f"\noperating point: sensitivity >= 6 mm {op[1]:.3f} at {op[2]:.2f} FP per scan\n")
        print(estimator_table(s.estimators, engine.bundle.lesion_volume.method) + "\n")
        print(census(s.false_positives, s.cases) + "\n")
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        plot(families, str(args.plots / "quality.png"))
        print(f"wrote {args.plots / 'quality.png'}")
        for s, short in zip(families, [f for f in ("train", "eval") if args.family in ("both", f)]):
            montage(s.false_positives, str(args.plots / f"false-positives-{short}.png"), s.name)
            print(f"wrote {args.plots / f'false-positives-{short}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
