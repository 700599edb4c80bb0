"""Volumes of calcified nodules on renders: the default bundle's lesion volume settings with and without ``calcium``.

Each render is a nodule of 6.5-13 mm in lung (-850 HU) with soft tissue of
-20 to 80 HU around a calcified part (central: 30-60 % of its size, at most
10 % of its radius off centre; eccentric: 30-45 %, 30-40 % off centre), or
calcified throughout; calcium 300, 600 or 1000 HU; 0.7 mm in-plane blur;
15 or 50 HU noise; on six grids from 0.7 x 0.7 x 1 mm to 0.8 x 0.8 x 5 mm.
The component is what a network on a 3 mm grid labels.  The reference is
the same measurement without ``calcium`` (bundle 0.5.3), run on the same
renders; the table gives each one's share within +-15 % of the true volume.

Usage: ``python bench/calcified_volume.py [--quick]`` (``--quick``: one grid, one size; says nothing of accuracy).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ai.bundle import load_bundle  # noqa: E402
from dicomnode.jobs.models import DEFAULT_MODEL, SHIPPED_BUNDLES  # noqa: E402
from tests.test_calcified_volume import render  # noqa: E402  (the renders of the volume tests)
from tests.test_postprocess_measure import Scene, _lesion_error  # noqa: E402

GRIDS = [(1.0, 0.7, 0.7), (1.25, 0.7, 0.7), (2.5, 0.8, 0.8), (5.0, 0.8, 0.8), (1.0, 1.5, 1.5), (3.0, 1.0, 1.0)]  # z, y, x mm
SIZES = (6.5, 8.0, 10.0, 13.0)
PATTERNS = ("throughout", "central", "eccentric")
CALCIUM = (300.0, 600.0, 1000.0)
NOISE = (15.0, 50.0)


def draw(rng: np.random.Generator, spacing: tuple[float, float, float], diameter: float, pattern: str, calcium: float,
         noise: float) -> tuple[Scene, np.ndarray, np.ndarray]:
    """One calcified nodule of ``pattern``: its scene, a 3 mm network grid's label map and the CT image."""
    if pattern == "throughout":
        scale, shift = 1.0, 0.0
    elif pattern == "central":
        scale, shift = rng.uniform(0.3, 0.6), rng.uniform(0.0, 0.1)
    else:
        scale, shift = rng.uniform(0.3, 0.45), rng.uniform(0.3, 0.4)
    scene_seed = int(rng.integers(1000))
    soft = calcium if pattern == "throughout" else rng.uniform(-20.0, 80.0)
    return render(diameter, spacing, scale, shift, calcium, soft, noise, rng, scene_seed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: one grid, one size")
    args = ap.parse_args()
    shipped = load_bundle(SHIPPED_BUNDLES / DEFAULT_MODEL).lesion_volume
    with_ca = shipped if shipped.calcium is not None else dataclasses.replace(shipped, calcium=150.0)
    without = dataclasses.replace(with_ca, calcium=None)
    grids, sizes = (GRIDS[2:3], SIZES[1:2]) if args.quick else (GRIDS, SIZES)
    rng = np.random.default_rng(1)
    errors: dict[str, list[tuple[float, float]]] = {p: [] for p in PATTERNS}
    for spacing in grids:
        for d in sizes:
            for pattern in PATTERNS:
                for calcium in CALCIUM:
                    for noise in NOISE:
                        sc, labels, img = draw(rng, spacing, d, pattern, calcium, noise)
                        a, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=without)
                        b, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=with_ca)
                        errors[pattern].append((a, b))
    print(f"| calcification | renders | within +-15 %, without calcium (reference) | with calcium {with_ca.calcium:g} "
          "| median absolute error, without / with |")
    print("|---|---|---|---|---|")
    for pattern, rows in errors.items():
        e = np.abs(np.asarray(rows))
        print(f"| {pattern} | {len(e)} | {np.mean(e[:, 0] <= 0.15):.2f} | {np.mean(e[:, 1] <= 0.15):.2f} "
              f"| {np.median(e[:, 0]):.1%} / {np.median(e[:, 1]):.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
