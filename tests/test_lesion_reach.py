"""Nodule volumes where the network's component holds only part of the nodule: the grown region goes on past it."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest

from ai.measure import LesionVolume
from tests.test_postprocess_measure import Scene, _lesion_error, _vessel_scene, scene

SHIPPED = {"small_core": "brightest", "open_mm": 3.0, "open_contrast": 6.0, "open_rim": "adjacent", "surface_cut": True,
           "shell_edge_only": True, "ground_glass_share": 0.35}
REACH = {"grow_max_mm": 8.0, "grow_on_share": 0.4}


def _core_of(sc: Scene, share: float) -> np.ndarray:
    """Labels: the nodule's central ``share`` of its radius as the component (3), lung around it (1)."""
    pos = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(sc.shape, sc.spacing)], indexing="ij"), -1)
    core = np.linalg.norm((pos - sc.centre) @ sc.rot / sc.semi, axis=-1) <= share
    return np.where(core, 3, 1).astype(np.uint8)


def _volume(labels: np.ndarray, sc: Scene, img: np.ndarray, **kw: object) -> float:
    err, methods = _lesion_error(labels, sc.spacing, sc.true_mm3, image=img, lesion_volume=LesionVolume("grown", **kw))  # type: ignore[arg-type]
    assert methods == ["grown"]
    return err


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
@pytest.mark.parametrize(("core_hu", "diameter"), [(30.0, 14.0), (-550.0, 16.0)])
def test_a_component_holding_only_the_core_is_grown_to_the_whole_nodule(
    spacing: tuple[float, float, float], core_hu: float, diameter: float
) -> None:
    """The network saw only the central 40 % of the radius (a faint nodule, a part-solid one's solid core): a region
    grown 2 mm past it misses most of the nodule (measured: -73 to -79 %); grown on while the limit, not the image,
    stops it, it is within 10 % (measured: -6.5 to -0.5 %), for a solid nodule and a ground-glass one."""
    sc = scene(diameter, (1.0, 1.0), spacing)
    img = sc.ct(seed=5, core=core_hu)
    labels = _core_of(sc, 0.4)
    plain = _volume(labels, sc, img, **SHIPPED)
    reached = _volume(labels, sc, img, **SHIPPED, **REACH)
    assert plain < -0.4, plain
    assert abs(reached) <= 0.10, (plain, reached)


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8), (5.0, 0.8, 0.8)])
def test_a_whole_component_is_measured_as_before(spacing: tuple[float, float, float]) -> None:
    """Where the component holds the nodule, the image stops the region within 2 mm: the same volume to 0.1 %."""
    for d, aspect in ((7.0, (1.0, 1.0)), (12.0, (1.3, 1.6)), (24.0, (1.0, 1.0))):
        sc = scene(d, aspect, spacing)
        img = sc.ct(seed=int(d))
        labels = np.where(cc3d.largest_k(sc.network(1.0, grid_mm=2.0) >= 0.5, 1, connectivity=26) > 0, 3, 1).astype(np.uint8)
        assert abs(_volume(labels, sc, img, **SHIPPED, **REACH) - _volume(labels, sc, img, **SHIPPED)) <= 1e-3, (spacing, d)


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
def test_a_touching_vessel_does_not_draw_the_region_along_it(spacing: tuple[float, float, float]) -> None:
    """A vessel running past the nodule stops the region on a small share of its outside only, so it is not grown
    along: the nodule stays within 15 %, as without the reach."""
    sc, labels, img = _vessel_scene(spacing)
    assert abs(_volume(labels, sc, img, **SHIPPED, **REACH)) <= 0.15


def test_a_manifest_turns_it_on() -> None:
    """``grow_max_mm`` and ``grow_on_share`` reach the measurement (checked in ``tests/test_anatomy.py``); off by default."""
    from ai.bundle import _lesion_volume

    lv = _lesion_volume({"lesion_volume": {"method": "grown", "grow_max_mm": 8, "grow_on_share": 0.4}})
    assert lv == LesionVolume("grown", grow_max_mm=8.0, grow_on_share=0.4)
    assert LesionVolume().grow_max_mm == 0.0
