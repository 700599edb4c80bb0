"""Inference benchmark: ours vs MONAI's sliding_window_inference, same network, ROI and overlap.

The input is a chest-CT-like volume of 200x240x240 voxels (a 512x512x300 CT
resampled to 1.5 mm): a body ellipse in air, so that part of the field of
view is background.  The network is a MONAI 3D UNet (16-128 channels, two
residual units, about 1.2 M parameters), ROI 96^3, overlap 0.25.

``--quick`` is a smoke run: a 40x48x48 input, a tiny UNet (4-32 channels,
one residual unit), ROI 32^3, one timed run each; it writes nothing (the
table has the same rows).

Usage: ``python bench/inference.py [--repeat 2] [--device auto|cpu|cuda] [--batch 2] [--quick]``
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ai.inference import WindowConfig, foreground_box, optimize_predictor, select_device, sliding_window  # noqa: E402


def phantom(shape: tuple[int, int, int] = (200, 240, 240)) -> torch.Tensor:
    """HU clipped to [-1000, 1000] and scaled to [-1, 1]: body ellipse, lungs, air around."""
    z, y, x = np.ogrid[-1 : 1 : complex(0, shape[0]), -1 : 1 : complex(0, shape[1]), -1 : 1 : complex(0, shape[2])]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = (x / 0.75) ** 2 + (y / 0.55) ** 2 <= 1
    hu[np.broadcast_to(body, shape)] = 40.0
    lungs = (((x - 0.3) / 0.25) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 <= 1) | (((x + 0.3) / 0.25) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 <= 1)
    hu[lungs] = -850.0
    hu += np.random.default_rng(0).normal(0, 20, shape).astype(np.float32)
    return torch.from_numpy(np.clip(hu, -1000, 1000) / 1000.0)[None]


def main() -> int:
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=2, help="windows per batch, for both (default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny input and network, one run")
    args = ap.parse_args()
    device = select_device(args.device)
    torch.manual_seed(0)
    if args.quick:
        args.repeat = 1
        channels, res_units, shape, roi = (4, 8, 16, 32), 1, (40, 48, 48), (32, 32, 32)
    else:
        channels, res_units, shape, roi = (16, 32, 64, 128), 2, (200, 240, 240), (96, 96, 96)
    net = UNet(3, 1, 3, channels=channels, strides=(2, 2, 2), num_res_units=res_units).eval().to(device)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    image = phantom(shape)

    def monai_run() -> torch.Tensor:
        with torch.inference_mode():
            return sliding_window_inference(
                image[None], roi, args.batch, net, overlap=0.25, mode="gaussian", sigma_scale=0.125, sw_device=device, device="cpu"
            )[0]

    cfg = WindowConfig(roi_size=roi, overlap=0.25, batch_size=args.batch, background_threshold=-0.9)
    # Ours gets its own copy of the same weights, in channels_last_3d as ai.engine.Engine loads them.
    ours_net = optimize_predictor(copy.deepcopy(net))

    def ours_run() -> torch.Tensor:
        return sliding_window(image, ours_net, cfg, device=device)

    monai_run(), ours_run()  # warm up
    t_monai = min(_time(monai_run) for _ in range(args.repeat))
    t_ours = min(_time(ours_run) for _ in range(args.repeat))
    # Outside the body ours outputs background by construction, where an untrained
    # network says anything; so check the blending against MONAI run on the same crop.
    box = foreground_box(image, cfg)
    assert box is not None
    with torch.inference_mode():
        ref = sliding_window_inference(
            image[None][(slice(None), slice(None), *box)], roi, args.batch, net, overlap=0.25, mode="gaussian",
            sigma_scale=0.125, sw_device=device, device="cpu",
        )[0]
    agree = (ref.argmax(0) == ours_run()[(slice(None), *box)].argmax(0)).float().mean().item()
    print(f"\nUNet {params:.{1 if params >= 0.1 else 3}f} M parameters, input {tuple(image.shape[1:])}, ROI {roi}, overlap 0.25, batch {args.batch}, {device}\n")
    print("| | seconds |")
    print("|---|---|")
    print(f"| MONAI sliding_window_inference | {t_monai:.2f} |")
    print(f"| dicomnode ai.inference.sliding_window (background windows skipped, channels_last_3d) | {t_ours:.2f} |")
    print(f"| ratio ours / MONAI | {t_ours / t_monai:.2f} |")
    print(f"\nargmax agreement with MONAI on the same foreground crop: {agree * 100:.2f}% of voxels")
    return 0


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
