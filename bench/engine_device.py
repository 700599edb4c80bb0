"""The shipped default bundle on the CPU and on CUDA: time per stage, and whether both give the same answer.

The input is a 512x512 chest phantom of the training family's held-out seeds
(``ai.phantoms``, seed 7000 by default).  Each device runs the bundle's
``Engine`` once to warm up (CUDA context, cuDNN autotuning), then
``--repeat`` timed runs; the table gives the median of each stage, and the
CUDA run's agreement with the CPU run: the share of voxels with the same
label, and the findings each reports.  Without CUDA the CUDA row says so.

``--quick`` is a smoke run: a 96x96x40 phantom, one timed run.

Usage: ``python bench/engine_device.py [--seed 7000] [--matrix 512] [--repeat 3] [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ai.bundle import load_bundle  # noqa: E402
from ai.engine import Engine, Result  # noqa: E402
from ai.phantoms import generate  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1] / "ai" / "bundles" / "chest-ct-lungs-nodules"
STAGES = ("preprocess", "infer", "postprocess")


def timed_runs(engine: Engine, hu: np.ndarray, spacing: tuple[float, float, float], direction: np.ndarray,
               repeat: int) -> tuple[dict[str, float], Result]:
    """A warm-up run, then ``repeat`` timed ones: the median seconds of each stage (and in all), and the last result."""
    engine.run(hu, spacing, direction)
    times: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
    res = None
    for _ in range(repeat):
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = engine.run(hu, spacing, direction)
        times["total"].append(time.perf_counter() - t0)
        for s in STAGES:
            times[s].append(res.timings.get(s, float("nan")))
    assert res is not None
    return {k: statistics.median(v) for k, v in times.items()}, res


def findings_text(res: Result) -> str:
    """The findings as ``"N: V mL"``, largest first (what a reader would see)."""
    return ", ".join(f"{f.number}: {f.lesion.volume_ml * 1000:.0f} mm3" for f in res.findings) or "none"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=7000)
    p.add_argument("--matrix", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    slices = None
    if args.quick:
        args.matrix, args.repeat, slices = 96, 1, 40
    ph = generate(args.seed, matrix=args.matrix, slices=slices)
    hu = ph.hu.astype(np.float32)
    nz, ny, nx = hu.shape
    print(f"phantom seed {args.seed}: {nx}x{ny}x{nz}, spacing {ph.spacing[0]:.2f} x {ph.spacing[1]:.2f} x {ph.spacing[2]:.2f} mm, "
          f"{len(ph.nodules)} true nodule(s); torch {torch.__version__}")
    bundle = load_bundle(BUNDLE)
    rows = []
    cpu_times, cpu_res = timed_runs(Engine(bundle, device="cpu"), hu, ph.spacing, ph.direction, args.repeat)
    rows.append(("cpu", cpu_times, "reference", findings_text(cpu_res)))
    if torch.cuda.is_available():
        cuda_times, cuda_res = timed_runs(Engine(bundle, device="cuda"), hu, ph.spacing, ph.direction, args.repeat)
        assert cpu_res.labels is not None and cuda_res.labels is not None
        same = float(np.mean(cpu_res.labels == cuda_res.labels))
        rows.append((f"cuda ({torch.cuda.get_device_name(0)})", cuda_times, f"{same:.5f} of voxels", findings_text(cuda_res)))
    else:
        rows.append(("cuda", {}, "no CUDA device here", ""))
    print()
    print("| device | preprocess s | network s | post-processing and measurement s | total s | labels equal to the CPU's | findings |")
    print("|---|---|---|---|---|---|---|")
    for name, t, agree, found in rows:
        cells = " | ".join(f"{t[s]:.2f}" if s in t else "-" for s in (*STAGES, "total"))
        print(f"| {name} | {cells} | {agree} | {found} |")
    if len(rows) == 2 and rows[1][1]:
        print(f"\ntotal CPU / CUDA: {rows[0][1]['total'] / rows[1][1]['total']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
