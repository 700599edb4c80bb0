"""Sliding-window inference on the CPU with tiny seeded networks."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from ai.errors import AIError
from ai.inference import WindowConfig, gaussian_importance, sliding_window, window_starts


def tiny_unet(out_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=(4, 8), strides=(2,), num_res_units=1)
    return net.eval()


def test_window_starts_cover_the_axis() -> None:
    assert window_starts(10, 16, 0.25) == [0]
    s = window_starts(100, 32, 0.25)
    assert s[0] == 0 and s[-1] == 68 and all(b - a <= 24 for a, b in zip(s, s[1:]))


def test_single_window_equals_one_forward_pass() -> None:
    net = tiny_unet()
    x = torch.randn(1, 16, 16, 16)
    out = sliding_window(x, net, WindowConfig(roi_size=(16, 16, 16)), device=torch.device("cpu"))
    with torch.inference_mode():
        ref = net(x[None])[0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_matches_monai_sliding_window_inference() -> None:
    net = tiny_unet()
    x = torch.randn(1, 40, 36, 28)
    cfg = WindowConfig(roi_size=(16, 16, 16), overlap=0.25, batch_size=3)
    ours = sliding_window(x, net, cfg, device=torch.device("cpu"))
    with torch.inference_mode():
        theirs = sliding_window_inference(x[None], (16, 16, 16), 3, net, overlap=0.25, mode="gaussian", sigma_scale=0.125)[0]
    assert ours.shape == theirs.shape
    # Same network and blending scheme; window placement and weight floors differ slightly.
    assert (ours.argmax(0) == theirs.argmax(0)).float().mean() > 0.98
    torch.testing.assert_close(ours, theirs, atol=0.05, rtol=0.05)


def test_background_windows_are_skipped_and_come_out_as_background() -> None:
    calls: list[int] = []
    net = tiny_unet()

    def predictor(b: torch.Tensor) -> torch.Tensor:
        calls.append(b.shape[0])
        return net(b)

    x = torch.full((1, 64, 32, 32), -1000.0)
    x[:, 40:60, 8:24, 8:24] = 50.0  # the only foreground
    cfg = WindowConfig(roi_size=(16, 16, 16), overlap=0.0, batch_size=8, background_threshold=-500.0)
    out = sliding_window(x, predictor, cfg, device=torch.device("cpu"))
    assert sum(calls) < 4 * 2 * 2  # 16 windows in all; only those touching the foreground ran
    assert torch.all(out[0, :32] == 1.0) and torch.all(out[1:, :32] == 0.0)


def test_oom_halves_the_batch_then_moves_to_cpu() -> None:
    net = tiny_unet()
    seen: list[int] = []

    def flaky(b: torch.Tensor) -> torch.Tensor:
        seen.append(b.shape[0])
        if b.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return net(b)

    x = torch.randn(1, 32, 16, 16)
    cfg = WindowConfig(roi_size=(16, 16, 16), overlap=0.0, batch_size=4)
    out = sliding_window(x, flaky, cfg, device=torch.device("cpu"))
    assert seen == [2, 2, 1, 1]  # two windows: OOM at 2, halve to... 2 is the batch of both, then 1 and 1
    with torch.inference_mode():
        ref = torch.cat([net(x[None, :, :16])[0], net(x[None, :, 16:])[0]], dim=1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_oom_at_batch_one_finishes_on_the_cpu() -> None:
    net = tiny_unet()
    moved: list[bool] = []

    def gpu_that_is_full(b: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    def to_cpu() -> torch.nn.Module:
        moved.append(True)
        return net

    x = torch.randn(1, 32, 16, 16)
    cfg = WindowConfig(roi_size=(16, 16, 16), overlap=0.0, batch_size=4)
    # A non-CPU device stands in for the GPU (the "meta" device exists on every build).
    out = sliding_window(x, gpu_that_is_full, cfg, device=torch.device("meta"), to_cpu=to_cpu)
    assert moved == [True]
    with torch.inference_mode():
        ref = torch.cat([net(x[None, :, :16])[0], net(x[None, :, 16:])[0]], dim=1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(AIError, match="out of memory even for a single window"):
        sliding_window(x, gpu_that_is_full, cfg, device=torch.device("cpu"))


def test_gaussian_importance_peaks_in_the_centre() -> None:
    w = gaussian_importance((9, 9, 9), 0.125, torch.device("cpu"))
    assert w[4, 4, 4] == 1.0 and w[0, 0, 0] < w[4, 4, 0] < 1.0 and w.min() > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_amp_agrees_with_cpu() -> None:
    net = tiny_unet()
    x = torch.randn(1, 48, 48, 48)
    cfg = WindowConfig(roi_size=(32, 32, 32), batch_size=4)
    cpu = sliding_window(x, net, cfg, device=torch.device("cpu"))
    gpu = sliding_window(x, net.cuda(), cfg, device=torch.device("cuda"))
    assert (cpu.argmax(0) == gpu.argmax(0)).float().mean() > 0.99


def test_foreground_crop_runs_fewer_windows_and_matches_monai_on_the_crop() -> None:
    from ai.inference import foreground_box

    net = tiny_unet()
    calls: list[int] = []

    def predictor(b: torch.Tensor) -> torch.Tensor:
        calls.append(b.shape[0])
        return net(b)

    x = torch.full((1, 48, 48, 48), -1.0)
    x[:, 10:30, 12:28, 20:36] = torch.rand(20, 16, 16) + 0.5
    cfg = WindowConfig(roi_size=(16, 16, 16), overlap=0.25, batch_size=4, background_threshold=0.0, crop_margin=2)
    out = sliding_window(x, predictor, cfg, device=torch.device("cpu"))
    box = foreground_box(x, cfg)
    assert box == (slice(8, 32), slice(10, 30), slice(18, 38))
    assert sum(calls) == 2 * 2 * 2  # 8 windows instead of 27 over the whole image
    outside = torch.ones(48, 48, 48, dtype=torch.bool)
    outside[box] = False
    assert torch.all(out[0][outside] == 1.0) and torch.all(out[1:, outside] == 0.0)
    with torch.inference_mode():
        ref = sliding_window_inference(x[None][(slice(None), slice(None), *box)], (16, 16, 16), 4, net, overlap=0.25, mode="gaussian")[0]
    torch.testing.assert_close(out[(slice(None), *box)], ref, atol=0.05, rtol=0.05)
