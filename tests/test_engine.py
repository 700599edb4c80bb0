"""The engine end to end on a tiny bundle: labels on the source grid, measurements, classification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ai.bundle import BundleError, load_bundle
from ai.engine import Engine


class ThresholdNet(torch.nn.Module):
    """A fixed 'model': channel 1 where the input is above 0 (after the window normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x > 0).float() * 10
        return torch.cat([10 - fg, fg], dim=1)


class MeanClassifier(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3, 4))
        return torch.stack([-m, m], dim=1) * 10


def make_bundle(tmp_path: Path, net: torch.nn.Module, task: str, labels: list[dict[str, object]]) -> Path:
    torch.jit.script(net).save(str(tmp_path / "model.ts"))
    (tmp_path / "manifest.json").write_text(json.dumps({
        "name": f"fixed-{task}", "version": "1", "task": task,
        "input": {"spacing": [2.0, 2.0, 2.0], "orientation": "RAS", "normalization": {"kind": "window", "low": -1000, "high": 1000}},
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.25, "batch_size": 2, "background_threshold": -0.95},
        "labels": labels,
        "postprocessing": {"keep_largest": [1], "fill_holes": True, "crop_foreground_above": -900},
        "weights": {"format": "torchscript", "file": "model.ts"},
    }))
    return tmp_path


def test_segmentation_comes_back_on_the_source_grid(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path, ThresholdNet(), "segmentation", [{"value": 1, "name": "blob", "lesion": True}]))
    z, y, x = np.indices((40, 48, 56))
    img = np.full((40, 48, 56), -1000.0, np.float32)
    ball = ((z - 20) * 2.5) ** 2 + ((y - 24) * 0.8) ** 2 + ((x - 28) * 0.8) ** 2 <= 12.0**2
    img[ball] = 200.0
    img[2, 2, 2] = 200.0  # a speck, removed by keep_largest
    res = Engine(bundle, device="cpu").run(img, (0.8, 0.8, 2.5), np.diag([1.0, 1.0, 1.0]))
    assert res.labels is not None and res.labels.shape == img.shape
    dice = 2 * (res.labels.astype(bool) & ball).sum() / (res.labels.astype(bool).sum() + ball.sum())
    assert dice > 0.9 and res.labels[2, 2, 2] == 0
    [m] = res.measurements
    assert m.volume_ml == np.float64(res.labels.astype(bool).sum() * 0.8 * 0.8 * 2.5 / 1000)
    # The fixed threshold 'model' at 2 mm loses part of the boundary shell; the engine adds no error of its own.
    assert abs(m.volume_ml - ball.sum() * 1.6 / 1000) / (ball.sum() * 1.6 / 1000) < 0.2
    assert m.mean is not None and m.mean > 100 and len(m.lesions) == 1
    assert set(res.timings) == {"preprocess", "infer", "postprocess"}


def test_classification_probabilities(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path, MeanClassifier(), "classification", [{"value": 0, "name": "absent"}, {"value": 1, "name": "present"}]))
    bright = np.full((20, 20, 20), 500.0, np.float32)
    res = Engine(bundle, device="cpu").run(bright, (1.0, 1.0, 1.0), np.eye(3))
    assert res.class_probabilities["present"] > 0.9
    assert abs(sum(res.class_probabilities.values()) - 1) < 1e-6


def test_test_time_flips_average_mirrored_predictions(tmp_path: Path) -> None:
    """A point-wise 'model' is mirror-symmetric: averaging with the mirrored run changes nothing."""
    make_bundle(tmp_path, ThresholdNet(), "segmentation", [{"value": 1, "name": "blob"}])
    m = json.loads((tmp_path / "manifest.json").read_text())
    img = np.full((20, 24, 28), -1000.0, np.float32)
    img[5:15, 6:18, 4:12] = 200.0  # off-centre along x
    plain = Engine(load_bundle(tmp_path), device="cpu").run(img, (2.0, 2.0, 2.0), np.eye(3), keep_probabilities=True)
    m["inference"]["tta_flips"] = [[2], [0, 1]]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    tta = Engine(load_bundle(tmp_path), device="cpu").run(img, (2.0, 2.0, 2.0), np.eye(3), keep_probabilities=True)
    assert (tta.labels == plain.labels).all()
    np.testing.assert_allclose(tta.probabilities, plain.probabilities, atol=1e-5)
    m["inference"]["tta_flips"] = [[3]]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="inference.tta_flips"):
        load_bundle(tmp_path)
