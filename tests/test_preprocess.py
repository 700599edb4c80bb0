"""Preprocessing round trips: orientation, crop and resampling invert exactly onto the source grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ai.preprocess import axis_codes, normalize, prepare


def signed_permutations() -> list[np.ndarray]:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for i, (p, s) in enumerate(zip(perm, signs)):
                m[p, i] = s
            out.append(m)
    return out


@pytest.mark.parametrize("target", ["RAS", "LPS", "SAR"])
def test_all_48_orientations_reorient_and_invert_exactly(target: str) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
    for direction in signed_permutations():
        p = prepare(labels.astype(np.float32), (1.0, 1.0, 1.0), direction, orientation=target)
        # The reoriented grid points where the target code says.
        new_dir = direction[:, [2 - p.perm[2 - k] for k in range(3)]].copy()
        for k in range(3):
            if 2 - k in p.flips:
                new_dir[:, k] *= -1
        assert axis_codes(new_dir) == target
        back = p.invert_labels(p.tensor[0].numpy().astype(np.uint8))
        np.testing.assert_array_equal(back, labels)


def test_crop_and_resample_round_trip() -> None:
    img = np.full((40, 64, 64), -1000.0, dtype=np.float32)
    img[10:30, 16:48, 8:56] = 40.0
    labels = np.zeros(img.shape, np.uint8)
    labels[12:28, 20:44, 12:52] = 1
    p = prepare(img, (0.8, 0.8, 2.5), np.eye(3), target_spacing_xyz=(1.6, 1.6, 2.5), foreground_above=-500, margin_mm=4,
                normalization={"kind": "window", "low": -1000, "high": 1000})
    assert p.crop == (slice(8, 32), slice(11, 53), slice(3, 61))
    assert tuple(p.tensor.shape[1:]) == (24, 21, 29)
    assert float(p.tensor.min()) >= -1 and float(p.tensor.max()) <= 1
    # Labels made on the model grid by nearest neighbour come back exactly where they were...
    model_labels = torch.nn.functional.interpolate(torch.from_numpy(labels[p.crop])[None, None].float(), size=p.tensor.shape[1:], mode="nearest")[0, 0].numpy().astype(np.uint8)
    back = p.invert_labels(model_labels)
    assert back.shape == labels.shape
    assert (back != labels).mean() < 0.02  # only a resampling edge differs
    assert back[:8].max() == 0 and back[:, :11].max() == 0  # outside the crop: background
    # ...and scores come back on the source grid, background = 1 outside the crop.
    scores = torch.zeros(2, *p.tensor.shape[1:])
    scores[1] = torch.from_numpy(model_labels).float()
    scores[0] = 1 - scores[1]
    s = p.invert_scores(scores)
    assert s.shape == (2, 40, 64, 64) and s[0, 0, 0, 0] == 1.0
    assert (s.argmax(0) != labels).mean() < 0.02


def test_identity_spacing_is_exact() -> None:
    img = np.random.default_rng(1).normal(size=(6, 7, 8)).astype(np.float32)
    p = prepare(img, (1.0, 1.0, 1.0), np.eye(3), target_spacing_xyz=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(p.tensor[0].numpy(), img)


def test_normalizations() -> None:
    x = torch.tensor([-2000.0, -1000.0, 0.0, 1000.0, 3000.0])
    assert normalize(x, {"kind": "window", "low": -1000, "high": 1000}).tolist() == [-1, -1, 0, 1, 1]
    z = normalize(x, {"kind": "zscore"})
    assert abs(float(z.mean())) < 1e-6
    assert normalize(x, {"kind": "scale", "multiply": 0.001}).tolist()[2] == 0.0
