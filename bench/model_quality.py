"""Held-out quality of the default chest-CT bundles on phantoms they never saw.

For each of N phantoms (seeds 1000+, never used for training or tuning) the
segmentation bundle runs through ``ai.engine.Engine`` on the phantom's own
grid, and we report:

- Dice of lungs and nodules;
- nodule detection: the sensitivity for nodules of 6 mm or more (a nodule is
  found when a predicted nodule component overlaps it), and false-positive
  components per scan;
- with ``--classifier``, the nodule present/absent classifier's ROC AUC, on
  the same phantoms plus as many without nodules (seeds +100, ``max_nodules=0``).

``--tune SEED`` instead sweeps the nodule probability thresholds
(``postprocessing.label_thresholds`` and ``detection_thresholds``) on
validation phantoms SEED.. (use 2000: never the held-out seeds) and prints
the trade-off, to choose the values written into the bundle's manifest.

``--quick`` is a smoke run: 2 phantoms of 96x96, scored with the shipped
classifier too (unless ``--classifier`` names another); it writes nothing
(the table has the same columns).  Its figures on 2 small phantoms say
nothing about the bundles' quality.

Usage: ``python bench/model_quality.py [--bundle DIR] [--count 20] [--classifier ai/bundles/chest-ct-nodule-classifier] [--tune 2000] [--quick]``
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cc3d
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dicomnode.jobs.models import DEFAULT_MODEL, SHIPPED_BUNDLES  # noqa: E402
from ai.bundle import load_bundle  # noqa: E402
from ai.engine import Engine  # noqa: E402
from ai.phantom import LUNG, NODULE, Phantom, generate  # noqa: E402
from ai.training.tasks.classification import auc  # noqa: E402
from ai.training.tasks.segmentation import dice_per_label  # noqa: E402

# Every nodule of 6 mm or more falls in exactly one bin, so the bins also give the overall sensitivity.
SIZE_BINS = {"6-8 mm": (6.0, 8.0), "8-12 mm": (8.0, 12.0), "12-25 mm": (12.0, float("inf"))}
DEFAULT = SHIPPED_BUNDLES / DEFAULT_MODEL
CLASSIFIER = SHIPPED_BUNDLES / "chest-ct-nodule-classifier"


@dataclass
class Tally:
    """Detection and overlap counts over scans."""

    lung: list[float] = field(default_factory=list)
    nodule: list[float] = field(default_factory=list)
    fp: int = 0
    scans: int = 0
    by_size: dict[str, list[int]] = field(default_factory=lambda: {b: [0, 0] for b in SIZE_BINS})  # found, all

    @property
    def found(self) -> int:
        return sum(found for found, _ in self.by_size.values())

    @property
    def missed(self) -> int:
        return sum(total - found for found, total in self.by_size.values())

    @property
    def sensitivity(self) -> float:
        return self.found / max(1, self.found + self.missed)

    def add(self, ph: Phantom, labels: np.ndarray) -> None:
        self.scans += 1
        truth_nod, pred_nod = ph.labels == NODULE, labels == NODULE
        d = dice_per_label(labels, ph.labels, {LUNG: "lung", NODULE: "nodule"})
        self.lung.append(d["lung"])
        if truth_nod.any() or pred_nod.any():
            self.nodule.append(d["nodule"])
        truth_cc = cc3d.connected_components(truth_nod, connectivity=26)
        pred_cc = cc3d.connected_components(pred_nod, connectivity=26)
        nz, ny, nx = ph.labels.shape
        for n in ph.nodules:  # match each drawn nodule to the truth component at its centre
            zi = min(int(n.centre_mm[2] / ph.spacing[2]), nz - 1)
            yi = min(int((n.centre_mm[1] + ny * ph.spacing[1] / 2) / ph.spacing[1]), ny - 1)
            xi = min(int((n.centre_mm[0] + nx * ph.spacing[0] / 2) / ph.spacing[0]), nx - 1)
            comp = truth_cc[zi, yi, xi]
            if n.diameter_mm < 6 or comp == 0:
                continue
            hit = bool((pred_nod & (truth_cc == comp)).any())
            for name, (lo, hi) in SIZE_BINS.items():
                if lo <= n.diameter_mm < hi:
                    self.by_size[name][0] += hit
                    self.by_size[name][1] += 1
        self.fp += sum(1 for k in range(1, int(pred_cc.max()) + 1) if not (truth_nod & (pred_cc == k)).any())


def tune(engine: Engine, first_seed: int, count: int, matrix: int) -> None:
    # (label threshold, detection threshold) for the nodule class; None: argmax
    grid = [(None, None), (0.35, None), (0.2, None), (0.05, None), (0.35, 0.1), (0.35, 0.05), (0.35, 0.03), (0.35, 0.02)]
    tallies = {thr: Tally() for thr in grid}
    for seed in range(first_seed, first_seed + count):
        ph = generate(seed, matrix=matrix)
        res = engine.run(ph.hu.astype(np.float32), ph.spacing, np.eye(3), keep_probabilities=True)
        assert res.probabilities is not None
        for lab, det in grid:
            labels = engine.postprocess(
                res.probabilities, ph.spacing, {} if lab is None else {NODULE: lab}, {} if det is None else {NODULE: det}
            )
            tallies[(lab, det)].add(ph, labels)
    print(f"\nnodule threshold sweep on {count} validation phantoms (seeds {first_seed}-{first_seed + count - 1})\n")
    print("| nodule label threshold | detection threshold | sensitivity >= 6 mm | FP per scan | nodule Dice | lung Dice |")
    print("|---|---|---|---|---|---|")
    for (lab, det), t in tallies.items():
        print(f"| {'argmax' if lab is None else lab} | {det or '-'} | {t.sensitivity:.3f} ({t.found}/{t.found + t.missed}) | "
              f"{t.fp / t.scans:.2f} | {np.mean(t.nodule):.3f} | {np.mean(t.lung):.3f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=DEFAULT)
    ap.add_argument("--classifier", type=Path, help="also score a nodule present/absent classifier bundle")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--matrix", type=int, default=160)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--tune", type=int, metavar="SEED", help="sweep the nodule threshold on validation seeds SEED..")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 small phantoms, with the shipped classifier")
    args = ap.parse_args()
    if args.quick:
        args.count, args.matrix = 2, 96
        args.classifier = args.classifier or CLASSIFIER
    engine = Engine(load_bundle(args.bundle), device="auto")
    if args.tune is not None:
        tune(engine, args.tune, args.count, args.matrix)
        return 0
    classifier = Engine(load_bundle(args.classifier), device="auto") if args.classifier else None
    negatives = (
        [generate(seed, matrix=args.matrix, max_nodules=0) for seed in range(args.first_seed + 100, args.first_seed + 100 + args.count)]
        if classifier is not None else []
    )
    tally = Tally()
    seconds: list[float] = []
    scores: list[float] = []
    truth: list[bool] = []
    for seed in range(args.first_seed, args.first_seed + args.count):
        ph = generate(seed, matrix=args.matrix)
        t = time.perf_counter()
        res = engine.run(ph.hu.astype(np.float32), ph.spacing, np.eye(3))
        seconds.append(time.perf_counter() - t)
        assert res.labels is not None
        tally.add(ph, res.labels)
        if classifier is not None:
            probs = classifier.run(ph.hu.astype(np.float32), ph.spacing, np.eye(3)).class_probabilities
            scores.append(probs.get("nodule present", max(probs.values())))
            truth.append(bool((ph.labels == NODULE).any()))
    for ph in negatives:  # the held-out seeds have few scans without nodules: add as many that have none
        assert classifier is not None
        probs = classifier.run(ph.hu.astype(np.float32), ph.spacing, np.eye(3)).class_probabilities
        scores.append(probs.get("nodule present", max(probs.values())))
        truth.append(bool((ph.labels == NODULE).any()))
    print(f"\n{args.count} held-out phantoms (seeds {args.first_seed}-{args.first_seed + args.count - 1}), bundle {args.bundle.name}\n")
    print("| metric | value | target |")
    print("|---|---|---|")
    print(f"| lung Dice (mean) | {np.mean(tally.lung):.3f} | >= 0.95 |")
    print(f"| nodule Dice (mean over scans with nodules) | {np.mean(tally.nodule) if tally.nodule else float('nan'):.3f} | >= 0.70 |")
    print(f"| nodule sensitivity, >= 6 mm | {tally.sensitivity:.3f} ({tally.found}/{tally.found + tally.missed}) | >= 0.90 |")
    for name, (found, total) in tally.by_size.items():
        print(f"| sensitivity, {name} | {found / max(1, total):.3f} ({found}/{total}) | |")
    print(f"| false-positive nodules per scan | {tally.fp / args.count:.2f} | <= 1 |")
    if classifier is not None:
        acc = np.mean([(s >= 0.5) == t for s, t in zip(scores, truth)])
        print(f"| classifier AUC, nodule present ({sum(truth)} scans with, {len(truth) - sum(truth)} without) | {auc(scores, truth):.3f} | >= 0.90 |")
        print(f"| classifier accuracy at 0.5 | {acc:.3f} | |")
    print(f"| seconds per scan ({engine.device}) | {np.mean(seconds):.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
