"""Long and short axis (Fleischner, Lung-RADS) of digitised ellipsoids: within one voxel of the truth."""

from __future__ import annotations

import numpy as np
import pytest

from ai.axes import axial_axes
from ai.measure import measure


def ellipsoid(spacing_zyx: tuple[float, float, float], angle_deg: float, a: float = 12.0, b: float = 6.0, c: float = 5.0,
              offset: tuple[float, float] = (0.3, -0.2)) -> np.ndarray:
    """An ellipsoid with semi-axes ``a`` x ``b`` in the slice (turned by ``angle_deg``) and ``c`` across slices, mm."""
    sz, sy, sx = spacing_zyx
    shape = (int(4 * c / sz) + 3, int(4 * a / sy) + 3, int(4 * a / sx) + 3)
    z, y, x = np.indices(shape, dtype=float)
    cz, cy, cx = (np.array(shape) - 1) / 2
    Z, Y, X = (z - cz) * sz, (y - cy + offset[0]) * sy, (x - cx + offset[1]) * sx
    t = np.deg2rad(angle_deg)
    u, v = X * np.cos(t) + Y * np.sin(t), -X * np.sin(t) + Y * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 + (Z / c) ** 2 <= 1


@pytest.mark.parametrize("spacing", [(1.25, 0.7, 0.7), (2.5, 0.9, 0.9), (0.625, 0.6, 0.6), (1.0, 1.2, 0.8)])
@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 77.0])
def test_axes_of_an_ellipsoid_are_within_one_voxel(spacing: tuple[float, float, float], angle: float) -> None:
    mask = ellipsoid(spacing, angle)
    ax = axial_axes(mask, spacing)
    assert ax is not None
    voxel = max(spacing[1], spacing[2])
    assert ax.long_mm == pytest.approx(24.0, abs=voxel)
    assert ax.short_mm == pytest.approx(12.0, abs=voxel)
    assert ax.mean_mm == pytest.approx(18.0, abs=voxel)
    assert abs(ax.slice_index - (mask.shape[0] - 1) / 2) <= 1  # the widest slice: through the centre
    (z0, y0, x0), (z1, y1, x1) = ax.long_ends
    assert z0 == z1 == ax.slice_index
    length = np.hypot((y1 - y0) * spacing[1], (x1 - x0) * spacing[2])
    assert length == pytest.approx(ax.long_mm, rel=1e-6)  # the ends are the measured axis
    direction = np.degrees(np.arctan2((y1 - y0) * spacing[1], (x1 - x0) * spacing[2])) % 180
    assert min(abs(direction - angle), 180 - abs(direction - angle)) < 8  # along the ellipse's long axis
    (_, sy0, sx0), (_, sy1, sx1) = ax.short_ends
    dot = (y1 - y0) * spacing[1] * (sy1 - sy0) * spacing[1] + (x1 - x0) * spacing[2] * (sx1 - sx0) * spacing[2]
    assert abs(dot) < 1e-6 * ax.long_mm * ax.short_mm + 1e-9  # perpendicular


def test_a_lesion_reports_its_axes_hu_and_edges() -> None:
    spacing_zyx = (1.0, 0.8, 0.8)
    labels = np.zeros((30, 60, 60), dtype=np.uint8)
    inner = ellipsoid(spacing_zyx, 0.0, a=8, b=4, c=4)
    labels[5 : 5 + inner.shape[0], 10 : 10 + inner.shape[1], 10 : 10 + inner.shape[2]][inner] = 1
    labels[0:3, 50:53, 50:53] = 1  # a second, small lesion cut by the first slice
    image = np.where(labels > 0, 20.0, -800.0)
    [m] = measure(labels, (0.8, 0.8, 1.0), {1: "nodule"}, image=image, lesion_values=[1])
    big, small = m.lesions
    assert (big.index, small.index) == (1, 2) and big.volume_ml > small.volume_ml  # numbered by volume
    assert big.axes is not None and big.axes.long_mm == pytest.approx(16, abs=0.8) and big.axes.short_mm == pytest.approx(8, abs=0.8)
    assert big.mean == pytest.approx(20.0) and big.edges == ()
    assert [e.value for e in small.edges] == ["first slice"]
    assert big.voxels_in(labels.shape).sum() == inner.sum()
