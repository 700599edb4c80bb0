"""Time one training epoch with AMP and in fp32, on the GPU when there is one.

The reference is fp32 measured in the same run, on the same data, patches and
seed: the script trains ``--epochs`` epochs twice from scratch (AMP, then
``amp=False``) and compares the step time of the last epoch (the first one
also pays for DataLoader start-up and CUDA kernel selection). Validation is
left out of the timing (``train_seconds`` in ``train_log.jsonl``).

On the CPU both runs are fp32, since AMP is used only on CUDA; the script
says so instead of printing a meaningless ratio.

Phantoms and training outputs are cached under ``bench/out`` (or
``$DICOMNODE_BENCH_OUT``).  ``--quick`` is a smoke run: 2 phantoms of 64x64,
one epoch of one step of a 32^3 patch, no DataLoader workers, everything
under a temporary folder (or ``$DICOMNODE_BENCH_OUT``), never ``bench/out``;
the table has the same columns.

Usage: ``python bench/train_epoch.py [--count 8] [--steps 80] [--patch 64 64 64] [--spacing 3 3 3] [--batch-size 2] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.phantoms import generate  # noqa: E402
from ai.training import TrainConfig, train  # noqa: E402
from bench.common import out_dir, use_quick_out  # noqa: E402


def phantoms(count: int, matrix: int) -> Path:
    """Training phantoms (seeds 0..count-1), cached under ``out_dir()/data``."""
    d = out_dir() / "data" / f"phantoms-{count}x{matrix}"
    d.mkdir(parents=True, exist_ok=True)
    for seed in range(count):
        image, labels = d / f"phantom_{seed:04d}_image.nii.gz", d / f"phantom_{seed:04d}_labels.nii.gz"
        if not labels.exists():
            generate(seed, matrix=matrix).write_nifti(image, labels)
    return d


def last_epoch(args: argparse.Namespace, data: Path, amp: bool) -> dict[str, object]:
    out = out_dir() / ("train-amp" if amp else "train-fp32")
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(
        data=str(data), out=str(out), epochs=args.epochs, steps_per_epoch=args.steps, patch=tuple(args.patch),  # type: ignore[arg-type]
        spacing=tuple(args.spacing), batch_size=args.batch_size, workers=args.workers, amp=amp,  # type: ignore[arg-type]
        resume=False, val_fraction=0.1, lr=3e-3,
    )
    history = train(cfg, progress=False)["history"]
    return dict(history[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=8, help="training phantoms")
    ap.add_argument("--matrix", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is timed")
    ap.add_argument("--steps", type=int, default=80, help="steps per epoch")
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    ap.add_argument("--spacing", type=float, nargs=3, default=[3.0, 3.0, 3.0])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 tiny phantoms, one step, outputs in a temporary folder")
    args = ap.parse_args()
    if args.quick:
        use_quick_out()
        args.count, args.matrix, args.epochs, args.steps = 2, 64, 1, 1
        args.patch, args.batch_size, args.workers = [32, 32, 32], 1, 0

    t0 = time.perf_counter()
    data = phantoms(args.count, args.matrix)
    print(f"{args.count} phantoms in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    amp, fp32 = last_epoch(args, data, amp=True), last_epoch(args, data, amp=False)
    steps = args.steps
    rows = [("AMP (fp16 autocast + GradScaler)" if amp["amp"] else "AMP requested (CPU: runs fp32)", amp), ("fp32", fp32)]
    print(f"\none training epoch: {steps} steps of batch {args.batch_size} x {'x'.join(map(str, args.patch))} at "
          f"{'x'.join(f'{s:g}' for s in args.spacing)} mm, on {device}\n")
    print("| precision | seconds per epoch | ms per step | loss | peak GPU memory |")
    print("|---|---|---|---|---|")
    for name, e in rows:
        sec = float(e["train_seconds"])  # type: ignore[arg-type]
        mem = f"{e['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in e else "-"
        print(f"| {name} | {sec:.2f} | {1000 * sec / steps:.1f} | {float(e['loss']):.4f} | {mem} |")  # type: ignore[arg-type]
    if amp["amp"]:
        ratio = float(fp32["train_seconds"]) / float(amp["train_seconds"])  # type: ignore[arg-type]
        print(f"\nAMP is {ratio:.2f}x the speed of fp32")
    else:
        print("\nno CUDA device: AMP is CUDA-only, so both runs were fp32 (no ratio to report)")
    print(json.dumps({"device": device, "amp": amp, "fp32": fp32}, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
