"""Held-out quality of the default chest-CT bundle on phantoms it never saw.

For each of N phantoms (seeds 1000+, never used for training) the bundle runs
through ``ai.engine.Engine`` on the phantom's own grid, and we report:

- Dice of lungs and nodules;
- nodule detection: the sensitivity for nodules of 6 mm or more (a nodule is
  found when a predicted nodule component overlaps it), and false-positive
  components per scan.

Usage: ``python bench/model_quality.py [--bundle ai/bundles/chest-ct-lungs-nodules] [--count 20]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cc3d
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ai.bundle import load_bundle  # noqa: E402
from ai.engine import Engine  # noqa: E402
from ai.phantom import LUNG, NODULE, generate  # noqa: E402
from ai.train import dice_per_label  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[1] / "ai" / "bundles" / "chest-ct-lungs-nodules"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=DEFAULT)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--matrix", type=int, default=160)
    ap.add_argument("--first-seed", type=int, default=1000)
    args = ap.parse_args()
    engine = Engine(load_bundle(args.bundle), device="auto")
    dice: dict[str, list[float]] = {"lung": [], "nodule": []}
    found = missed = fp = 0
    seconds = []
    for seed in range(args.first_seed, args.first_seed + args.count):
        ph = generate(seed, matrix=args.matrix)
        t = time.perf_counter()
        res = engine.run(ph.hu.astype(np.float32), ph.spacing, np.eye(3))
        seconds.append(time.perf_counter() - t)
        assert res.labels is not None
        truth_nod = ph.labels == NODULE
        pred_nod = res.labels == NODULE
        d = dice_per_label(res.labels, ph.labels, {LUNG: "lung", NODULE: "nodule"})
        dice["lung"].append(d["lung"])
        if truth_nod.any() or pred_nod.any():
            dice["nodule"].append(d["nodule"])
        truth_cc = cc3d.connected_components(truth_nod, connectivity=26)
        pred_cc = cc3d.connected_components(pred_nod, connectivity=26)
        for k, n in enumerate(ph.nodules, start=1):
            # match each drawn nodule to the truth component at its centre
            zi = int(n.centre_mm[2] / ph.spacing[2] - 0.5 + 0.5)
            yi = int((n.centre_mm[1] + args.matrix * ph.spacing[1] / 2) / ph.spacing[1])
            xi = int((n.centre_mm[0] + args.matrix * ph.spacing[0] / 2) / ph.spacing[0])
            comp = truth_cc[min(zi, truth_cc.shape[0] - 1), min(yi, args.matrix - 1), min(xi, args.matrix - 1)]
            if n.diameter_mm < 6 or comp == 0:
                continue
            if (pred_nod & (truth_cc == comp)).any():
                found += 1
            else:
                missed += 1
        for k in range(1, int(pred_cc.max()) + 1):
            if not (truth_nod & (pred_cc == k)).any():
                fp += 1
    sens = found / max(1, found + missed)
    print(f"\n{args.count} held-out phantoms (seeds {args.first_seed}-{args.first_seed + args.count - 1}), bundle {args.bundle.name}\n")
    print("| metric | value | target |")
    print("|---|---|---|")
    print(f"| lung Dice (mean) | {np.mean(dice['lung']):.3f} | >= 0.95 |")
    print(f"| nodule Dice (mean over scans with nodules) | {np.mean(dice['nodule']) if dice['nodule'] else float('nan'):.3f} | >= 0.70 |")
    print(f"| nodule sensitivity, >= 6 mm | {sens:.3f} ({found}/{found + missed}) | >= 0.90 |")
    print(f"| false-positive nodules per scan | {fp / args.count:.2f} | <= 1 |")
    print(f"| seconds per scan ({engine.device}) | {np.mean(seconds):.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
